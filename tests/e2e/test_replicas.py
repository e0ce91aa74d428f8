"""Two gateway replicas, each with its own Envoy, sharing one etcd and one pool of 3 pods.

A real etcd (Debian's etcd-server) runs on loopback ports; the pods register
themselves in it. Covered: an apply on one replica is served by the other,
concurrent first requests through both replicas cause one load, a pod's lease
expiring takes it out of the pool, etcd stopped and restarted under steady
requests, leader failover with no failed request, and a rollout finished by
the other replica when the one doing it is killed.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.pod.runtimes.synthetic import write_synthetic
from gateway.store import open_store
from gateway.tools import launcher, samples
from gateway.tools.launcher import Deployment, EtcdServer, metric

from .conftest import EXAMPLE, ISVCS, seed_body, wait_ready

MiB = 1 << 20


def synthetic(name: str, path: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"},
        },
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "synthetic"},
                    "storage": {
                        "parameters": {"type": "pvc", "name": "my-models-pvc"},
                        "path": path,
                    },
                }
            }
        },
    }


def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(0.05)


def etcd_keys(etcd: EtcdServer, prefix: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        store = open_store(etcd.url, Path("."))
        try:
            return await store.items(prefix)
        finally:
            await store.close()

    return asyncio.run(read())


class Pair:
    """Replica a (with the pods) and replica b, their APIs and Envoys."""

    def __init__(self, a: Deployment, b: Deployment) -> None:
        self.replicas = {"a": a, "b": b}
        self.api = {
            k: httpx.Client(base_url=d.api_url, timeout=30) for k, d in self.replicas.items()
        }
        self.rest = {k: httpx.Client(base_url=d.url, timeout=30) for k, d in self.replicas.items()}

    def close(self) -> None:
        for client in [*self.api.values(), *self.rest.values()]:
            client.close()

    def leader(self) -> str:
        def find() -> str | None:
            found = [k for k, api in self.api.items() if _placement(api).get("leader")]
            return found[0] if len(found) == 1 else None

        return until(find, what="exactly one leader")


def _placement(api: httpx.Client) -> dict[str, Any]:
    try:
        return api.get("/v1/placement", timeout=2).json()
    except httpx.HTTPError:
        return {}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Pair, EtcdServer]]:
    models = tmp_path / "a" / "models"
    samples.train_mnist_svm(models / samples.SAMPLE_FILE)
    write_synthetic(models / "slow.json", size_bytes=MiB, load_seconds=1.5)
    write_synthetic(models / "broken.json", size_bytes=MiB, fail="corrupt weights")
    with EtcdServer(tmp_path / "etcd") as etcd:
        a = Deployment(data_dir=tmp_path / "a", ports=launcher.Ports.free(), store=etcd.url)
        ports_b = launcher.Ports.free(pods=0)
        b = Deployment(
            data_dir=tmp_path / "b",
            ports=launcher.Ports(
                ports_b.envoy,
                ports_b.envoy_admin,
                ports_b.api,
                ports_b.extproc,
                a.ports.pods,
                a.ports.pod_rest,
            ),
            store=etcd.url,
            own_pods=False,
            gateway_env={"MMGW_PVCS": f'{{"my-models-pvc": "{models}"}}'},
        )
        with a, b:
            pair = Pair(a, b)
            try:
                yield pair, etcd
            finally:
                pair.close()


def test_an_apply_on_one_replica_is_served_by_the_other(pair: tuple[Pair, EtcdServer]) -> None:
    replicas, _ = pair
    replicas.api["a"].put(
        f"{ISVCS}/sklearn-mnist", json=yaml.safe_load(EXAMPLE.read_text())
    ).raise_for_status()
    until(
        lambda: replicas.api["b"].get(f"{ISVCS}/sklearn-mnist").status_code == 200,
        timeout=1.0,
        what="replica b sees the InferenceService",
    )
    wait_ready(replicas.api["b"], "sklearn-mnist")
    for name in ("a", "b"):
        answer = replicas.rest[name].post("/v2/models/sklearn-mnist/infer", json=seed_body())
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["contents"]["int64Contents"] == ["8"]
    replicas.api["b"].delete(f"{ISVCS}/sklearn-mnist").raise_for_status()
    until(
        lambda: replicas.api["a"].get(f"{ISVCS}/sklearn-mnist").status_code == 404,
        timeout=1.0,
        what="replica a sees the delete",
    )
    assert (
        replicas.rest["a"].post("/v2/models/sklearn-mnist/infer", json=seed_body()).status_code
        == 404
    )


def test_first_requests_through_both_replicas_load_the_model_once(
    pair: tuple[Pair, EtcdServer],
) -> None:
    replicas, etcd = pair
    replicas.api["a"].put(f"{ISVCS}/slow", json=synthetic("slow", "slow.json")).raise_for_status()
    until(lambda: replicas.api["b"].get(f"{ISVCS}/slow").status_code == 200, what="b sees slow")
    body = {
        "inputs": [
            {
                "name": "x",
                "shape": [1, 2],
                "datatype": "FP32",
                "contents": {"fp32_contents": [1, 2]},
            }
        ]
    }
    answers: list[int] = []

    def ask(name: str) -> None:
        answers.append(replicas.rest[name].post("/v2/models/slow/infer", json=body).status_code)

    threads = [threading.Thread(target=ask, args=(name,)) for name in ("a", "b", "a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == [200] * 4
    loads = sum(metric(api, "mmgw_model_load_seconds_count") for api in replicas.api.values())
    assert loads == 1
    copies = [
        m
        for pod in etcd_keys(etcd, "pods/").values()
        for m in pod["models"]
        if m.startswith("slow__")
    ]
    assert len(copies) == 1
    assert etcd_keys(etcd, "claims/") == {}


def test_a_failed_load_on_one_replica_keeps_the_other_from_retrying_it(
    pair: tuple[Pair, EtcdServer],
) -> None:
    replicas, etcd = pair
    replicas.api["a"].put(
        f"{ISVCS}/broken", json=synthetic("broken", "broken.json")
    ).raise_for_status()
    until(
        lambda: len(etcd_keys(etcd, "failures/")) == 3, what="a's three failure records"
    )  # one per pod
    body = {
        "inputs": [
            {
                "name": "x",
                "shape": [1, 2],
                "datatype": "FP32",
                "contents": {"fp32_contents": [1, 2]},
            }
        ]
    }
    answer = replicas.rest["b"].post("/v2/models/broken/infer", json=body)
    assert answer.status_code == 503
    assert "corrupt weights" in answer.json()["message"]
    assert metric(replicas.api["a"], "mmgw_model_load_failures_total") == 3
    assert metric(replicas.api["b"], "mmgw_model_load_failures_total") == 0  # b tried no pod itself


def test_a_pod_whose_lease_expires_leaves_the_pool(pair: tuple[Pair, EtcdServer]) -> None:
    replicas, etcd = pair
    a = replicas.replicas["a"]
    assert len(etcd_keys(etcd, "pods/")) == 3
    a.stop_process("pod-2", signal.SIGKILL)  # no revoke: only the lease's expiry removes it
    until(lambda: len(etcd_keys(etcd, "pods/")) == 2, timeout=15, what="the pod's key expiring")
    for api in replicas.api.values():
        until(
            lambda api=api: len(_placement(api)["pods"]) == 2,
            timeout=2,
            what="the pod leaving the pool",
        )


def test_loaded_models_are_served_while_etcd_is_down_and_replicas_catch_up(
    pair: tuple[Pair, EtcdServer],
) -> None:
    replicas, etcd = pair
    replicas.api["a"].put(
        f"{ISVCS}/sklearn-mnist", json=yaml.safe_load(EXAMPLE.read_text())
    ).raise_for_status()
    wait_ready(replicas.api["b"], "sklearn-mnist")
    for name in ("a", "b"):  # both replicas have routed it once
        assert (
            replicas.rest[name].post("/v2/models/sklearn-mnist/infer", json=seed_body()).status_code
            == 200
        )
    etcd.stop()
    try:
        for _ in range(20):
            for name in ("a", "b"):
                answer = replicas.rest[name].post(
                    "/v2/models/sklearn-mnist/infer", json=seed_body()
                )
                assert answer.status_code == 200, answer.text
        refused = replicas.api["b"].put(f"{ISVCS}/other", json=synthetic("other", "slow.json"))
        assert refused.status_code == 503
        assert "etcd at 127.0.0.1" in refused.json()["message"]
    finally:
        etcd.start()
    created = until(
        lambda: (
            replicas.api["b"]
            .put(f"{ISVCS}/other", json=synthetic("other", "slow.json"))
            .status_code
            in (200, 201)
        ),
        what="apply after etcd returns",
    )
    assert created
    until(lambda: replicas.api["a"].get(f"{ISVCS}/other").status_code == 200, what="a catching up")
    for name in ("a", "b"):
        assert (
            replicas.rest[name].post("/v2/models/sklearn-mnist/infer", json=seed_body()).status_code
            == 200
        )


def test_killing_the_leader_hands_the_role_over_with_no_request_failing(
    pair: tuple[Pair, EtcdServer],
) -> None:
    replicas, _ = pair
    replicas.api["a"].put(
        f"{ISVCS}/sklearn-mnist", json=yaml.safe_load(EXAMPLE.read_text())
    ).raise_for_status()
    wait_ready(replicas.api["b"], "sklearn-mnist")
    leader = replicas.leader()
    other = "b" if leader == "a" else "a"
    replicas.replicas[leader].stop_process("gateway", signal.SIGKILL)
    failed = []
    deadline = time.monotonic() + 20
    while not _placement(replicas.api[other]).get("leader"):
        answer = replicas.rest[other].post("/v2/models/sklearn-mnist/infer", json=seed_body())
        if answer.status_code != 200:
            failed.append(answer.text)
        assert time.monotonic() < deadline, "no new leader within 20 s"
    assert failed == []


def test_a_rollout_left_by_a_killed_replica_is_finished_by_the_other(
    pair: tuple[Pair, EtcdServer], tmp_path: Path
) -> None:
    replicas, etcd = pair
    write_synthetic(tmp_path / "a" / "models" / "slow-v2.json", size_bytes=MiB, load_seconds=3.0)
    replicas.api["a"].put(f"{ISVCS}/slow", json=synthetic("slow", "slow.json")).raise_for_status()
    wait_ready(replicas.api["b"], "slow")
    replicas.api["a"].put(
        f"{ISVCS}/slow", json=synthetic("slow", "slow-v2.json")
    ).raise_for_status()
    until(lambda: etcd_keys(etcd, "claims/rollout/"), what="replica a claiming the rollout")
    replicas.replicas["a"].stop_process("gateway", signal.SIGKILL)  # mid-rollout: v2 is loading
    body = {
        "inputs": [
            {
                "name": "x",
                "shape": [1, 2],
                "datatype": "FP32",
                "contents": {"fp32_contents": [1, 2]},
            }
        ]
    }
    failed: list[str] = []

    def finished() -> bool:
        answer = replicas.rest["b"].post("/v2/models/slow/infer", json=body)
        if answer.status_code != 200:
            failed.append(answer.text)
        status = replicas.api["b"].get(f"{ISVCS}/slow").json()["status"]["modelStatus"]
        return status["transitionStatus"] == "UpToDate"

    until(finished, timeout=40, what="replica b finishing the rollout once a's claim expired")
    assert failed == []  # served throughout, by the old version and then the new
    stored = etcd_keys(etcd, "inferenceservices/")["inferenceservices/slow"]
    assert stored["serving"] == stored["target"] and stored["target"]["path"].endswith(
        "slow-v2.json"
    )
    # b lets the old version go after the rollout grace, then gives its claim up.
    until(
        lambda: etcd_keys(etcd, "claims/") == {}, timeout=10, what="b releasing the rollout's claim"
    )


def test_a_canary_and_an_experiment_applied_on_one_replica_split_alike_on_the_other(
    pair: tuple[Pair, EtcdServer],
) -> None:
    """Issue 15: the split lives in the store. A 30% canary applied on replica a, then an
    Experiment applied on replica b, are split through replica b's and a's Envoys."""
    replicas, _ = pair
    models = replicas.replicas["a"].data_dir / "models"
    (models / "mnist-svm-v2.joblib").write_bytes((models / samples.SAMPLE_FILE).read_bytes())
    document = yaml.safe_load(EXAMPLE.read_text())
    replicas.api["a"].put(f"{ISVCS}/sklearn-mnist", json=document).raise_for_status()
    wait_ready(replicas.api["a"], "sklearn-mnist")
    document["spec"]["predictor"]["model"]["storage"]["path"] = "mnist-svm-v2.joblib"
    document["spec"]["predictor"]["canaryTrafficPercent"] = 30
    replicas.api["a"].put(f"{ISVCS}/sklearn-mnist", json=document).raise_for_status()

    def split_on(name: str) -> list[int]:
        status = replicas.api[name].get(f"{ISVCS}/sklearn-mnist").json()["status"]
        return [t["percent"] for t in status["components"]["predictor"]["traffic"]]

    until(lambda: split_on("a") == [30, 70] and split_on("b") == [30, 70], 60, "the canary ready")
    latest = (
        replicas.api["b"]
        .get(f"{ISVCS}/sklearn-mnist")
        .json()["status"]["components"]["predictor"]["latestCreatedRevision"]
    )
    served = [
        replicas.rest["b"]
        .post("/v2/models/sklearn-mnist/infer", json=seed_body())
        .headers["x-mmgw-variant"]
        for _ in range(600)
    ]
    share = 100 * served.count(latest) / len(served)
    print(f"30% canary applied on replica a, through replica b: {share:.1f}% of 600")
    assert abs(share - 30) <= 8  # 4 standard deviations at 600 requests
    experiment = {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "mnist-split"},
        "spec": {"candidates": [{"name": "sklearn-mnist", "weight": 1}]},
    }
    experiments = "/apis/mlops.seldon.io/v1alpha1/namespaces/modelmesh-serving/experiments"
    replicas.api["b"].put(f"{experiments}/mnist-split", json=experiment).raise_for_status()
    until(
        lambda: (
            replicas.rest["a"].post("/v2/models/mnist-split/infer", json=seed_body()).status_code
            == 200
        ),
        10,
        "replica a serves the experiment applied on b",
    )
