"""A pod sent a request for a registered model it does not hold loads it from the spec in
the shared store and answers (issue 13, item 5: when the only copy's pod dies, Envoy's
retry lands on a pod without it, which answered NOT_FOUND for a registered model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import model_runtime_pb2 as rt
from gateway.core.domain import ModelSpec
from gateway.core.protocol import INFERENCE_SERVICES_PREFIX, MODEL_ID_HEADER
from gateway.pod.on_demand import OnDemand
from gateway.store import EmbeddedStore

from .harness import Pod, StartPod, rpc_error

MODEL_ID = "digits__isvc-0123456789"


def _infer(pod: Pod, model_id: str, digit: np.ndarray) -> Any:
    request = v2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="predict", datatype="FP32", shape=list(digit.shape))
    request.raw_input_contents.append(digit.astype(np.float32).tobytes())
    return pod.infer.ModelInfer(request, metadata=((MODEL_ID_HEADER, model_id),))


@pytest.fixture
async def pod_with_store(
    start_pod: StartPod, svc_file: Path, tmp_path: Path
) -> AsyncIterator[tuple[Pod, EmbeddedStore]]:
    store = EmbeddedStore(tmp_path / "registry.db")
    spec = ModelSpec(MODEL_ID, "sklearn", str(svc_file), predicted_size=1 << 20)
    # as gateway.control.records.Record.to_json stores it
    record = {"manifest": {}, "created": 0.0, "serving": asdict(spec), "target": asdict(spec)}
    await store.put(INFERENCE_SERVICES_PREFIX + "digits", record)
    pod = await start_pod()
    pod.server.models.load_on_demand = OnDemand(store, pod.server.models).ensure
    yield pod, store
    await store.close()


async def test_a_registered_model_the_pod_does_not_hold_is_loaded_and_served(
    pod_with_store: tuple[Pod, EmbeddedStore], digit_898: np.ndarray
) -> None:
    pod, _ = pod_with_store
    assert not (await pod.status()).loaded_models
    answer = await _infer(pod, MODEL_ID, digit_898)
    assert np.frombuffer(answer.raw_output_contents[0], np.int64).tolist() == [8]
    assert [m.model_id for m in (await pod.status()).loaded_models] == [MODEL_ID]


@pytest.mark.parametrize(
    "model_id",
    ["digits__isvc-ffffffffff", "other__isvc-0123456789", "digits", "__isvc-0123456789"],
    ids=["another-spec", "not-registered", "a-name", "no-name"],
)
async def test_a_model_the_store_does_not_register_keeps_its_not_found(
    pod_with_store: tuple[Pod, EmbeddedStore], digit_898: np.ndarray, model_id: str
) -> None:
    pod, _ = pod_with_store
    err = await rpc_error(_infer(pod, model_id, digit_898))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert not (await pod.status()).loaded_models


async def test_a_model_being_unloaded_is_not_loaded_again(
    pod_with_store: tuple[Pod, EmbeddedStore], svc_file: Path, digit_898: np.ndarray
) -> None:
    """The gateway evicted it: a request still on its way must not undo that."""
    pod, _ = pod_with_store
    await pod.load(MODEL_ID, svc_file)
    models = pod.server.models
    with models.serving(MODEL_ID):  # a request in flight holds the unload back
        unloading = pod.runtime.UnloadModel(rt.UnloadModelRequest(model_id=MODEL_ID))
        for _ in range(500):  # until the unload has begun (at once: the loop turns)
            if MODEL_ID not in [m.model_id for m in models.loaded()]:
                break
            await asyncio.sleep(0.01)
        assert not models.absent(MODEL_ID)  # being unloaded
        err = await rpc_error(_infer(pod, MODEL_ID, digit_898))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "being unloaded" in err.details()
    await unloading
    assert not (await pod.status()).loaded_models


async def test_an_adapter_sent_to_a_pod_without_it_loads_with_its_base(
    start_pod: StartPod, tmp_path: Path
) -> None:
    """The retry that lands on a pod holding neither the adapter nor its base: both load
    (the base first, as the store's records say), and the request is answered; also on a
    pod whose adapter room is full (one over, until the gateway evicts)."""
    from gateway.tools import lm_samples

    models = tmp_path / "pvc"
    lm_samples.save_samples(models)
    store = EmbeddedStore(tmp_path / "registry.db")
    base = ModelSpec("tiny-lm__isvc-1", "peft-model", str(models / lm_samples.BASE), 1 << 20)
    tuned = ModelSpec(
        "counting__isvc-2",
        "lora",
        str(models / lm_samples.ADAPTERS / "counting"),
        1 << 10,
        base="tiny-lm",
    )
    weather = ModelSpec(
        "weather__isvc-3",
        "lora",
        str(models / lm_samples.ADAPTERS / "weather"),
        1 << 10,
        base="tiny-lm",
    )
    for name, spec in (("tiny-lm", base), ("counting", tuned), ("weather", weather)):
        record = {"manifest": {}, "created": 0.0, "serving": asdict(spec), "target": asdict(spec)}
        await store.put(INFERENCE_SERVICES_PREFIX + name, record)
    pod = await start_pod(max_adapters=1)
    pod.server.models.load_on_demand = OnDemand(store, pod.server.models).ensure
    request = v2.ModelInferRequest(model_name="counting")
    tensor = request.inputs.add(name="content", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"one two")
    answer = await pod.infer.ModelInfer(request, metadata=((MODEL_ID_HEADER, tuned.model_id),))
    assert "four" in answer.outputs[0].contents.bytes_contents[0].decode()
    held = sorted(m.model_id for m in (await pod.status()).loaded_models)
    assert held == sorted([base.model_id, tuned.model_id])
    # its one adapter slot is taken: a request brought here still loads its adapter
    answer = await pod.infer.ModelInfer(request, metadata=((MODEL_ID_HEADER, weather.model_id),))
    assert answer.outputs[0].contents.bytes_contents[0].decode().startswith("one two")
    assert len((await pod.status()).loaded_models) == 3
    await store.close()
