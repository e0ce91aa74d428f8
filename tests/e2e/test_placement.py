"""The pod pool as a distributed LRU cache, end to end through Envoy.

Three pods that each hold four 1 MiB synthetic models, twenty models
registered: lazy loads, coalescing, evictions, the load queue, a runtime that
fails on one pod, a rolling update and a pod killed under steady requests, a
model too large for any pod, and a gateway restart.
"""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.pod.runtimes.synthetic import write_synthetic
from gateway.tools import launcher
from gateway.tools.launcher import metric

from .conftest import ISVCS, wait_ready

MiB = 1 << 20
POD_CAPACITY = 4 * MiB + MiB // 2  # four 1 MiB models, not five
ROW = [1.0, 2.0, 3.0]


def isvc(name: str, path: str, fmt: str = "synthetic") -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": fmt},
                    "storage": {
                        "parameters": {"type": "pvc", "name": "my-models-pvc"},
                        "path": path,
                    },
                }
            }
        },
    }


def infer_body() -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": [1, 3], "datatype": "FP64", "contents": {"fp64_contents": ROW}}
        ]
    }


def answer(response: httpx.Response) -> float:
    assert response.status_code == 200, response.text
    return float(response.json()["outputs"][0]["contents"]["fp64Contents"][0])


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.Deployment]:
    data = tmp_path_factory.mktemp("pool")
    models = data / "models"
    for i in range(20):
        write_synthetic(models / f"m{i}.json", size_bytes=MiB)
    write_synthetic(models / "slow.json", size_bytes=MiB, load_seconds=3)
    deployment = launcher.Deployment(
        data_dir=data,
        ports=launcher.Ports.free(),
        pod_capacity=POD_CAPACITY,
        gateway_env={
            "MMGW_PLACEMENT__CHURN_GUARD": "1",
            "MMGW_PLACEMENT__COPY_RATE_THRESHOLD": "5",
        },
    )
    with deployment as running:
        with httpx.Client(base_url=running.api_url, timeout=30) as api:
            for i in range(20):
                api.put(f"{ISVCS}/m{i}", json=isvc(f"m{i}", f"m{i}.json")).raise_for_status()
            for i in range(20):
                wait_ready(api, f"m{i}")
        yield running


