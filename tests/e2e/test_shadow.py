"""Shadow traffic (issue 15, item 5): an Experiment's mirror gets its percent of the
requests as copies, sent by Envoy's request mirroring; its answers are discarded, and a
mirror that takes 2 s per request changes nothing for the client."""

from __future__ import annotations

import time

import grpc
import httpx

from gateway._proto import model_runtime_pb2 as rt
from gateway._proto import model_runtime_pb2_grpc as rt_grpc
from gateway.pod.runtimes.synthetic import write_synthetic
from gateway.tools import launcher, samples

from .conftest import ISVCS, inference_service, wait_ready

EXPERIMENTS = "/apis/mlops.seldon.io/v1alpha1/namespaces/modelmesh-serving/experiments"
REQUESTS = 200


def _served_by_pods(deployment: launcher.Deployment, model_id: str) -> int:
    """Requests the pods say they served for ``model_id`` (their RuntimeStatus)."""
    total = 0
    for port in deployment.ports.pods:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = rt_grpc.ModelRuntimeStub(channel).RuntimeStatus(
                rt.RuntimeStatusRequest(), timeout=10
            )
        total += sum(m.requests for m in status.loaded_models if m.model_id == model_id)
    return total


def test_a_mirror_gets_copies_and_its_slowness_changes_nothing(
    deployment: launcher.Deployment, api: httpx.Client, rest: httpx.Client
) -> None:
    write_synthetic(deployment.data_dir / "models" / "slow-mirror.json", 1 << 20, predict_seconds=2)
    api.put(
        f"{ISVCS}/shadow-a", json=inference_service("shadow-a", "sklearn", samples.SAMPLE_FILE)
    ).raise_for_status()
    api.put(
        f"{ISVCS}/shadow-slow",
        json=inference_service("shadow-slow", "synthetic", "slow-mirror.json"),
    ).raise_for_status()
    ids = {
        name: wait_ready(api, name)["status"]["components"]["predictor"]["latestRolledoutRevision"]
        for name in ("shadow-a", "shadow-slow")
    }
    experiment = {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "shadow-ab"},
        "spec": {
            "candidates": [{"name": "shadow-a", "weight": 1}],
            "mirror": {"name": "shadow-slow", "percent": 50},
        },
    }
    api.put(f"{EXPERIMENTS}/shadow-ab", json=experiment).raise_for_status()
    before = _served_by_pods(deployment, ids["shadow-slow"])
    body, slowest, served = samples.sample_request(), 0.0, set()
    for _ in range(REQUESTS):
        started = time.monotonic()
        response = rest.post("/v2/models/shadow-ab/infer", json=body)
        slowest = max(slowest, time.monotonic() - started)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["contents"]["int64Contents"] == ["8"]
        served.add(response.headers["x-mmgw-variant"])
    time.sleep(3)  # the last copies finish their 2 s predict
    copies = _served_by_pods(deployment, ids["shadow-slow"]) - before
    print(
        f"{REQUESTS} requests to an Experiment with a 50% mirror of 2 s per request: "
        f"{copies} copies reached the mirror; the slowest answer took {slowest * 1000:.0f} ms"
    )
    assert served == {ids["shadow-a"]}  # every answer is the candidate's
    assert 60 <= copies <= 140  # 50% of 200, within 5.6 standard deviations
    assert slowest < 2.0  # no answer waited for its copy's 2 s
    # a client cannot ask for copies itself: its own x-mmgw-shadow is removed
    spoofed = {
        "x-mmgw-shadow": "pods",
        "x-mmgw-shadow-upstream": ",".join(deployment.ports.pod_addresses),
        "x-mmgw-shadow-model-id": ids["shadow-slow"],
    }
    after = _served_by_pods(deployment, ids["shadow-slow"])
    for _ in range(20):
        response = rest.post("/v2/models/shadow-a/infer", json=body, headers=spoofed)
        assert response.status_code == 200
    time.sleep(3)
    assert _served_by_pods(deployment, ids["shadow-slow"]) == after
    api.delete(f"{EXPERIMENTS}/shadow-ab").raise_for_status()
    for name in ("shadow-a", "shadow-slow"):
        api.delete(f"{ISVCS}/{name}").raise_for_status()
