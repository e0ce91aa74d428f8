"""The official Triton gRPC client (tritonclient.grpc) against Envoy :port: the seed
sklearn model, an ONNX graph deployed here, and an unknown model.

tritonclient sends ``raw_input_contents`` and no ``mm-vmodel-id`` header (the gateway
reads the model name from the gRPC body) and reads ``raw_output_contents`` back.

The client runs in the test's own process, beside the gateway's stubs: both
define the ``inference.*`` messages, and ours live in their own descriptor pool
(gateway.protopool) so that the two can be imported together.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway.tools import launcher, samples

from ..pod import graphs
from .conftest import ISVCS, wait_ready

ONNX_NAME = "triton-onnx-dense"
ROWS = np.array([[1, 2, 3, 4], [-1, 0.5, 2, -3], [0.25, -4, 1, 2]], np.float32)


def _tensors(items: Any) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]


def _call(client: tc.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    kind, model = call["kind"], call.get("model")
    if kind == "server":
        return {
            "live": client.is_server_live(client_timeout=30),
            "ready": client.is_server_ready(client_timeout=30),
        }
    if kind == "model":
        meta = client.get_model_metadata(model, client_timeout=30)
        return {
            "ready": client.is_model_ready(model, client_timeout=30),
            "name": meta.name,
            "platform": meta.platform,
            "inputs": _tensors(meta.inputs),
            "outputs": _tensors(meta.outputs),
        }
    data = np.array(call["data"], dtype=np.float32).reshape(call["shape"])
    tensor = tc.InferInput(call["input"], list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer(model, [tensor], client_timeout=30)
    response = result.get_response()
    out = result.as_numpy(call["output"])
    return {
        "model_name": response.model_name,
        "outputs": _tensors(response.outputs),
        "raw": len(response.raw_output_contents),
        "dtype": str(out.dtype),
        "value": out.tolist(),
    }


def triton(deployment: launcher.Deployment, *calls: dict[str, Any]) -> list[dict[str, Any]]:
    """Each call's {"ok": result} or {"error": {"status", "message"}}."""
    client = tc.InferenceServerClient(url=f"127.0.0.1:{deployment.ports.envoy}")
    results: list[dict[str, Any]] = []
    try:
        for call in calls:
            try:
                results.append({"ok": _call(client, call)})
            except InferenceServerException as err:
                results.append({"error": {"status": err.status(), "message": err.message()}})
    finally:
        client.close()
    return results


def test_tritonclient_and_the_gateway_stubs_share_one_process() -> None:
    # Same wire format, separate pools: triton's request parses as ours and back.
    ours = v2.ModelInferRequest.FromString(
        tc.service_pb2.ModelInferRequest(
            model_name="m", raw_input_contents=[b"\x01"]
        ).SerializeToString()
    )
    assert (ours.model_name, list(ours.raw_input_contents)) == ("m", [b"\x01"])
    assert type(ours) is not tc.service_pb2.ModelInferRequest
    assert v2.DESCRIPTOR.pool is not tc.service_pb2.DESCRIPTOR.pool
    # Here the gateway's stubs came first (conftest); a custom runtime may import tritonclient first.
    other_order = "import tritonclient.grpc; from gateway._proto import grpc_predict_v2_pb2, model_runtime_pb2"
    done = subprocess.run(
        [sys.executable, "-c", other_order], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def _isvc(name: str, model_format: str, path: str) -> dict[str, object]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": "modelmesh-serving",
            "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"},
        },
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": model_format},
                    "storage": {
                        "parameters": {"type": "pvc", "name": "my-models-pvc"},
                        "path": path,
                    },
                }
            }
        },
    }


@pytest.fixture(scope="module")
def onnx_model(deployment: launcher.Deployment) -> Iterator[Path]:
    """The dense ONNX graph as an InferenceService, ready; deleted afterwards."""
    onnx_file = graphs.dense_onnx(deployment.data_dir / "models" / ONNX_NAME / "dense.onnx")
    with httpx.Client(base_url=deployment.api_url, timeout=30) as api:
        try:
            api.put(
                f"{ISVCS}/{ONNX_NAME}", json=_isvc(ONNX_NAME, "onnx", ONNX_NAME)
            ).raise_for_status()
            item = wait_ready(api, ONNX_NAME)
            assert item["status"]["conditions"][0]["status"] == "True", item["status"]
            yield onnx_file
        finally:
            assert api.delete(f"{ISVCS}/{ONNX_NAME}").status_code in (200, 404)


def test_sklearn_seed(deployment: launcher.Deployment) -> None:
    server, model, infer = triton(
        deployment,
        {"kind": "server"},
        {"kind": "model", "model": "sklearn-mnist"},
        {
            "kind": "infer",
            "model": "sklearn-mnist",
            "input": "predict",
            "output": "predict",
            "shape": [1, 64],
            "data": samples.sample_input(),
        },
    )
    assert server == {"ok": {"live": True, "ready": True}}
    model = model["ok"]
    assert model["ready"] is True
    assert model["name"].startswith("sklearn-mnist__isvc-")
    assert model["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 64]}]
    assert model["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}]
    infer = infer["ok"]
    assert infer["model_name"] == model["name"]
    assert infer["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [1, 1]}]
    assert infer["raw"] == 1  # answered as raw_output_contents
    assert (infer["dtype"], infer["value"]) == ("int64", [[8]])


def test_onnx(deployment: launcher.Deployment, onnx_model: Path) -> None:
    model, infer = triton(
        deployment,
        {"kind": "model", "model": ONNX_NAME},
        {
            "kind": "infer",
            "model": ONNX_NAME,
            "input": "x",
            "output": "y",
            "shape": [3, 4],
            "data": ROWS.ravel().tolist(),
        },
    )
    model = model["ok"]
    assert model["ready"] is True
    assert model["name"].startswith(f"{ONNX_NAME}__isvc-")
    assert model["platform"] == "onnx"
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert model["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    infer = infer["ok"]
    assert infer["model_name"] == model["name"]
    assert infer["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [3, 3]}]
    assert infer["raw"] == 1
    session = onnxruntime.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": ROWS})[0]
    assert infer["dtype"] == "float32"
    np.testing.assert_allclose(np.array(infer["value"], np.float32), expected, rtol=1e-6)


def test_an_unknown_model_is_not_found(deployment: launcher.Deployment) -> None:
    (infer,) = triton(
        deployment,
        {
            "kind": "infer",
            "model": "no-such-model",
            "input": "predict",
            "output": "predict",
            "shape": [1, 64],
            "data": samples.sample_input(),
        },
    )
    assert "error" in infer, infer
    assert infer["error"]["status"] == "StatusCode.NOT_FOUND", infer
