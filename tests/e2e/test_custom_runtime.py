"""The example custom runtime (examples/custom_runtime) end to end: its ServingRuntime and
InferenceService YAML applied through the API, BYTES in and out through Envoy, REST and gRPC.

Two pods: the first is a pod of the ServingRuntime (``--runtime-name sentiment-runtime``):
it waits until the runtime is applied, then takes its capacity, load timeout and
model class (MLSERVER_MODEL_IMPLEMENTATION) from the YAML. The second serves the
built-in runtimes, so the placement can only load the model on the first.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import yaml

from examples.custom_runtime import train
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.pod import tensors
from gateway.pod.model import Tensor
from gateway.tools import launcher

from .conftest import ISVCS, curl_json, wait_ready

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_runtime"
SRS = "/apis/serving.kserve.io/v1alpha1/namespaces/modelmesh-serving/servingruntimes"
SENTENCES = [
    "what a wonderful day",
    "this movie was awful",
    "i love it",
    "the service was rude and slow",
]
LABELS = ["positive", "negative", "positive", "negative"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.Deployment]:
    data = tmp_path_factory.mktemp("custom-runtime")
    train.save(data / "models" / "sentiment.joblib")
    deployment = launcher.Deployment(
        data_dir=data,
        ports=launcher.Ports.free(pods=2),
        pod_args={0: ["--runtime-name", "sentiment-runtime"]},
        later_pods=frozenset({0}),
    )
    with pytest.MonkeyPatch.context() as env:
        # The pod imports examples.custom_runtime from the runtime's own PYTHONPATH entry, and
        # only from there: "." made absolute, as pytest may run anywhere.
        env.delenv("PYTHONPATH", raising=False)
        with deployment, httpx.Client(base_url=deployment.api_url, timeout=30) as api:
            runtime = yaml.safe_load((EXAMPLE / "servingruntime.yaml").read_text())
            (variables,) = (c["env"] for c in runtime["spec"]["containers"])
            next(v for v in variables if v["name"] == "PYTHONPATH")["value"] = str(ROOT)
            api.put(f"{SRS}/sentiment-runtime", json=runtime).raise_for_status()
            pod = wait_for_pod(api, "pod-0")  # started once it could read its runtime
            assert pod["runtime"] == "sentiment-runtime"
            assert pod["capacity_bytes"] == (2 << 30) - 134217728  # limits.memory - memBufferBytes
            isvc = yaml.safe_load((EXAMPLE / "inferenceservice.yaml").read_text())
            api.put(f"{ISVCS}/sentiment", json=isvc).raise_for_status()
            item = wait_ready(api, "sentiment")
            assert item["status"]["conditions"][0]["status"] == "True", item["status"]
            assert item["status"]["runtime"] == {
                "kind": "ServingRuntime",
                "name": "sentiment-runtime",
            }
            yield deployment
    for process in deployment.processes:
        assert process.popen.poll() is not None


def wait_for_pod(api: httpx.Client, name: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pod in api.get("/v1/placement").json()["pods"]:
            if pod["name"] == name and pod["healthy"]:
                return pod
        time.sleep(0.05)
    raise TimeoutError(f"{name} did not join the pool")


def test_rest_bytes_in_protobuf_json(running: launcher.Deployment) -> None:
    body = {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [len(SENTENCES)],
                "contents": {"bytes_contents": [_b64(s) for s in SENTENCES]},
            }
        ]
    }
    with httpx.Client(base_url=running.url, timeout=30) as rest:
        response = rest.post("/v2/models/sentiment/infer", json=body)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == (
            "label",
            "BYTES",
            [str(len(SENTENCES))],
        )
        assert output["contents"]["bytesContents"] == [_b64(label) for label in LABELS]

        metadata = rest.get("/v2/models/sentiment").json()
        assert metadata["platform"] == "sentiment"
        assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert metadata["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]}]

        wrong = dict(
            body["inputs"][0], datatype="FP32", contents={"fp32_contents": [1.0] * len(SENTENCES)}
        )
        response = rest.post("/v2/models/sentiment/infer", json={"inputs": [wrong]})
        assert response.status_code == 400
        assert "datatype 'FP32' given, model expects 'BYTES'" in response.text


@pytest.mark.parametrize("raw", [False, True])
def test_grpc_bytes(running: launcher.Deployment, raw: bool) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running.ports.envoy}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        request = tensors.make_request(
            "sentiment", [Tensor.of("text", SENTENCES, "BYTES")], raw=raw
        )
        (label,) = tensors.decode_response(stub.ModelInfer(request, timeout=30))
    assert (label.name, label.datatype) == ("label", "BYTES")
    assert label.array.tolist() == [s.encode() for s in LABELS]


def test_the_model_is_on_the_pod_that_serves_its_format(running: launcher.Deployment) -> None:
    custom_pod, plain_pod = running.ports.pod_addresses
    table = {
        p["pod"]: p for p in httpx.get(f"{running.api_url}/v1/placement", timeout=30).json()["pods"]
    }
    assert [m["state"] for m in table[custom_pod]["models"]] == ["LOADED"]
    assert table[plain_pod]["models"] == []


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_oip_rest_bytes_with_tritonclient_http(running: launcher.Deployment, binary: bool) -> None:
    client = triton.InferenceServerClient(running.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("text", [len(SENTENCES)], "BYTES")
        tensor.set_data_from_numpy(np.array(SENTENCES, dtype=object), binary_data=binary)
        wanted = [triton.InferRequestedOutput("label", binary_data=binary)]
        result = client.infer("sentiment", [tensor], outputs=wanted)
    finally:
        client.close()
    labels = result.as_numpy("label").tolist()  # bytes from binary data, str from JSON
    assert [v.decode() if isinstance(v, bytes) else v for v in labels] == LABELS


def test_oip_rest_bytes_as_json_strings(running: launcher.Deployment) -> None:
    body = {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [len(SENTENCES)], "data": SENTENCES}
        ]
    }
    status, answer = curl_json(f"{running.url}/v2/models/sentiment/infer", body)
    assert status == 200, answer
    (output,) = answer["outputs"]
    assert output == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [len(SENTENCES)],
        "data": LABELS,
    }
