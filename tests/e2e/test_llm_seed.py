"""The seed's LLM case (001, section 3): an InferenceService of format peft-model (a base
causal LM with a PEFT adapter, from the PVC), V2 infer with a BYTES ``content`` input, the
generated text answered as BYTES ``output-0``: through :8008, in both REST forms and gRPC.
The model is the project's own (gateway.tools.lm_samples), loaded by transformers and peft."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import grpc
import httpx
import pytest

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.tools import launcher, lm_samples

from .conftest import ISVCS, inference_service, wait_ready

SEED_TEXT = "Every day is a new beginning, filled with opportunities and hope."
ADAPTER = f"{lm_samples.ADAPTERS}/complaint"


@pytest.fixture(scope="module")
def peft_demo(deployment: launcher.Deployment, api: httpx.Client) -> Iterator[str]:
    lm_samples.save_samples(deployment.data_dir / "models")
    document = inference_service("peft-demo", "peft-model", ADAPTER)
    document["spec"]["predictor"]["model"]["runtime"] = "huggingface-peft"  # type: ignore[index]
    api.put(f"{ISVCS}/peft-demo", json=document).raise_for_status()
    item = wait_ready(api, "peft-demo", timeout=120)
    assert item["status"]["conditions"][0]["status"] == "True", item["status"]
    assert item["status"]["runtime"]["name"] == "huggingface-peft"
    yield "peft-demo"
    api.delete(f"{ISVCS}/peft-demo")


def test_the_seeds_request_answers_generated_text_as_bytes(
    rest: httpx.Client, peft_demo: str
) -> None:
    seed = {
        "inputs": [
            {
                "name": "content",
                "shape": [1],
                "datatype": "BYTES",
                "contents": {"bytes_contents": [base64.b64encode(SEED_TEXT.encode()).decode()]},
            }
        ]
    }
    response = rest.post(f"/v2/models/{peft_demo}/infer", json=seed)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["modelName"].startswith("peft-demo__isvc-")
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("output-0", "BYTES", ["1"])
    (text,) = (base64.b64decode(b).decode() for b in output["contents"]["bytesContents"])
    assert text.startswith(SEED_TEXT) and len(text) > len(SEED_TEXT)

    oip = {"inputs": [{"name": "content", "shape": [1], "datatype": "BYTES", "data": [SEED_TEXT]}]}
    again = rest.post(f"/v2/models/{peft_demo}/infer", json=oip)
    assert again.status_code == 200, again.text
    assert again.json()["outputs"][0]["data"] == [text]  # greedy: the same text either way


def test_grpc_and_a_bad_max_new_tokens(
    stub: v2_grpc.GRPCInferenceServiceStub, peft_demo: str
) -> None:
    request = v2.ModelInferRequest(model_name=peft_demo)
    tensor = request.inputs.add(name="content", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"one two", SEED_TEXT.encode()])
    request.parameters["max_new_tokens"].int64_param = 8
    answer = stub.ModelInfer(request, metadata=[("mm-vmodel-id", peft_demo)], timeout=60)
    texts = [b.decode() for b in answer.outputs[0].contents.bytes_contents]
    assert [t[: len(p)] for t, p in zip(texts, ["one two", SEED_TEXT], strict=True)] == [
        "one two",
        SEED_TEXT,
    ]
    assert all(len(t) - len(p) <= 8 for t, p in zip(texts, ["one two", SEED_TEXT], strict=True))
    request.parameters["max_new_tokens"].int64_param = 100_000
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, metadata=[("mm-vmodel-id", peft_demo)], timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_new_tokens must be between 1 and 256" in (refused.value.details() or "")
