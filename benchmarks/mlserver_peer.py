"""MLServer serving the same mnist-svm model: the peer a user would otherwise run.

MLServer cannot be installed beside the project (mlserver 1.7 needs protobuf<7, our
stubs >=7.35), so it gets a virtualenv of its own, made once under
``.mmgw/bench/mlserver-venv`` from PyPI (mlserver and mlserver-sklearn, with the
scikit-learn version the model is trained with here). ``running`` starts
``mlserver start`` on free loopback ports with its defaults otherwise (one
parallel inference worker, metrics on) and stops it afterwards. MLServer
answers 422 to a body without ``content-type: application/json``; the
benchmark sends that header to every REST path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import sklearn

from gateway.tools import launcher

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".mmgw" / "bench" / "mlserver-venv"
VERSION = "1.7.1"
MODEL_NAME = "mnist-svm"


@dataclass(frozen=True)
class MLServer:
    http_port: int
    grpc_port: int
    pid: int  # also its process group: the server, its inference worker, its metrics

    def pause(self) -> None:
        """SIGSTOP the whole server while other paths are measured: idle, MLServer still
        spends CPU (its worker and metrics loops), which would be taken from them."""
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    @property
    def infer_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL_NAME}/infer"

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}/inference.GRPCInferenceService/ModelInfer"


def requirements() -> list[str]:
    return [
        f"mlserver=={VERSION}",
        f"mlserver-sklearn=={VERSION}",
        f"scikit-learn=={sklearn.__version__}",  # the version mnist-svm.joblib is saved with
        # MLServer 1.7.1's inference workers call asyncio.get_event_loop() before setting one,
        # which uvloop 0.22 and later refuse: its workers die at start with a newer one.
        "uvloop==0.21.0",
    ]


def ensure_venv() -> Path:
    """The virtualenv's ``mlserver`` executable; made (or brought up to ``requirements``) on
    first use."""
    executable = VENV / "bin" / "mlserver"
    stamp = VENV / ".requirements"
    wanted = "\n".join(requirements())
    if executable.exists() and stamp.exists() and stamp.read_text() == wanted:
        return executable
    print(f"installing MLServer {VERSION} into {VENV} (once) ...", flush=True)
    if not (VENV / "bin" / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(VENV / "bin" / "pip"), "install", "--quiet", *requirements()],
        check=True,
    )
    stamp.write_text(wanted)
    return executable


@contextlib.contextmanager
def running(model: Path, work: Path, timeout: float = 120.0) -> Iterator[MLServer]:
    executable = ensure_venv()
    folder = work / "mlserver"
    (folder / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = (launcher.free_port() for _ in range(3))
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
            }
        )
    )
    (folder / MODEL_NAME / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL_NAME,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": str(model)},
            }
        )
    )
    log = (work / "mlserver.log").open("wb")
    process = subprocess.Popen(
        [str(executable), "start", str(folder)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
        start_new_session=True,  # its inference workers are stopped with it
    )
    try:
        deadline = time.monotonic() + timeout
        ready = f"http://127.0.0.1:{http_port}/v2/models/{MODEL_NAME}/ready"
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready, timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"MLServer did not start; see {work / 'mlserver.log'}")
            time.sleep(0.2)
        yield MLServer(http_port, grpc_port, process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)  # if paused
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
