"""The Open Inference Protocol's REST form through Envoy :8008, beside the seed's transcoded
form on the same URLs: curl with the KServe docs' bodies, tritonclient.http unmodified (binary,
its default, and JSON), the KServe SDK's REST wire format, the GETs, the repository index, and
the errors in the form of the request.

The KServe Python SDK itself is not installed: kserve 0.21 pins protobuf<7 and grpcio-tools
1.81, and our stubs need protobuf>=7.35 (its REST client's body is checked here instead).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from gateway.tools import samples
from gateway.tools.launcher import Deployment

from .conftest import seed_body

CONCRETE = re.compile(r"^sklearn-mnist__isvc-[0-9a-f]{10}$")
DIGIT = np.array([samples.sample_input()], dtype=np.float32)  # the seed's 8


def oip_body(**overrides: Any) -> dict[str, Any]:
    """The KServe docs' V2 REST request for the seed's digit."""
    body = samples.sample_request(oip=True)
    body["inputs"][0].update(overrides)
    return body


@pytest.fixture(scope="module")
def client(deployment: Deployment) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(deployment.url.removeprefix("http://"))
    yield connection
    connection.close()


def curl(deployment: Deployment, path: str, body: str) -> tuple[str, str]:
    result = subprocess.run(
        ["curl", "-sS", "-i", "-X", "POST", f"{deployment.url}{path}", "-d", body],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    head, _, payload = result.stdout.partition("\n\n")
    return head, payload


def test_the_kserve_docs_curl_answers_8_in_the_oip_form(deployment: Deployment) -> None:
    head, payload = curl(deployment, "/v2/models/sklearn-mnist/infer", json.dumps(oip_body()))
    assert head.startswith("HTTP/1.1 200 OK"), head + payload
    assert "content-type: application/json" in head.lower()
    # ModelMesh's functional tests expect these two strings in the answer
    assert '"model_name":"sklearn-mnist__isvc-' in payload and '"data":[8]' in payload
    answer = json.loads(payload)
    assert CONCRETE.match(answer["model_name"])
    assert answer["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [1, 1], "data": [8]}
    ]


def test_both_forms_answer_on_the_same_url_each_in_its_own_form(rest: httpx.Client) -> None:
    seed = rest.post("/v2/models/sklearn-mnist/infer", json=seed_body()).json()
    assert seed["outputs"][0]["contents"] == {"int64Contents": ["8"]}
    nested = oip_body(data=[DIGIT[0].reshape(8, 8).tolist()], shape=[1, 64])
    oip = rest.post("/v2/models/sklearn-mnist/versions/1/infer", json=nested).json()
    assert oip["model_name"] == seed["modelName"] and oip["model_version"] == "1"
    assert oip["outputs"][0]["data"] == [8]


def test_the_kserve_sdk_rest_body(rest: httpx.Client) -> None:
    """kserve.InferRequest.to_rest(): an id, parameters of any JSON type, and requested
    outputs; the id comes back, and the outputs named."""
    body = {
        "id": "sdk-request-1",
        "parameters": {"content_type": "np", "priority": 1, "flags": {"a": [1, 2]}},
        "inputs": [
            {
                "name": "predict",
                "shape": [1, 64],
                "datatype": "FP32",
                "data": DIGIT[0].tolist(),
                "parameters": {"content_type": "np"},
            }
        ],
        "outputs": [{"name": "predict"}],
    }
    response = rest.post(
        "/v2/models/sklearn-mnist/infer", json=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "sdk-request-1"
    assert [o["name"] for o in answer["outputs"]] == ["predict"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_infers(client: triton.InferenceServerClient, binary: bool) -> None:
    tensor = triton.InferInput("predict", [1, 64], "FP32")
    tensor.set_data_from_numpy(DIGIT, binary_data=binary)
    outputs = None if binary else [triton.InferRequestedOutput("predict", binary_data=False)]
    result = client.infer("sklearn-mnist", [tensor], outputs=outputs, request_id="t-1")
    np.testing.assert_array_equal(result.as_numpy("predict"), [[8]])
    response = result.get_response()
    assert response["id"] == "t-1" and CONCRETE.match(response["model_name"])
    (output,) = response["outputs"]
    assert ("parameters" in output) is binary and ("data" in output) is not binary


def test_tritonclient_http_metadata_ready_health_and_index(
    client: triton.InferenceServerClient,
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sklearn-mnist")
    metadata = client.get_model_metadata("sklearn-mnist")
    assert CONCRETE.match(metadata["name"]) and metadata["platform"] == "sklearn"
    (spec,) = metadata["inputs"]
    assert spec == {"name": "input-0", "datatype": "FP32", "shape": [-1, 64]}
    np.zeros([1 if d == -1 else d for d in spec["shape"]], np.float32)  # numbers, not strings
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    index = client.get_model_repository_index()
    assert {"name": "sklearn-mnist", "version": "1", "state": "READY", "reason": ""} in index


def test_the_repository_index_filters_ready_and_refuses_a_bad_body(rest: httpx.Client) -> None:
    ready = rest.post("/v2/repository/index", json={"ready": True})
    assert ready.status_code == 200
    assert all(entry["state"] == "READY" for entry in ready.json())
    bad = rest.post("/v2/repository/index", content=b"[1]")
    assert bad.status_code == 400 and "JSON object" in bad.json()["error"]


def test_tritonclient_http_errors_name_the_problem(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [_input(DIGIT)])
    assert unknown.value.status() == "404"
    assert "model 'no-such-model' is not registered" in unknown.value.message()
    with pytest.raises(InferenceServerException) as shape:
        client.infer("sklearn-mnist", [_input(DIGIT[:, :63])])
    assert shape.value.status() == "400"
    assert "shape [1, 63] given, model expects [-1, 64]" in shape.value.message()


def _input(array: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("predict", list(array.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(array))
    return tensor


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (oip_body(data=[1.0] * 63), "shape [1, 64] needs 64 elements, got 63"),
        (oip_body(data=[[1.0] * 64, [1.0]]), "nested arrays of uneven length"),
        (oip_body(data=["x"] * 64), "FP32 data must be JSON numbers"),
        # out of range for the datatype sent; the FP32 model's datatype is named first (the range
        # message itself: tests/pod/test_oip.py)
        (oip_body(datatype="INT8", data=[300] * 64), "datatype 'INT8' given, model expects 'FP32'"),
        (oip_body(datatype="UINT8", data=[-1] * 64), "datatype 'UINT8' given, model expects"),
        (oip_body(shape=[1, -64]), "has a negative dimension"),
        (oip_body(shape=[1, 10**12]), "needs 1000000000000 elements, got 64"),
        (
            oip_body(contents={"fp32_contents": [0.0] * 64}),
            "has both 'data' and 'contents'",
        ),
        (oip_body(datatype="INT32", data=[1] * 64), "datatype 'INT32' given, model expects 'FP32'"),
    ],
)
def test_bad_oip_requests_get_400_in_the_oip_form(
    rest: httpx.Client, body: dict[str, Any], message: str
) -> None:
    response = rest.post("/v2/models/sklearn-mnist/infer", json=body)
    assert response.status_code == 400, response.text
    assert response.json().keys() == {"error"} and message in response.json()["error"]


def _binary(document: dict[str, Any], binary: bytes, header_length: int | None = None) -> bytes:
    header = json.dumps(document).encode()
    return header + binary, header_length if header_length is not None else len(header)


@pytest.mark.parametrize(
    ("size", "binary", "header_length", "message"),
    [
        (512, bytes(256), None, "runs past the end of the body"),
        (256, bytes(300), None, "add up to 256 bytes"),
        (256, bytes(256), 100_000, "but the body has"),
    ],
)
def test_bad_binary_requests_get_400(
    rest: httpx.Client, size: int, binary: bytes, header_length: int | None, message: str
) -> None:
    document = oip_body(parameters={"binary_data_size": size})
    del document["inputs"][0]["data"]
    body, length = _binary(document, binary, header_length)
    response = rest.post(
        "/v2/models/sklearn-mnist/infer",
        content=body,
        headers={"inference-header-content-length": str(length)},
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_invalid_utf8_gets_400(rest: httpx.Client) -> None:
    body = b'{"inputs": [{"name": "\xff\xfe", "data": [1], "shape": [1], "datatype": "FP32"}]}'
    response = rest.post("/v2/models/sklearn-mnist/infer", content=body)
    assert response.status_code == 400 and "not valid UTF-8" in response.json()["error"]


def test_gateway_errors_come_in_the_form_of_the_request(rest: httpx.Client) -> None:
    oip = rest.post("/v2/models/no-such-model/infer", json=oip_body())
    seed = rest.post("/v2/models/no-such-model/infer", json=seed_body())
    assert oip.status_code == seed.status_code == 404
    assert oip.json() == {"error": "model 'no-such-model' is not registered"}
    assert seed.json() == {"code": 5, "message": "model 'no-such-model' is not registered"}
    assert rest.get("/v2/models/no-such-model").json() == {
        "error": "model 'no-such-model' is not registered"
    }


def test_a_clients_own_form_header_is_overwritten(rest: httpx.Client) -> None:
    """x-mmgw-form is the Lua filter's verdict, never the client's: a seed request that claims
    to be OIP is transcoded, and an OIP request that claims otherwise is not."""
    seed = rest.post(
        "/v2/models/sklearn-mnist/infer", json=seed_body(), headers={"x-mmgw-form": "oip"}
    )
    assert seed.json()["outputs"][0]["contents"] == {"int64Contents": ["8"]}
    oip = rest.post(
        "/v2/models/sklearn-mnist/infer", json=oip_body(), headers={"x-mmgw-form": "protobuf"}
    )
    assert oip.json()["outputs"][0]["data"] == [8]
