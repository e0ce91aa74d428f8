"""MLServer serving the same mnist-svm model: the peer a user would otherwise run.

MLServer cannot be installed beside the project (mlserver 1.7 needs protobuf<7, our
stubs >=7.35), so it runs from its own virtualenv, ``.venv-mlserver``, which
``make mlserver`` makes (``make bench`` does; requirements/mlserver.txt pins it, with
the scikit-learn version the model is trained with here), the one MLServer-backed
pods run (gateway.pod.mlserver). ``running`` starts
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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.pod.mlserver.process import find_executable
from gateway.tools import launcher

ROOT = Path(__file__).resolve().parent.parent
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


@contextlib.contextmanager
def running(model: Path, work: Path, timeout: float = 120.0) -> Iterator[MLServer]:
    executable = find_executable("")
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
