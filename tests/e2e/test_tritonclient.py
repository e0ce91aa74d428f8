"""The official Triton gRPC client (tritonclient.grpc) against Envoy :port: the seed
sklearn model, an ONNX graph deployed here, and an unknown model.

tritonclient sends ``raw_input_contents`` and no ``mm-vmodel-id`` header (the gateway
reads the model name from the gRPC body) and reads ``raw_output_contents`` back.

The client runs in a subprocess: tritonclient's ``grpc_service.proto`` and the gateway's
``gateway/_proto/grpc_predict_v2.proto`` both define ``inference.*`` messages, and
protobuf's default descriptor pool refuses the second file in one process
("duplicate symbol 'inference.ServerLiveRequest'"); the e2e conftest imports the gateway's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime
import pytest

from gateway import launcher, samples

from ..pod import graphs
from .conftest import ISVCS, wait_ready

ONNX_NAME = "triton-onnx-dense"
ROWS = np.array([[1, 2, 3, 4], [-1, 0.5, 2, -3], [0.25, -4, 1, 2]], np.float32)

# Reads {"url", "calls": [...]} as JSON from argv[1], prints one JSON result per call.
CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

spec = json.loads(sys.argv[1])
client = tc.InferenceServerClient(url=spec["url"])

def tensors(items):
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

def run(call):
    kind, model = call["kind"], call.get("model")
    if kind == "server":
        return {"live": client.is_server_live(client_timeout=30),
                "ready": client.is_server_ready(client_timeout=30)}
    if kind == "model":
        meta = client.get_model_metadata(model, client_timeout=30)
        return {"ready": client.is_model_ready(model, client_timeout=30),
                "name": meta.name, "platform": meta.platform,
                "inputs": tensors(meta.inputs), "outputs": tensors(meta.outputs)}
    if kind == "infer":
        data = np.array(call["data"], dtype=np.float32).reshape(call["shape"])
        tensor = tc.InferInput(call["input"], list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer(model, [tensor], client_timeout=30)
        response = result.get_response()
        out = result.as_numpy(call["output"])
        return {"model_name": response.model_name,
                "outputs": tensors(response.outputs),
                "raw": len(response.raw_output_contents),
                "dtype": str(out.dtype), "value": out.tolist()}
    raise ValueError(kind)

results = []
for call in spec["calls"]:
    try:
        results.append({"ok": run(call)})
    except InferenceServerException as err:
        results.append({"error": {"status": err.status(), "message": err.message()}})
client.close()
print(json.dumps(results))
"""


def triton(deployment: launcher.Deployment, *calls: dict[str, Any]) -> list[dict[str, Any]]:
    spec = {"url": f"127.0.0.1:{deployment.ports.envoy}", "calls": list(calls)}
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps(spec)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _isvc(name: str, model_format: str, path: str) -> dict[str, object]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": "modelmesh-serving",
            "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"},
        },
        "spec": {"predictor": {"model": {
            "modelFormat": {"name": model_format},
            "storage": {"parameters": {"type": "pvc", "name": "my-models-pvc"}, "path": path},
        }}},
    }


@pytest.fixture(scope="module")
def onnx_model(deployment: launcher.Deployment) -> Iterator[Path]:
    """The dense ONNX graph as an InferenceService, ready; deleted afterwards."""
    onnx_file = graphs.dense_onnx(deployment.data_dir / "models" / ONNX_NAME / "dense.onnx")
    with httpx.Client(base_url=deployment.api_url, timeout=30) as api:
        try:
            api.put(f"{ISVCS}/{ONNX_NAME}", json=_isvc(ONNX_NAME, "onnx", ONNX_NAME)).raise_for_status()
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
        {"kind": "infer", "model": "sklearn-mnist", "input": "predict", "output": "predict",
         "shape": [1, 64], "data": samples.sample_input()},
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
        {"kind": "infer", "model": ONNX_NAME, "input": "x", "output": "y",
         "shape": [3, 4], "data": ROWS.ravel().tolist()},
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
        {"kind": "infer", "model": "no-such-model", "input": "predict", "output": "predict",
         "shape": [1, 64], "data": samples.sample_input()},
    )
    assert "error" in infer, infer
    assert infer["error"]["status"] == "StatusCode.NOT_FOUND", infer
