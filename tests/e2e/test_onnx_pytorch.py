"""An ONNX graph and a TorchScript module through the whole deployment: apply one
InferenceService per format, infer through Envoy (REST and native gRPC), compare with
onnxruntime and torch run here, read the metadata, delete."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime
import pytest
import torch
import tritonclient.http as triton

from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.pod import tensors
from gateway.pod.model import Tensor
from gateway.tools import launcher

from ..pod import graphs
from .conftest import ISVCS, curl_json, inference_service, wait_ready

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)

ONNX_NAME = "onnx-dense"
TORCH_NAME = "pytorch-dense"
ROWS = np.array([[1, 2, 3, 4], [-1, 0.5, 2, -3], [0.25, -4, 1, 2]], np.float32)
SIDECAR = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
}


@pytest.fixture(scope="module")
def models(deployment: launcher.Deployment) -> Iterator[dict[str, Path]]:
    """Both InferenceServices, ready; the model files by name. Deleted afterwards."""
    root = deployment.data_dir / "models"
    onnx_file = graphs.dense_onnx(root / "onnx-dense" / "dense.onnx")  # served as a folder
    torch_file = graphs.save_script(graphs.Dense(), root / "pytorch-dense" / "model.pt")
    (root / "pytorch-dense" / "model.json").write_text(json.dumps(SIDECAR))
    with httpx.Client(base_url=deployment.api_url, timeout=30) as api:
        try:
            onnx_isvc = inference_service(ONNX_NAME, "onnx", "onnx-dense")
            torch_isvc = inference_service(TORCH_NAME, "pytorch", "pytorch-dense/model.pt")
            api.put(f"{ISVCS}/{ONNX_NAME}", json=onnx_isvc).raise_for_status()
            api.put(f"{ISVCS}/{TORCH_NAME}", json=torch_isvc).raise_for_status()
            for name in (ONNX_NAME, TORCH_NAME):
                item = wait_ready(api, name)
                assert item["status"]["conditions"][0]["status"] == "True", item["status"]
            yield {ONNX_NAME: onnx_file, TORCH_NAME: torch_file}
        finally:
            for name in (ONNX_NAME, TORCH_NAME):
                assert api.delete(f"{ISVCS}/{name}").status_code in (200, 404)


def _expected(models: dict[str, Path], name: str) -> np.ndarray:
    if name == ONNX_NAME:
        session = onnxruntime.InferenceSession(
            str(models[name]), providers=["CPUExecutionProvider"]
        )
        return session.run(None, {"x": ROWS})[0]
    with torch.inference_mode():
        return torch.jit.load(str(models[name]))(torch.from_numpy(ROWS)).numpy()


@pytest.mark.parametrize(
    ("name", "input_name", "output_name"),
    [(ONNX_NAME, "x", "y"), (TORCH_NAME, "features", "scores")],
)
def test_rest_infer_and_metadata(
    models: dict[str, Path], rest: httpx.Client, name: str, input_name: str, output_name: str
) -> None:
    body = {
        "inputs": [
            {
                "name": input_name,
                "shape": [3, 4],
                "datatype": "FP32",
                "contents": {"fp32_contents": ROWS.ravel().tolist()},
            }
        ]
    }
    response = rest.post(f"/v2/models/{name}/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["modelName"].startswith(f"{name}__isvc-")
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        output_name,
        "FP32",
        ["3", "3"],
    )
    got = np.array(output["contents"]["fp32Contents"], np.float32).reshape(3, 3)
    np.testing.assert_allclose(got, _expected(models, name), rtol=1e-6)

    metadata = rest.get(f"/v2/models/{name}").json()
    assert metadata["platform"] == ("onnx" if name == ONNX_NAME else "pytorch")
    assert metadata["inputs"] == [{"name": input_name, "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": output_name, "datatype": "FP32", "shape": [-1, 3]}]


@pytest.mark.parametrize("name", [ONNX_NAME, TORCH_NAME])
def test_grpc_infer(
    models: dict[str, Path], stub: v2_grpc.GRPCInferenceServiceStub, name: str
) -> None:
    request = tensors.make_request(name, [Tensor.of("input-0", ROWS)], raw=True)  # any name
    (out,) = tensors.decode_response(stub.ModelInfer(request, timeout=30))
    assert out.datatype == "FP32" and out.shape == (3, 3)
    np.testing.assert_allclose(out.array, _expected(models, name), rtol=1e-6)


@pytest.mark.parametrize("name", [ONNX_NAME, TORCH_NAME])
def test_a_wrong_shape_is_invalid_argument(
    models: dict[str, Path], stub: v2_grpc.GRPCInferenceServiceStub, name: str
) -> None:
    request = tensors.make_request(name, [Tensor.of("x", np.zeros((1, 5), np.float32))])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shape [1, 5] given, model expects [-1, 4]" in err.value.details()


@pytest.mark.parametrize(("name", "input_name"), [(ONNX_NAME, "x"), (TORCH_NAME, "features")])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http(
    models: dict[str, Path],
    deployment: launcher.Deployment,
    name: str,
    input_name: str,
    binary: bool,
) -> None:
    client = triton.InferenceServerClient(deployment.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput(input_name, list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS, binary_data=binary)
        result = client.infer(name, [tensor])  # every output, in binary (the client's default)
        metadata = client.get_model_metadata(name)
    finally:
        client.close()
    (output,) = result.get_response()["outputs"]
    np.testing.assert_allclose(result.as_numpy(output["name"]), _expected(models, name), rtol=1e-6)
    assert metadata["inputs"] == [{"name": input_name, "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize(("name", "input_name"), [(ONNX_NAME, "x"), (TORCH_NAME, "features")])
def test_curl_with_the_kserve_docs_body(
    models: dict[str, Path], deployment: launcher.Deployment, name: str, input_name: str
) -> None:
    body = {
        "inputs": [{"name": input_name, "shape": [3, 4], "datatype": "FP32", "data": ROWS.tolist()}]
    }
    status, answer = curl_json(f"{deployment.url}/v2/models/{name}/infer", body)
    assert status == 200, answer
    (output,) = answer["outputs"]
    assert (output["datatype"], output["shape"]) == ("FP32", [3, 3])
    np.testing.assert_allclose(
        np.array(output["data"]).reshape(3, 3), _expected(models, name), rtol=1e-6
    )


def test_a_pytorch_model_in_tritons_layout(
    deployment: launcher.Deployment, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    """The FVT's CIFAR case: config.pbtxt + 1/model.pt; the config's INPUT__0 [-1,3,32,32] and
    OUTPUT__0 in metadata and answers, and a [1,3,16,64] image refused as INVALID_ARGUMENT."""
    root = deployment.data_dir / "models"
    source = graphs.save_script(graphs.Cifar(), root / "cifar-src" / "model.pt")
    graphs.triton_layout(root / "pytorch-cifar", graphs.CIFAR_CONFIG, {1: source})
    with httpx.Client(base_url=deployment.api_url, timeout=30) as api:
        api.put(
            f"{ISVCS}/pytorch-cifar",
            json=inference_service("pytorch-cifar", "pytorch", "pytorch-cifar"),
        ).raise_for_status()
        try:
            item = wait_ready(api, "pytorch-cifar")
            assert item["status"]["conditions"][0]["status"] == "True", item["status"]
            metadata = httpx.get(f"{deployment.url}/v2/models/pytorch-cifar", timeout=30).json()
            assert metadata["inputs"] == [
                {"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 3, 32, 32]}
            ]
            assert metadata["outputs"] == [
                {"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 10]}
            ]
            images = np.zeros((1, 3, 32, 32), np.float32)
            request = tensors.make_request(
                "pytorch-cifar", [Tensor.of("INPUT__0", images)], raw=True
            )
            (out,) = tensors.decode_response(stub.ModelInfer(request, timeout=30))
            assert (out.name, out.shape) == ("OUTPUT__0", (1, 10))
            wrong = tensors.make_request(
                "pytorch-cifar",
                [Tensor.of("INPUT__0", np.zeros((1, 3, 16, 64), np.float32))],
                raw=True,
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(wrong, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (
                "shape [1, 3, 16, 64] given, model expects [-1, 3, 32, 32]" in err.value.details()
            )
        finally:
            assert api.delete(f"{ISVCS}/pytorch-cifar").status_code in (200, 404)


def test_storage_schema_path_declares_a_pytorch_models_tensors(
    deployment: launcher.Deployment,
) -> None:
    """ModelMesh's storage.schemaPath, in the model's PVC: the metadata and the names it gives."""
    root = deployment.data_dir / "models"
    graphs.save_script(graphs.Dense(), root / "schema-dense" / "model.pt")
    (root / "schemas").mkdir(exist_ok=True)
    (root / "schemas" / "dense.json").write_text(json.dumps(SIDECAR))
    isvc = inference_service("pytorch-schema", "pytorch", "schema-dense/model.pt")
    isvc["spec"]["predictor"]["model"]["storage"]["schemaPath"] = "schemas/dense.json"  # type: ignore[index]
    with httpx.Client(base_url=deployment.api_url, timeout=30) as api:
        api.put(f"{ISVCS}/pytorch-schema", json=isvc).raise_for_status()
        try:
            item = wait_ready(api, "pytorch-schema")
            assert item["status"]["conditions"][0]["status"] == "True", item["status"]
            status, answer = curl_json(
                f"{deployment.url}/v2/models/pytorch-schema/infer",
                {
                    "inputs": [
                        {
                            "name": "features",
                            "shape": [3, 4],
                            "datatype": "FP32",
                            "data": ROWS.tolist(),
                        }
                    ]
                },
            )
            assert status == 200, answer
            assert [o["name"] for o in answer["outputs"]] == ["scores"]
            escape = dict(isvc)
            escape["spec"] = json.loads(json.dumps(isvc["spec"]))
            escape["spec"]["predictor"]["model"]["storage"]["schemaPath"] = "../outside.json"
            refused = api.put(f"{ISVCS}/pytorch-schema", json=escape).json()
            (condition,) = refused["status"]["conditions"]
            assert condition["status"] == "False"
            assert "schema path '../outside.json' leaves PVC" in condition["message"]
        finally:
            assert api.delete(f"{ISVCS}/pytorch-schema").status_code in (200, 404)
