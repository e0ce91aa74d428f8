"""A pod that dies or hangs under steady load (issue 13, items 5 and 7), each in its own
deployment: what it costs is counted and printed.

- SIGKILL of the pod holding the only copy: requests in flight are retried on another
  pod (Envoy retries a reset), which loads the model on demand; requests that follow
  wait for the reload, as a first request does. It used to cost 24 of 1,800 requests
  (404 "not loaded on this pod"); it may cost at most the requests in flight.
- SIGSTOP of a pod holding one of several copies, with the InferenceService's per-try
  timeout at 1 s: a request routed to the stopped pod is retried on a copy that answers
  after 1 s, instead of hanging for the whole stop; none fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.core.domain import CopyState
from gateway.tools import launcher, samples

from .conftest import EXAMPLE, ISVCS, wait_ready

WORKERS = 4  # clients sending one request after another: at most 4 in flight


@dataclass
class Load:
    """Steady REST load from WORKERS threads until stopped; every answer recorded."""

    url: str
    answers: list[tuple[float, float, int, str]] = field(default_factory=list)  # start, s, status
    _stop: threading.Event = field(default_factory=threading.Event)

    def _work(self) -> None:
        body = samples.sample_request()
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                response = client.post("/v2/models/sklearn-mnist/infer", json=body)
                wrong = "" if response.status_code == 200 else response.text[:200]
                if not wrong and response.json()["outputs"][0]["contents"]["int64Contents"] != [
                    "8"
                ]:
                    wrong = response.text[:200]
                self.answers.append(
                    (started, time.monotonic() - started, response.status_code, wrong)
                )
                time.sleep(0.02)

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self._work) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=90)

    def failed(self) -> list[tuple[float, float, int, str]]:
        return [a for a in self.answers if a[3] or a[2] != 200]

    def since(self, moment: float) -> list[tuple[float, float, int, str]]:
        return [a for a in self.answers if a[0] + a[1] >= moment]


def _deploy(data: Path, annotations: dict[str, str], env: dict[str, str]) -> launcher.Deployment:
    samples.train_mnist_svm(data / "models" / samples.SAMPLE_FILE)
    deployment = launcher.Deployment(data_dir=data, ports=launcher.Ports.free(), gateway_env=env)
    deployment.start()
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"]["annotations"].update(annotations)
    with httpx.Client(base_url=deployment.api_url, timeout=30) as api:
        api.put(f"{ISVCS}/sklearn-mnist", json=document).raise_for_status()
        wait_ready(api, "sklearn-mnist")
    return deployment


def _holders(deployment: launcher.Deployment) -> list[int]:
    """Indexes of the pods holding a loaded copy."""
    pods = httpx.get(f"{deployment.api_url}/v1/placement", timeout=10).json()["pods"]
    held = {p["pod"] for p in pods if any(m["state"] == CopyState.LOADED for m in p["models"])}
    return [i for i, port in enumerate(deployment.ports.pods) if f"127.0.0.1:{port}" in held]


def test_sigkill_of_the_only_copys_pod_costs_at_most_its_requests_in_flight(
    tmp_path: Path,
) -> None:
    deployment = _deploy(tmp_path, {}, {})
    try:
        (holder,) = _holders(deployment)
        load = Load(deployment.url)
        with load.running():
            time.sleep(2)
            killed = time.monotonic()
            os.kill(deployment.process(f"pod-{holder}").popen.pid, signal.SIGKILL)
            time.sleep(6)
        after = load.since(killed)
        failed = load.failed()
        slowest = max(a[1] for a in after)
        print(
            f"SIGKILL of the holder: {len(load.answers)} requests, {len(after)} after the kill, "
            f"{len(failed)} failed (at most {WORKERS} in flight), slowest after {slowest:.2f} s"
        )
        assert len(after) > 50
        assert len(failed) <= WORKERS, failed[:5]
        assert not [a for a in failed if a[2] == 404], "a registered model answered 404"
    finally:
        deployment.stop()


@pytest.mark.parametrize("stop_seconds", [8.0])
def test_sigstop_of_a_copys_pod_is_waited_out_for_the_per_try_timeout_only(
    tmp_path: Path, stop_seconds: float
) -> None:
    # a second copy as soon as traffic is seen (every request counts toward adding one)
    env = {"MMGW_PLACEMENT__COPY_RATE_THRESHOLD": "1", "MMGW_PLACEMENT__SCALE_TICKS": "1"}
    deployment = _deploy(tmp_path, {"mmgw.io/per-try-timeout": "1s"}, env)
    try:
        load = Load(deployment.url)
        with load.running():
            deadline = time.monotonic() + 60
            while len(holders := _holders(deployment)) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(holders) >= 2, "no second copy was made"
            stopped_pod = deployment.process(f"pod-{holders[0]}").popen.pid
            stopped = time.monotonic()
            os.kill(stopped_pod, signal.SIGSTOP)
            try:
                time.sleep(stop_seconds)
            finally:
                os.kill(stopped_pod, signal.SIGCONT)
            time.sleep(2)
        during = [a for a in load.since(stopped) if a[0] < stopped + stop_seconds]
        slowest = max(a[1] for a in during)
        failed = load.failed()
        print(
            f"SIGSTOP of one of {len(holders)} copies' pods for {stop_seconds:g} s: "
            f"{len(during)} requests during it, {len(failed)} failed, slowest {slowest:.2f} s"
        )
        assert not failed, failed[:5]
        assert slowest < stop_seconds, "a request waited for the whole stop"
    finally:
        deployment.stop()
