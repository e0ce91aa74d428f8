"""Every bad input gets a clear answer, and the next good request succeeds."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.tools import launcher

from .conftest import seed_body
from .test_seed import infer_request


@pytest.fixture(autouse=True)
def next_request_succeeds(rest: httpx.Client) -> Iterator[None]:
    yield
    response = rest.post("/v2/models/sklearn-mnist/infer", json=seed_body())
    assert response.status_code == 200, response.text


def test_unknown_model_rest(rest: httpx.Client) -> None:
    response = rest.post("/v2/models/no-such-model/infer", json=seed_body())
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"code": 5, "message": "model 'no-such-model' is not registered"}
    assert rest.get("/v2/models/no-such-model").status_code == 404


def test_unknown_model_grpc(stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    for metadata in ((("mm-vmodel-id", "no-such-model"),), ()):
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(infer_request("no-such-model"), metadata=metadata, timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "model 'no-such-model' is not registered"


def test_malformed_json(rest: httpx.Client) -> None:
    response = rest.post("/v2/models/sklearn-mnist/infer", content=b'{"inputs": [')
    assert response.status_code == 400
    assert response.json()["code"] == 3 and response.json()["message"]


def test_wrong_datatype(rest: httpx.Client, stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    body = seed_body(datatype="INT32", contents={"int_contents": [1] * 64})
    response = rest.post("/v2/models/sklearn-mnist/infer", json=body)
    assert response.status_code == 400
    assert "model expects 'FP32'" in response.json()["message"]
    request = infer_request()
    request.inputs[0].datatype = "FP64"
    request.inputs[0].contents.fp64_contents.extend(request.inputs[0].contents.fp32_contents)
    request.inputs[0].contents.ClearField("fp32_contents")
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model expects 'FP32'" in info.value.details()


def test_a_wrong_datatype_is_reported_before_a_wrong_element_count(
    rest: httpx.Client, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    """ModelMesh's FVT case: INT32 [0, 1, 2, 3] to the FP32 model. The count is wrong too;
    the datatype is what Triton and the FVT report, in all three forms."""
    expected = "input 'predict': datatype 'INT32' given, model expects 'FP32'"
    seed = seed_body(datatype="INT32", shape=[1, 64], contents={"int_contents": [0, 1, 2, 3]})
    response = rest.post("/v2/models/sklearn-mnist/infer", json=seed)
    assert (response.status_code, response.json()["message"]) == (400, expected)
    oip = {
        "inputs": [{"name": "predict", "shape": [1, 64], "datatype": "INT32", "data": [0, 1, 2, 3]}]
    }
    response = rest.post("/v2/models/sklearn-mnist/infer", json=oip)
    assert (response.status_code, response.json()["error"]) == (400, expected)
    request = v2.ModelInferRequest(model_name="sklearn-mnist")
    tensor = request.inputs.add(name="predict", datatype="INT32", shape=[1, 64])
    tensor.contents.int_contents.extend([0, 1, 2, 3])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, expected)


def test_an_undecodable_grpc_message_is_invalid_argument(deployment: launcher.Deployment) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{deployment.ports.envoy}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff", metadata=(("mm-vmodel-id", "sklearn-mnist"),), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in info.value.details()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_400(rest: httpx.Client, value: str) -> None:
    """A client error (scikit-learn's SVC takes finite numbers only), in both REST forms."""
    pixels: list[object] = [0.0] * 63
    seed = seed_body(contents={"fp32_contents": [value, *pixels]})
    response = rest.post("/v2/models/sklearn-mnist/infer", json=seed)
    assert response.status_code == 400 and "NaN or infinite values" in response.json()["message"]
    oip = (
        '{"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32", "data": ['
        + ", ".join([value, *map(str, pixels)])
        + "]}]}"
    )
    response = rest.post("/v2/models/sklearn-mnist/infer", content=oip)
    assert response.status_code == 400 and "NaN or infinite values" in response.json()["error"]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (
            (("mm-vmodel-id", "sklearn-mnist"), ("mm-model-id", "sklearn-mnist")),
            "must include only one of model id and vmodel id",
        ),
        ((("mm-vmodel-id", ""),), "provided vmodel-id header must be non-empty"),
        ((("mm-model-id", ""),), "provided model-id header must be non-empty"),
    ],
    ids=["both", "empty-vmodel-id", "empty-model-id"],
)
def test_model_id_headers_as_modelmesh_checks_them(
    stub: v2_grpc.GRPCInferenceServiceStub, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(infer_request(), metadata=metadata, timeout=30)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


@pytest.mark.parametrize(
    "tensor",
    [
        {"shape": [1, 63], "contents": {"fp32_contents": [1.0] * 63}},
        {"shape": [64], "contents": {"fp32_contents": [1.0] * 64}},
        {"shape": [1, 64], "contents": {"fp32_contents": [1.0] * 10}},
    ],
    ids=["feature-count", "rank", "element-count"],
)
def test_wrong_shape(rest: httpx.Client, tensor: dict[str, object]) -> None:
    response = rest.post("/v2/models/sklearn-mnist/infer", json=seed_body(**tensor))
    assert response.status_code == 400
    message = response.json()["message"]
    assert "[-1, 64]" in message or "needs 64 elements" in message or "64" in message


def test_body_over_the_limit_is_413(rest: httpx.Client) -> None:
    huge = (
        b'{"inputs": [{"name": "x", "contents": {"fp32_contents": ['
        + b"1.0," * (5 << 20)
        + b"1.0]}}]}"
    )
    response = rest.post("/v2/models/sklearn-mnist/infer", content=huge)
    assert response.status_code == 413
    assert response.json()["code"] == 8


def test_unknown_paths(rest: httpx.Client) -> None:
    for path in (
        "/",
        "/v1/models/sklearn-mnist:predict",
        "/v2/models/sklearn-mnist/explain",
        "/v2/repository/models/sklearn-mnist/load",  # only the repository's index is served
    ):
        response = rest.post(path, json={})
        assert response.status_code == 404, path
        if path.startswith("/v1/"):  # OpenAI's API's paths: its error JSON
            assert "serves KServe V2 under /v2" in response.json()["error"]["message"], path
        else:
            assert response.json()["message"], path


def test_unknown_grpc_method(deployment: launcher.Deployment) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{deployment.ports.envoy}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/RepositoryIndex")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=30)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
