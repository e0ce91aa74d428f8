"""Pods that join and leave a running Envoy: a pod started after Envoy (not in its
configuration) becomes one of its hosts from the gateway's endpoint files, serves the model
once the only other pod dies, and the dead pod leaves Envoy's hosts.

Costs counted: requests sent while the model's only pod is SIGKILLed and it reloads on the
new pod fail (those in flight and those routed before the death is seen); once the reload is
done every request succeeds.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.tools import launcher

from .conftest import sample_deployment, seed_body


def envoy_hosts(deployment: launcher.Deployment, cluster: str) -> set[str]:
    text = httpx.get(f"http://127.0.0.1:{deployment.ports.envoy_admin}/clusters", timeout=5).text
    prefix = f"{cluster}::"
    return {
        line[len(prefix) :].split("::", 1)[0]
        for line in text.splitlines()
        if line.startswith(prefix) and "::cx_active::" in line
    }


def until(what: str, check: object, timeout: float) -> float:
    """Seconds until ``check()`` holds (the test fails past ``timeout``)."""
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.Deployment]:
    data = tmp_path_factory.mktemp("pods-join")
    with sample_deployment(data, launcher.Ports.free(pods=1)) as running:
        yield running


def test_a_pod_started_after_envoy_joins_serves_and_the_dead_one_leaves(
    single: launcher.Deployment,
) -> None:
    first = single.ports.pod_addresses[0]
    assert envoy_hosts(single, "pods") == {first}
    port, rest_port = launcher.free_port(), launcher.free_port()
    late = f"127.0.0.1:{port}"
    single.spawn_pod("pod-late", port, rest_port)
    with httpx.Client(base_url=single.api_url, timeout=30) as api:

        def healthy() -> bool:
            return any(
                p["name"] == "pod-late" and p["healthy"]
                for p in api.get("/v1/placement").json()["pods"]
            )

        until("the gateway sees the late pod healthy", healthy, 30)
    joined = until("Envoy has the late pod", lambda: late in envoy_hosts(single, "pods"), 2)
    until(
        "Envoy has its REST listener",
        lambda: f"127.0.0.1:{rest_port}" in envoy_hosts(single, "pods_rest"),
        2,
    )
    print(f"late pod in Envoy's hosts {joined:.2f} s after the gateway saw it healthy")

    single.process("pod-0").popen.send_signal(signal.SIGKILL)
    failed = served = 0
    with httpx.Client(base_url=single.url, timeout=30) as rest:
        deadline = time.monotonic() + 60
        streak = 0
        while streak < 20:  # 20 answers in a row from the late pod
            assert time.monotonic() < deadline, f"never served again ({failed} failed)"
            response = rest.post("/v2/models/sklearn-mnist/infer", json=seed_body())
            if response.status_code == 200:
                served += 1
                streak += 1
            else:
                failed += 1
                streak = 0
    print(f"pod-0 SIGKILLed: {failed} requests failed before the model served from pod-late")
    until("the dead pod leaves Envoy", lambda: first not in envoy_hosts(single, "pods"), 10)
    assert late in envoy_hosts(single, "pods")
