"""`mmgw` run as a subprocess against an e2e deployment's management API: the helpers
the CLI tests share (the ``cli`` fixture is in conftest.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx

from gateway.tools import launcher, samples

from .conftest import ISVCS, ROOT

KIND = "inferenceservice.serving.kserve.io"
HEADER = [
    "NAME",
    "URL",
    "READY",
    "PREV",
    "LATEST",
    "PREVROLLEDOUTREVISION",
    "LATESTREADYREVISION",
    "AGE",
]


def isvc_yaml(name: str, path: str = samples.SAMPLE_FILE, *, kind: str = "InferenceService") -> str:
    """The seed's sklearn-mnist document, under another name and model path."""
    return f"""\
apiVersion: serving.kserve.io/v1beta1
kind: {kind}
metadata:
  name: {name}
  namespace: modelmesh-serving
  annotations:
    serving.kserve.io/deploymentMode: ModelMesh
spec:
  predictor:
    model:
      modelFormat:
        name: sklearn
      storage:
        parameters:
          type: pvc
          name: my-models-pvc
        path: {path}
"""


def mmgw(*args: str, server: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", *args, "--server", server],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def rows(output: str) -> dict[str, list[str]]:
    """``get isvc``'s table by name (the header checked); cells split on runs of spaces."""
    lines = output.splitlines()
    assert lines[0].split() == HEADER, output
    return {line.split()[0]: re.split(r"\s{2,}", line.strip()) for line in lines[1:]}


class CLI:
    def __init__(self, deployment: launcher.Deployment) -> None:
        self.deployment = deployment
        self.server = deployment.api_url
        self.names: set[str] = set()  # to delete afterwards

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return mmgw(*args, server=self.server, stdin=stdin)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def refused(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.returncode == 1, (result.stdout, result.stderr)
        return result.stderr

    def table(self) -> dict[str, list[str]]:
        return rows(self.ok("get", "isvc"))

    def wait_ready(self, *names: str, timeout: float = 60.0) -> dict[str, list[str]]:
        deadline = time.monotonic() + timeout
        while True:
            table = self.table()
            if all(table.get(name, [""])[2:3] == ["True"] for name in names):
                return table
            assert time.monotonic() < deadline, f"not ready after {timeout:g} s: {table}"
            time.sleep(0.2)

    def cleanup(self) -> None:
        with httpx.Client(base_url=self.server, timeout=30) as api:
            for name in self.names:
                assert api.delete(f"{ISVCS}/{name}").status_code in (200, 404)
