"""Request ids, Envoy's JSON access log and JSON log lines (issue 17, item 3): a client's
x-request-id is kept, or one is made, and returned; Envoy writes a JSON line per request
with it; the gateway's and the pod's log lines for that request carry it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.tools import launcher, samples

from .conftest import EXAMPLE, ISVCS, seed_body, wait_ready


@pytest.fixture(scope="module")
def json_logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.Deployment]:
    """One pod with room for one mnist-svm; the gateway and the pod log JSON, the gateway
    at DEBUG (so a client's refused request is written too)."""
    data = tmp_path_factory.mktemp("request-ids")
    samples.train_mnist_svm(data / "models" / samples.SAMPLE_FILE)
    deployment = launcher.Deployment(
        data_dir=data,
        ports=launcher.Ports.free(pods=1),
        pod_capacity=700_000,
        gateway_env={"MMGW_LOG_FORMAT": "json", "MMGW_LOG_LEVEL": "DEBUG"},
        pod_args={0: ["--log-format", "json"]},
    )
    with deployment:
        yield deployment


def lines(path: Path) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # Envoy's own start-up lines, in its own format
    return found


def wait_for(path: Path, request_id: str, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not (hits := [e for e in lines(path) if e.get("request_id") == request_id]):
        assert time.monotonic() < deadline, f"no line for request {request_id} in {path.name}"
        time.sleep(0.1)
    return hits


def test_a_request_id_is_kept_returned_and_in_every_log_line_for_the_request(
    json_logged: launcher.Deployment,
) -> None:
    d = json_logged
    with httpx.Client(base_url=d.api_url, timeout=30) as api:
        document = yaml.safe_load(EXAMPLE.read_text())
        document["metadata"]["name"] = "ids-mnist"
        api.put(f"{ISVCS}/ids-mnist", json=document).raise_for_status()
        wait_ready(api, "ids-mnist")
    logs = d.data_dir / "logs"
    with httpx.Client(base_url=d.url, timeout=30) as rest:
        # a client's own id is kept and returned; Envoy's access log has it with the model,
        # the variant, the pod and the status
        mine = f"client-{uuid.uuid4()}"
        ok = rest.post(
            "/v2/models/ids-mnist/infer",
            json=samples.sample_request(),
            headers={"x-request-id": mine},
        )
        assert ok.status_code == 200 and ok.headers["x-request-id"] == mine
        [entry] = wait_for(d.access_log_path, mine)
        assert entry["path"] == "/v2/models/ids-mnist/infer" and entry["status"] == 200
        assert entry["variant"].startswith("ids-mnist__isvc-")
        assert entry["pod"] == d.ports.pod_addresses[0] and entry["method"] == "POST"
        assert isinstance(entry["duration_ms"], int)
        # without one, Envoy makes one (a UUID) and returns it
        made = rest.post("/v2/models/ids-mnist/infer", json=samples.sample_request())
        assert uuid.UUID(made.headers["x-request-id"])
        wait_for(d.access_log_path, made.headers["x-request-id"])
        # a request the pod refuses: its line in the pod's log names the request
        bad = f"bad-{uuid.uuid4()}"
        refused = rest.post(
            "/v2/models/ids-mnist/infer",
            json=seed_body(shape=[1, 3]),
            headers={"x-request-id": bad},
        )
        assert refused.status_code == 400 and refused.headers["x-request-id"] == bad
        [pod_line] = wait_for(logs / "pod-0.log", bad)
        assert pod_line["level"] == "INFO" and "INVALID_ARGUMENT" in pod_line["message"]
        assert bad in pod_line["message"] and pod_line["logger"] == "gateway.pod.servicer"
        # a request the gateway refuses (no such model): the gateway's line names it
        unknown = f"unknown-{uuid.uuid4()}"
        missing = rest.post(
            "/v2/models/no-such-model/infer",
            json=samples.sample_request(),
            headers={"x-request-id": unknown},
        )
        assert missing.status_code == 404 and missing.headers["x-request-id"] == unknown
        [gateway_line] = wait_for(logs / "gateway.log", unknown)
        assert "NOT_FOUND" in gateway_line["message"] and gateway_line["level"] == "DEBUG"
        assert wait_for(d.access_log_path, unknown)[0]["status"] == 404
    # native gRPC: the id travels as metadata and comes back in the initial metadata
    with grpc.insecure_channel(f"127.0.0.1:{d.ports.envoy}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        request = v2.ModelInferRequest(model_name="ids-mnist")
        tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 64])
        tensor.contents.fp32_contents.extend(samples.sample_input())
        call_id = f"grpc-{uuid.uuid4()}"
        _, call = stub.ModelInfer.with_call(
            request, metadata=[("mm-vmodel-id", "ids-mnist"), ("x-request-id", call_id)]
        )
        assert dict(call.initial_metadata())["x-request-id"] == call_id
        [entry] = wait_for(d.access_log_path, call_id)
        assert entry["grpc_status"] == "OK" and entry["vmodel"] == "ids-mnist"


def test_the_first_request_for_an_unloaded_model_is_named_in_the_gateway_s_miss_line(
    json_logged: launcher.Deployment,
) -> None:
    """The pod has room for one mnist-svm (700 kB; each predicts 432 kB): with ids-filler
    loaded by a request, ids-miss registers without a proactive load (Standby), and its
    first request waits for its load."""
    d = json_logged
    document = yaml.safe_load(EXAMPLE.read_text())
    with (
        httpx.Client(base_url=d.api_url, timeout=30) as api,
        httpx.Client(base_url=d.url, timeout=60) as rest,
    ):
        document["metadata"]["name"] = "ids-filler"
        api.put(f"{ISVCS}/ids-filler", json=document).raise_for_status()
        wait_ready(api, "ids-filler", timeout=60)
        filled = rest.post("/v2/models/ids-filler/infer", json=samples.sample_request())
        assert filled.status_code == 200
        document["metadata"]["name"] = "ids-miss"
        api.put(f"{ISVCS}/ids-miss", json=document).raise_for_status()
        time.sleep(0.5)  # a proactive load would have started by now: there is no room for one
        state = api.get(f"{ISVCS}/ids-miss").json()["status"]["modelStatus"]["states"]
        assert state["activeModelState"] in ("Pending", "Standby"), state
        miss = f"miss-{uuid.uuid4()}"
        answer = rest.post(
            "/v2/models/ids-miss/infer",
            json=samples.sample_request(),
            headers={"x-request-id": miss},
        )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == miss
    [line] = wait_for(d.data_dir / "logs" / "gateway.log", miss)
    assert "ids-miss__isvc-" in line["message"] and "not loaded" in line["message"]