@pytest.fixture(scope="module")
def rest(pool: launcher.Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pool.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def api(pool: launcher.Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pool.api_url, timeout=60) as client:
        yield client


def placement(api: httpx.Client) -> dict[str, Any]:
    return api.get("/v1/placement").json()


def test_twenty_models_served_by_pods_that_hold_four_each(
    rest: httpx.Client, api: httpx.Client
) -> None:
    for _ in range(2):
        for i in range(20):
            assert answer(rest.post(f"/v2/models/m{i}/infer", json=infer_body())) == sum(ROW)
    # A first load of a model larger than predicted may over-commit its pod for
    # a moment; the engine evicts back under capacity (bounded wait).
    deadline = time.monotonic() + 30
    while any(p["used_bytes"] > POD_CAPACITY for p in placement(api)["pods"]):
        assert time.monotonic() < deadline, placement(api)
        time.sleep(0.2)
    for pod in placement(api)["pods"]:
        assert len(pod["models"]) <= 4
    assert metric(api, "mmgw_model_evictions_total") > 0
    assert metric(api, "mmgw_cache_misses_total") > 0


def test_concurrent_first_requests_cause_one_load(
    rest: httpx.Client, api: httpx.Client, pool: launcher.Deployment
) -> None:
    write_synthetic(pool.data_dir / "models" / "burst.json", size_bytes=MiB, load_seconds=1)
    loads_before = metric(api, "mmgw_model_load_seconds_count")
    api.put(f"{ISVCS}/burst", json=isvc("burst", "burst.json")).raise_for_status()
    # Ten first requests while its (1 s) load is under way: all wait for that one load.
    with concurrent.futures.ThreadPoolExecutor(10) as threads:
        results = list(
            threads.map(lambda _: rest.post("/v2/models/burst/infer", json=infer_body()), range(10))
        )
    assert [answer(r) for r in results] == [sum(ROW)] * 10
    assert metric(api, "mmgw_model_load_seconds_count") - loads_before == 1
    api.delete(f"{ISVCS}/burst")


def test_traffic_keeps_flowing_while_a_pod_loads(rest: httpx.Client, api: httpx.Client) -> None:
    answer(rest.post("/v2/models/m0/infer", json=infer_body()))
    api.put(f"{ISVCS}/slow", json=isvc("slow", "slow.json")).raise_for_status()  # a 3 s load starts
    served_during_load = 0
    while api.get(f"{ISVCS}/slow").json()["status"]["conditions"][0]["status"] != "True":
        answer(rest.post("/v2/models/m0/infer", json=infer_body()))
        served_during_load += 1
        if served_during_load > 10_000:
            break
    assert served_during_load > 0
    api.delete(f"{ISVCS}/slow")


def test_a_model_larger_than_every_pod_is_refused_with_the_sizes(
    rest: httpx.Client, api: httpx.Client, pool: launcher.Deployment
) -> None:
    huge = pool.data_dir / "models" / "huge.json"
    huge.write_text(
        '{"size_bytes": 1}' + " " * (5 * MiB)
    )  # 5 MiB on disk: predicted larger than any pod
    api.put(f"{ISVCS}/huge", json=isvc("huge", "huge.json")).raise_for_status()
    response = rest.post("/v2/models/huge/infer", json=infer_body())
    assert response.status_code == 429
    assert "the largest pod holds" in response.json()["message"]
    api.delete(f"{ISVCS}/huge")


def test_a_failing_model_reports_model_load_failed(
    rest: httpx.Client, api: httpx.Client, pool: launcher.Deployment
) -> None:
    write_synthetic(
        pool.data_dir / "models" / "broken.json", size_bytes=MiB, fail="weights are corrupt"
    )
    api.put(f"{ISVCS}/broken", json=isvc("broken", "broken.json")).raise_for_status()
    item = wait_ready(api, "broken")
    ready = item["status"]["conditions"][0]
    assert ready["status"] == "False" and ready["reason"] == "ModelLoadFailed"
    assert "weights are corrupt" in ready["message"]
    response = rest.post("/v2/models/broken/infer", json=infer_body())
    assert response.status_code == 503 and "weights are corrupt" in response.json()["message"]
    api.delete(f"{ISVCS}/broken")


class Steady:
    """Requests for one model in a loop, bounded in count and time, counting failures."""

    def __init__(self, url: str, model: str, limit_seconds: float = 60.0) -> None:
        self.url, self.model, self.limit = url, model, limit_seconds
        self.ok = 0
        self.failed: list[str] = []
        self.answers: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Steady:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < deadline and self.ok < 100_000:
                response = client.post(f"/v2/models/{self.model}/infer", json=infer_body())
                if response.status_code == 200:
                    self.ok += 1
                    self.answers.add(response.json()["modelName"])
                else:
                    self.failed.append(f"{response.status_code} {response.text[:200]}")


def test_a_rolling_update_under_steady_requests_fails_none(
    api: httpx.Client, pool: launcher.Deployment
) -> None:
    write_synthetic(pool.data_dir / "models" / "v1.json", size_bytes=MiB)
    write_synthetic(pool.data_dir / "models" / "v2.json", size_bytes=MiB, load_seconds=1)
    api.put(f"{ISVCS}/rolling", json=isvc("rolling", "v1.json")).raise_for_status()
    wait_ready(api, "rolling")
    old = api.get(f"{ISVCS}/rolling").json()
    with Steady(pool.url, "rolling") as steady:
        while steady.ok < 20:
            time.sleep(0.05)
        api.put(f"{ISVCS}/rolling", json=isvc("rolling", "v2.json")).raise_for_status()
        deadline = time.monotonic() + 60
        while (
            api.get(f"{ISVCS}/rolling").json()["status"]["modelStatus"]["transitionStatus"]
            != "UpToDate"
        ):
            assert time.monotonic() < deadline, "the rollout did not finish"
            time.sleep(0.1)
        served = steady.ok
        while steady.ok < served + 20:
            time.sleep(0.05)
    assert steady.failed == []
    assert len(steady.answers) == 2  # the old concrete id, then the new one
    assert old["status"]["modelStatus"]["states"]["activeModelState"] == "Loaded"
    api.delete(f"{ISVCS}/rolling")


def wait_healthy(api: httpx.Client, pod: str, healthy: bool) -> None:
    """Until the gateway sees ``pod`` as (un)healthy; bounded."""
    deadline = time.monotonic() + 30
    while next(p for p in placement(api)["pods"] if p["pod"] == pod)["healthy"] != healthy:
        assert time.monotonic() < deadline, (
            f"pod {pod} did not become {'healthy' if healthy else 'unreachable'}"
        )
        time.sleep(0.1)


def holders(api: httpx.Client, name: str) -> list[str]:
    return [
        p["pod"]
        for p in placement(api)["pods"]
        if any(
            m["model_id"].startswith(f"{name}__") and m["state"] == "LOADED" for m in p["models"]
        )
    ]


def test_copies_follow_traffic_and_a_dead_pods_requests_go_to_another_copy(
    rest: httpx.Client, api: httpx.Client, pool: launcher.Deployment
) -> None:
    # Above 5 requests/s per copy (this pool's threshold) for a few ticks: a second copy.
    deadline = time.monotonic() + 60
    while len(holders(api, "m19")) < 2:
        assert time.monotonic() < deadline, "no second copy came"
        for _ in range(20):
            answer(rest.post("/v2/models/m19/infer", json=infer_body()))
        time.sleep(0.1)
    first, second = holders(api, "m19")[:2]
    index = pool.ports.pod_addresses.index(first)
    pool.stop_process(f"pod-{index}", signal.SIGKILL)
    # Until the gateway notices, some requests still name the dead pod first:
    # Envoy's retry sends them to the other copy. None fails.
    results = [rest.post("/v2/models/m19/infer", json=infer_body()) for _ in range(20)]
    assert [r.status_code for r in results] == [200] * 20
    wait_healthy(api, first, False)
    assert first not in holders(api, "m19") and second in holders(api, "m19")
    # A model whose only copy was on the dead pod loads elsewhere on its next request.
    lost = [
        m["model_id"].split("__")[0]
        for p in placement(api)["pods"]
        if p["pod"] == first
        for m in p["models"]
    ]
    assert lost == []  # the dead pod's copies are gone from the table
    assert answer(rest.post("/v2/models/m19/infer", json=infer_body())) == sum(ROW)
    # Restarting the pod brings it back into the pool.
    pool.start_pod(index)
    wait_healthy(api, first, True)


def test_a_model_whose_only_copy_died_loads_elsewhere(
    rest: httpx.Client, api: httpx.Client, pool: launcher.Deployment
) -> None:
    answer(rest.post("/v2/models/m7/infer", json=infer_body()))
    [holder] = holders(api, "m7")
    index = pool.ports.pod_addresses.index(holder)
    pool.stop_process(f"pod-{index}", signal.SIGKILL)
    wait_healthy(api, holder, False)
    assert answer(rest.post("/v2/models/m7/infer", json=infer_body())) == sum(ROW)
    assert holders(api, "m7") != [holder]
    pool.start_pod(index)
    wait_healthy(api, holder, True)


def test_a_restarted_gateway_keeps_every_model_and_learns_the_placement(
    rest: httpx.Client, api: httpx.Client, pool: launcher.Deployment
) -> None:
    for i in range(3):
        answer(rest.post(f"/v2/models/m{i}/infer", json=infer_body()))
    # (model, pod) pairs: a model may have a copy on more than one pod
    before = {
        (m, p["pod"]) for p in placement(api)["pods"] for m in (x["model_id"] for x in p["models"])
    }
    pool.stop_process("gateway")
    pool.start_gateway()
    deadline = time.monotonic() + 60
    while True:
        try:
            if api.get("/healthz").status_code == 200 and all(
                p["healthy"] for p in placement(api)["pods"]
            ):
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the gateway did not come back"
        time.sleep(0.1)
    names = {item["metadata"]["name"] for item in api.get(ISVCS).json()["items"]}
    assert {f"m{i}" for i in range(20)} <= names
    after = {
        (m, p["pod"]) for p in placement(api)["pods"] for m in (x["model_id"] for x in p["models"])
    }
    assert after == before  # learned from the pods, nothing loaded again
    assert metric(api, "mmgw_model_load_seconds_count") == 0
    for i in range(3):
        assert answer(rest.post(f"/v2/models/m{i}/infer", json=infer_body())) == sum(ROW)
