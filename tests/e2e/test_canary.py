"""A canary through the real Envoy (issue 15, item 1): KServe's canaryTrafficPercent
splits REST requests between the rolled-out and the latest version once the latest is
loaded; removing the field promotes it, and every request after is served by it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import grpc
import httpx
import pytest

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.tools import launcher, samples

from .conftest import ISVCS, inference_service

NAME = "canary-mnist"
REQUESTS = 1000


def _document(path: str, percent: int | None) -> dict[str, Any]:
    document = inference_service(NAME, "sklearn", path)
    if percent is not None:
        document["spec"]["predictor"]["canaryTrafficPercent"] = percent
    return document


def _traffic(api: httpx.Client) -> list[dict[str, Any]]:
    status = api.get(f"{ISVCS}/{NAME}").json()["status"]
    return status.get("components", {}).get("predictor", {}).get("traffic", [])


def _wait(api: httpx.Client, what: str, done: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what}: {_traffic(api)}"
        time.sleep(0.1)


def _served(rest: httpx.Client) -> Counter[str]:
    body, served = samples.sample_request(), Counter[str]()
    for _ in range(REQUESTS):
        response = rest.post(f"/v2/models/{NAME}/infer", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["contents"]["int64Contents"] == ["8"]
        served[response.json()["modelName"]] += 1
    return served


def _pinning_and_stickiness(
    deployment: launcher.Deployment, rest: httpx.Client, latest: str, previous: str
) -> None:
    """Every answer names its version in x-mmgw-variant (REST and gRPC); sent back, it
    keeps the client on that version; a value that is no version of the name is a 400."""
    body = samples.sample_request()
    for variant in (latest, previous):
        for _ in range(50):
            response = rest.post(
                f"/v2/models/{NAME}/infer", json=body, headers={"x-mmgw-variant": variant}
            )
            assert response.status_code == 200, response.text
            assert response.json()["modelName"] == response.headers["x-mmgw-variant"] == variant
    sticky = rest.post(f"/v2/models/{NAME}/infer", json=body).headers["x-mmgw-variant"]
    for _ in range(50):  # a client that sends back what it was served stays there
        response = rest.post(
            f"/v2/models/{NAME}/infer", json=body, headers={"x-mmgw-variant": sticky}
        )
        sticky_after = response.headers["x-mmgw-variant"]
        assert sticky_after == sticky
    wrong = rest.post(
        f"/v2/models/{NAME}/infer", json=body, headers={"x-mmgw-variant": "other__isvc-1"}
    )
    assert wrong.status_code == 400 and "is not a version of 'canary-mnist'" in wrong.text
    request = v2.ModelInferRequest(model_name=NAME)
    request.inputs.add(name="predict", datatype="FP32", shape=[1, 64]).contents.fp32_contents[:] = (
        samples.sample_input()
    )
    with grpc.insecure_channel(f"127.0.0.1:{deployment.ports.envoy}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        pin = (("mm-vmodel-id", NAME), ("x-mmgw-variant", previous))
        answer, call = stub.ModelInfer.with_call(request, metadata=pin, timeout=30)
        assert answer.model_name == previous
        assert dict(call.initial_metadata())["x-mmgw-variant"] == previous
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, metadata=(("mm-vmodel-id", NAME), ("x-mmgw-variant", "x")))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_canary_splits_requests_then_promotion_moves_them_all(
    deployment: launcher.Deployment, api: httpx.Client, rest: httpx.Client
) -> None:
    models = deployment.data_dir / "models"
    shutil.copy(models / samples.SAMPLE_FILE, models / "mnist-svm-v2.joblib")
    api.put(f"{ISVCS}/{NAME}", json=_document(samples.SAMPLE_FILE, None)).raise_for_status()
    _wait(
        api,
        "v1 ready",
        lambda: (
            [t["percent"] for t in _traffic(api)] == [100]
            and api.get(f"{ISVCS}/{NAME}").json()["status"]["conditions"][0]["status"] == "True"
        ),
    )
    api.put(f"{ISVCS}/{NAME}", json=_document("mnist-svm-v2.joblib", 20)).raise_for_status()
    _wait(api, "the canary ready", lambda: [t["percent"] for t in _traffic(api)] == [20, 80])
    latest, previous = (t["revisionName"] for t in _traffic(api))
    listed = subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", "get", "isvc", NAME],
        env={**os.environ, "MMGW_SERVER": deployment.api_url},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    print("\n".join(listed))
    assert listed[0].split()[3:5] == ["PREV", "LATEST"] and listed[1].split()[3:5] == ["80", "20"]
    served = _served(rest)
    share = 100 * served[latest] / REQUESTS
    print(f"20% canary through Envoy: {served[latest]} of {REQUESTS} requests ({share:.1f}%)")
    assert set(served) == {latest, previous}
    assert abs(share - 20) <= 5  # 4 standard deviations at 1,000 requests
    _pinning_and_stickiness(deployment, rest, latest, previous)
    api.put(f"{ISVCS}/{NAME}", json=_document("mnist-svm-v2.joblib", None)).raise_for_status()
    _wait(api, "promoted", lambda: [t["revisionName"] for t in _traffic(api)] == [latest])
    assert _served(rest) == Counter({latest: REQUESTS})
    undone = subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", "rollout", "undo", "isvc", NAME],
        env={**os.environ, "MMGW_SERVER": deployment.api_url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert undone.stdout == f"inferenceservice.serving.kserve.io/{NAME} rolled back\n", undone
    _wait(api, "rolled back", lambda: [t["revisionName"] for t in _traffic(api)] == [previous])
    assert _served(rest) == Counter({previous: REQUESTS})
    api.delete(f"{ISVCS}/{NAME}").raise_for_status()


def test_rollback_and_promotion_under_steady_requests_fail_none(
    deployment: launcher.Deployment, api: httpx.Client
) -> None:
    """REST and native gRPC clients send requests throughout: a 50% canary, its rollback
    (0%), then its promotion. None fails, and every request sent after a switch shows in
    the status is served by the version the switch names."""
    name = "canary-steady"
    models = deployment.data_dir / "models"
    shutil.copy(models / samples.SAMPLE_FILE, models / "mnist-svm-v2.joblib")

    def document(path: str, percent: int | None) -> dict[str, Any]:
        doc = inference_service(name, "sklearn", path)
        if percent is not None:
            doc["spec"]["predictor"]["canaryTrafficPercent"] = percent
        return doc

    def traffic() -> list[tuple[str, int]]:
        status = api.get(f"{ISVCS}/{name}").json()["status"]
        found = status.get("components", {}).get("predictor", {}).get("traffic", [])
        return [(t["revisionName"], t["percent"]) for t in found]

    api.put(f"{ISVCS}/{name}", json=document(samples.SAMPLE_FILE, None)).raise_for_status()
    _wait(api, "v1", lambda: len(traffic()) == 1 and traffic()[0][1] == 100)
    ((previous, _),) = traffic()
    # (sent at, answered at, client, version or error)
    answers: list[tuple[float, float, str, str]] = []
    stop = threading.Event()

    def rest_client() -> None:
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                response = client.post(f"/v2/models/{name}/infer", json=samples.sample_request())
                served = response.json()["modelName"] if response.is_success else response.text
                answers.append((sent, time.monotonic(), "rest", served))

    def grpc_client() -> None:
        request = v2.ModelInferRequest(model_name=name)
        request.inputs.add(name="predict", datatype="FP32", shape=[1, 64]).contents.fp32_contents[
            :
        ] = samples.sample_input()
        with grpc.insecure_channel(f"127.0.0.1:{deployment.ports.envoy}") as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    answer = stub.ModelInfer(
                        request, metadata=(("mm-vmodel-id", name),), timeout=30
                    )
                    answers.append((sent, time.monotonic(), "grpc", answer.model_name))
                except grpc.RpcError as exc:
                    error = f"error {exc.code()}: {exc.details()}"
                    answers.append((sent, time.monotonic(), "grpc", error))

    clients = [threading.Thread(target=t) for t in (rest_client, rest_client, grpc_client)]
    for client in clients:
        client.start()
    try:
        api.put(f"{ISVCS}/{name}", json=document("mnist-svm-v2.joblib", 50)).raise_for_status()
        _wait(api, "the 50% canary", lambda: [p for _, p in traffic()] == [50, 50])
        latest = traffic()[0][0]
        time.sleep(1)
        api.put(f"{ISVCS}/{name}", json=document("mnist-svm-v2.joblib", 0)).raise_for_status()
        _wait(api, "the rollback", lambda: [p for _, p in traffic()] == [0, 100])
        rolled_back = time.monotonic()
        time.sleep(1)
        promoting = time.monotonic()  # from here the switch may come at any moment
        api.put(f"{ISVCS}/{name}", json=document("mnist-svm-v2.joblib", None)).raise_for_status()
        _wait(api, "the promotion", lambda: traffic() == [(latest, 100)])
        promoted = time.monotonic()
        time.sleep(1)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=60)
    versions = {previous, latest}
    failed = [a for a in answers if a[3] not in versions]
    # sent after the rollback showed, answered before the promotion was asked for
    after_rollback = {a[3] for a in answers if a[0] > rolled_back and a[1] < promoting}
    after_promotion = {a[3] for a in answers if a[0] > promoted}
    by_client = Counter(a[2] for a in answers)
    print(
        f"{len(answers)} requests ({dict(by_client)}) through a canary, its rollback and its "
        f"promotion: {len(failed)} failed"
    )
    assert not failed, failed[:5]
    assert by_client["rest"] and by_client["grpc"]
    assert after_rollback == {previous} and after_promotion == {latest}
    api.delete(f"{ISVCS}/{name}").raise_for_status()
