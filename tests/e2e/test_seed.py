"""The seed's request and every other V2 endpoint, through Envoy :port, REST and native gRPC."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.tools import samples
from gateway.tools.launcher import Deployment

from .conftest import ISVCS, seed_body

CONCRETE = re.compile(r"^sklearn-mnist__isvc-[0-9a-f]{10}$")


def infer_request(name: str = "sklearn-mnist") -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=name)
    tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend(samples.sample_input())
    return request


def test_the_seed_curl_answers_8(deployment: Deployment, api: httpx.Client) -> None:
    body = (
        '{"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32", "contents": {"fp32_contents": ['
        + ", ".join(f"{v:.1f}" for v in samples.sample_input())
        + "]}}]}"
    )
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-i",
            "-X",
            "POST",
            "-k",
            f"{deployment.url}/v2/models/sklearn-mnist/infer",
            "-d",
            body,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    head, _, payload = result.stdout.partition("\n\n")  # text mode folds \r\n
    assert head.startswith("HTTP/1.1 200 OK")
    assert "grpc-status" not in head.lower() and "grpc-message" not in head.lower()
    concrete = api.get(f"{ISVCS}/sklearn-mnist").json()
    model_id = re.search(r'"modelName":"([^"]+)"', payload).group(1)
    assert CONCRETE.match(model_id)
    assert payload == (
        '{"modelName":"' + model_id + '","outputs":[{"name":"predict","datatype":"INT64",'
        '"shape":["1","1"],"contents":{"int64Contents":["8"]}}]}'
    )
    assert concrete["status"]["modelStatus"]["states"]["activeModelState"] == "Loaded"


def test_rest_versions_path(rest: httpx.Client) -> None:
    response = rest.post("/v2/models/sklearn-mnist/versions/1/infer", json=seed_body())
    assert response.status_code == 200
    assert response.json()["outputs"][0]["contents"]["int64Contents"] == ["8"]


@pytest.mark.parametrize(
    "metadata",
    [(("mm-vmodel-id", "sklearn-mnist"),), (), (("mm-model-id", "CONCRETE"),)],
    ids=["vmodel-header", "body-only", "concrete-id-header"],
)
def test_native_grpc(
    stub: v2_grpc.GRPCInferenceServiceStub,
    rest: httpx.Client,
    metadata: tuple[tuple[str, str], ...],
) -> None:
    concrete = rest.get("/v2/models/sklearn-mnist").json()["name"]
    metadata = tuple((k, concrete if v == "CONCRETE" else v) for k, v in metadata)
    response = stub.ModelInfer(infer_request(), metadata=metadata, timeout=30)
    assert response.model_name == concrete
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("predict", "INT64", [1, 1])
    assert list(output.contents.int64_contents) == [8]


def test_rest_metadata_ready_and_server_endpoints(rest: httpx.Client) -> None:
    metadata = rest.get("/v2/models/sklearn-mnist").json()
    assert CONCRETE.match(metadata["name"])
    # GETs carry no body to tell the forms apart: they answer in the Open Inference
    # Protocol's JSON (numeric shapes, versions), which the standard clients read.
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}]
    assert (metadata["platform"], metadata["versions"]) == ("sklearn", ["1"])
    assert rest.get("/v2/models/sklearn-mnist/versions/1").status_code == 200
    assert rest.get("/v2/models/sklearn-mnist/ready").json() == {
        "name": metadata["name"],
        "ready": True,
    }
    assert rest.get("/v2/health/live").json() == {"live": True}
    assert rest.get("/v2/health/ready").json() == {"ready": True}
    server = rest.get("/v2").json()
    assert server["name"] and server["version"]


def test_grpc_metadata_ready_and_server_endpoints(stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ModelReady(v2.ModelReadyRequest(name="sklearn-mnist"), timeout=30).ready
    metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name="sklearn-mnist"), timeout=30)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("input-0", "FP32", [-1, 64])
    ]
    assert stub.ServerLive(v2.ServerLiveRequest(), timeout=30).live
    assert stub.ServerReady(v2.ServerReadyRequest(), timeout=30).ready
    assert stub.ServerMetadata(v2.ServerMetadataRequest(), timeout=30).name


def test_a_client_cannot_pick_the_upstream(rest: httpx.Client) -> None:
    # ext_proc overwrites x-mmgw-upstream: this would otherwise send the request to port 1.
    response = rest.post(
        "/v2/models/sklearn-mnist/infer",
        json=seed_body(),
        headers={"x-mmgw-upstream": "127.0.0.1:1"},
    )
    assert response.status_code == 200
