"""The MLServer beside a pod's adapter: started and restarted here, or watched as a sidecar.

- ``MLServerProcess`` (a local pod): ``mlserver start <models dir>`` on free ports of the
  pod's host, in a process group of its own (MLServer's inference workers die with it),
  nothing loaded at start. It is up once both its gRPC and its REST port answer ready:
  MLServer goes on running when one of them cannot bind (another process took the port
  between our check and its bind), so that start fails, and every start takes new ports.
  When it dies, ``on_down`` is told (the adapter forgets its models and reports itself
  not ready) and it is started again after a backoff that doubles from 1 s up to 30 s,
  as the kubelet restarts a container; ``on_up`` once it answers ready again.
- ``MLServerSidecar`` (Kubernetes: MLServer is the pod's other container, restarted by
  the kubelet): asks it ServerReady every second; three misses in a row are ``on_down``.

Its output goes to the pod's own, as a container's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from gateway.core.local_ports import die_with_parent, free_port

from ..settings import bracketed
from .client import MLServerClient

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0  # nothing is loaded at start: MLServer is up in seconds
# MLServer's own virtualenv, made by `make mlserver` (it needs protobuf<7: not beside ours)
VENV = Path(__file__).resolve().parents[3] / ".venv-mlserver"
_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def find_executable(given: str) -> str:
    """The ``mlserver`` command: ``given``, else the one in MLServer's virtualenv, else the
    PATH's. OSError, saying how to install it, when there is none."""
    if given:
        return given
    own = VENV / "bin" / "mlserver"
    if own.exists():
        return str(own)
    found = shutil.which("mlserver")
    if found is None:
        raise OSError(
            "this pod's models are served by MLServer, which is not installed: `make mlserver` "
            f"makes its virtualenv ({VENV}), or name the command with --mlserver"
        )
    return found


class MLServerProcess:
    """One MLServer process this pod owns."""

    def __init__(
        self,
        executable: str,
        models_dir: Path,
        env: Mapping[str, str],
        *,
        work_dir: Path,
        host: str,
        on_up: Callable[[], None],
        on_down: Callable[[str], None],
        max_message_bytes: int,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self._host = host
        self._command = (executable, "start", str(models_dir))
        self._env = {
            **os.environ,
            **env,
            "MLSERVER_MODELS_DIR": str(models_dir),
            "MLSERVER_HOST": host.strip("[]"),
            "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
            "MLSERVER_GRPC_MAX_MESSAGE_LENGTH": str(max_message_bytes),
            # its Prometheus files: in its own folder, not wherever the pod was started
            "MLSERVER_METRICS_DIR": str(work_dir / ".metrics"),
        }
        self._work_dir = work_dir
        self._choose_ports()
        self.client = MLServerClient(f"{bracketed(host)}:{self.grpc_port}")
        self._on_up, self._on_down = on_up, on_down
        self._start_timeout = start_timeout_s
        self._process: asyncio.subprocess.Process | None = None

    def _choose_ports(self) -> None:
        self.grpc_port, self.http_port = free_port(self._host), free_port(self._host)
        self._env["MLSERVER_GRPC_PORT"] = str(self.grpc_port)
        self._env["MLSERVER_HTTP_PORT"] = str(self.http_port)
        self._env["MLSERVER_METRICS_PORT"] = str(free_port(self._host))

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def run(self) -> None:
        """Start MLServer, then keep it running until cancelled (then stop it)."""
        failures = 0
        first = True
        try:
            while True:
                if not first:
                    self._choose_ports()
                    await self.client.retarget(f"{bracketed(self._host)}:{self.grpc_port}")
                first = False
                started = await self._start()
                if started:
                    failures = 0
                    self._on_up()
                    code = await self._wait()
                    self._on_down(f"MLServer exited with {_exit(code)}")
                else:
                    failures += 1
                delay = _BACKOFF[min(failures, len(_BACKOFF) - 1)]
                log.warning("starting MLServer again in %g s", delay)
                await asyncio.sleep(delay)
        finally:
            await self.stop()

    async def _start(self) -> bool:
        """Spawn MLServer and wait until it answers ready; False (and it is stopped) if it
        exits or stays unready for the start timeout."""
        log.info(
            "starting MLServer: %s (gRPC %d, REST %d)",
            " ".join(self._command),
            self.grpc_port,
            self.http_port,
        )
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self._command,
                env=self._env,
                cwd=self._work_dir,
                start_new_session=True,  # its inference workers are stopped with it
                preexec_fn=die_with_parent,  # and it with this pod, however the pod ends
            )
        except OSError as exc:
            log.error("MLServer cannot be started (%s): %s", self._command[0], exc)
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        ready = f"http://{bracketed(self._host)}:{self.http_port}/v2/health/ready"
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as rest:
            while loop.time() < deadline:
                if self._process.returncode is not None:
                    log.error(
                        "MLServer exited with %s while starting", _exit(self._process.returncode)
                    )
                    return False
                if await self.client.ready(timeout=1.0) and await _answers(rest, ready):
                    log.info("MLServer is ready (pid %d)", self._process.pid)
                    return True
                await asyncio.sleep(0.2)
        log.error(
            "MLServer did not answer ready on gRPC port %d and REST port %d in %g s",
            self.grpc_port,
            self.http_port,
            self._start_timeout,
        )
        await self.stop()
        return False

    async def _wait(self) -> int:
        assert self._process is not None
        return await self._process.wait()

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM MLServer's process group, SIGKILL after ``grace`` seconds."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def close(self) -> None:
        await self.client.close()


class MLServerSidecar:
    """An MLServer this pod does not own (its other container): watched, never started."""

    def __init__(
        self,
        grpc_target: str,
        http_port: int,
        *,
        on_up: Callable[[], None],
        on_down: Callable[[str], None],
        interval_s: float = 1.0,
        misses: int = 3,
    ) -> None:
        self.grpc_port = int(grpc_target.rsplit(":", 1)[1])
        self.http_port = http_port
        self.client = MLServerClient(grpc_target)
        self._on_up, self._on_down = on_up, on_down
        self._interval, self._misses = interval_s, misses

    async def run(self) -> None:
        up, missed = False, 0
        while True:
            if await self.client.ready(timeout=self._interval):
                missed = 0
                if not up:
                    up = True
                    log.info("MLServer at %s is ready", self.client.target)
                    self._on_up()
            else:
                missed += 1
                if up and missed >= self._misses:
                    up = False
                    self._on_down(f"MLServer at {self.client.target} missed {missed} checks")
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        await self.client.close()


async def _answers(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


def _exit(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"code {code}"
