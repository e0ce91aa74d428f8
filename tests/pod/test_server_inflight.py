"""Over gRPC: the synthetic runtime, per-model request counts in RuntimeStatus (and
the gateway's PodClient reading them), and UnloadModel waiting for requests in flight."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import model_runtime_pb2 as rt
from gateway.adapters.podclient import GrpcPodClient
from gateway.core.domain import ModelSpec
from gateway.core.errors import PodFull
from gateway.core.protocol import MODEL_ID_HEADER
from gateway.pod import tensors
from gateway.pod.model import Tensor
from gateway.pod.runtimes.synthetic import write_synthetic
from gateway.pod.server import PodSettings

from .fakes import key, until
from .harness import Pod, StartPod
from .harness import rpc_error as _error

MiB = 1 << 20
ROWS = np.array([[1, 2, 3], [10, 20, 30]], np.int32)


def _infer(model_id: str, array: np.ndarray = ROWS) -> v2.ModelInferRequest:
    return tensors.make_request(model_id, [Tensor.of("input-0", array)])


def _sums(response: v2.ModelInferResponse) -> list[list[float]]:
    (out,) = tensors.decode_response(response)
    assert (out.name, out.datatype) == ("predict", "FP64")
    return out.array.tolist()


async def _counts(pod: Pod) -> dict[str, tuple[int, int]]:
    status = await pod.status()
    return {m.model_id: (m.in_flight, m.requests) for m in status.loaded_models}


async def test_a_synthetic_model_over_grpc(pod: Pod, tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "m.json", 2 * MiB)
    assert await pod.load("syn", path, "synthetic") == 2 * MiB
    assert await pod.model_size("syn") == 2 * MiB
    response = await pod.infer.ModelInfer(_infer("syn"), metadata=((MODEL_ID_HEADER, "syn"),))
    assert response.model_name == "syn" and _sums(response) == [[6.0], [60.0]]
    meta = await pod.infer.ModelMetadata(v2.ModelMetadataRequest(name="syn"))
    assert meta.platform == "synthetic"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input-0", "FP32", [-1, -1])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("predict", "FP64", [-1, 1])
    ]
    status = await pod.status()
    assert [
        (m.model_id, m.size_in_bytes, m.in_flight, m.requests) for m in status.loaded_models
    ] == [("syn", 2 * MiB, 0, 1)]
    failing = write_synthetic(tmp_path / "f.json", 1, fail="simulated failure")
    err = await _error(pod.load("bad", failing, "synthetic"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and err.details() == "simulated failure"
    (tmp_path / "broken.json").write_text('{"load_seconds": 1}')
    err = await _error(pod.load("broken", tmp_path / "broken.json", "synthetic"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().endswith("broken.json': 'size_bytes' is missing")


async def test_runtime_status_counts_requests_in_flight(pod: Pod) -> None:
    await pod.load("slow", "/fake", "fake", model_key=key(block=True))
    await pod.load("quick", "/fake", "fake")
    calls = [
        asyncio.ensure_future(
            pod.infer.ModelInfer(tensors.make_request("slow", [Tensor.of("x", [1.5], "FP32")]))
        )
        for _ in range(2)
    ]
    await until(lambda: pod.fake.blocked == 2, "two requests in flight")
    await pod.infer.ModelInfer(tensors.make_request("quick", [Tensor.of("x", [1.0], "FP32")]))
    assert await _counts(pod) == {"slow": (2, 2), "quick": (0, 1)}

    client = GrpcPodClient()
    try:
        status = await client.status(pod.server.address, timeout=30)
    finally:
        await client.close()
    assert dict(status.loaded) == {"slow": 1000, "quick": 1000}
    assert dict(status.inflight) == {"slow": 2, "quick": 0}
    assert dict(status.requests) == {"slow": 2, "quick": 1}

    pod.fake.gate.set()
    for response in await asyncio.gather(*calls):
        assert list(response.outputs[0].contents.fp32_contents) == [3.0]
    assert await _counts(pod) == {"slow": (0, 2), "quick": (0, 1)}


async def test_unload_model_waits_for_a_synthetic_request_in_flight(
    pod: Pod, tmp_path: Path
) -> None:
    # The synthetic predict fails if its model is unloaded while it waits: it is
    # the graceful unload that lets it finish.
    path = write_synthetic(tmp_path / "m.json", 1 * MiB, predict_seconds=1.0)
    await pod.load("syn", path, "synthetic")
    call = asyncio.ensure_future(pod.infer.ModelInfer(_infer("syn")))
    await until(lambda: pod.server.models.loaded()[0].in_flight == 1, "the request is in flight")
    await pod.runtime.UnloadModel(rt.UnloadModelRequest(model_id="syn"))
    assert _sums(await call) == [[6.0], [60.0]]
    assert list((await pod.status()).loaded_models) == []
    err = await _error(pod.infer.ModelInfer(_infer("syn")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "model 'syn' is not loaded on this pod"


async def test_unload_model_refuses_new_requests_once_it_began(pod: Pod) -> None:
    await pod.load("m", "/fake", "fake", model_key=key(block=True))
    request = tensors.make_request("m", [Tensor.of("x", [2.0], "FP32")])
    call = asyncio.ensure_future(pod.infer.ModelInfer(request))
    await until(lambda: pod.fake.blocked == 1, "a request in flight")
    unload = asyncio.ensure_future(pod.runtime.UnloadModel(rt.UnloadModelRequest(model_id="m")))
    await until(lambda: pod.server.models.loaded() == [], "the unload began")
    for rpc in (
        pod.infer.ModelInfer(request),
        pod.infer.ModelReady(v2.ModelReadyRequest(name="m")),
        pod.infer.ModelMetadata(v2.ModelMetadataRequest(name="m")),
    ):
        err = await _error(rpc)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert err.details() == "model 'm' is being unloaded"
    assert list((await pod.status()).loaded_models) == []
    assert not unload.done() and pod.fake.unloads["m"] == 0
    pod.fake.gate.set()
    assert list((await call).outputs[0].contents.fp32_contents) == [4.0]
    await unload
    assert pod.fake.unloads["m"] == 1


async def test_the_drain_is_bounded_by_the_setting(start_pod: StartPod) -> None:
    pod = await start_pod(unload_drain_seconds=0.01)
    await pod.load("m", "/fake", "fake", model_key=key(block=True))
    call = asyncio.ensure_future(
        pod.infer.ModelInfer(tensors.make_request("m", [Tensor.of("x", [2.0], "FP32")]))
    )
    await until(lambda: pod.fake.blocked == 1, "a request in flight")
    await pod.runtime.UnloadModel(rt.UnloadModelRequest(model_id="m"), timeout=30)
    assert pod.fake.unloads["m"] == 1 and not call.done()
    pod.fake.gate.set()
    await call


def test_unload_drain_seconds_setting() -> None:
    assert PodSettings(port=0, capacity_bytes=1, pod_id="p").unload_drain_seconds == 30.0
    with pytest.raises(ValueError, match="unload_drain_seconds"):
        PodSettings(port=0, capacity_bytes=1, pod_id="p", unload_drain_seconds=-1)


async def test_a_load_without_room_is_resource_exhausted_and_pod_full_for_the_gateway(
    start_pod: StartPod, tmp_path: Path
) -> None:
    pod = await start_pod(capacity_bytes=3 * MiB)
    path = write_synthetic(tmp_path / "m.json", 2 * MiB)
    assert await pod.load("a", path, "synthetic", expected_size_in_bytes=2 * MiB) == 2 * MiB
    error = await _error(pod.load("b", path, "synthetic", expected_size_in_bytes=2 * MiB))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == (
        f"this pod has no room for model 'b': it expects {2 * MiB} bytes, "
        f"and {2 * MiB} held + 0 loading of {3 * MiB} leaves {MiB}"
    )
    assert [m.model_id for m in (await pod.status()).loaded_models] == ["a"]

    client = GrpcPodClient()
    try:
        spec = ModelSpec("b", "synthetic", str(path), 2 * MiB)
        with pytest.raises(
            PodFull, match=f"^pod {pod.server.address}: this pod has no room for model 'b'"
        ):
            await client.load(pod.server.address, spec, 30, 2 * MiB)
        assert (
            await client.load(pod.server.address, spec, 30, MiB) == 2 * MiB
        )  # what it says it needs fits
    finally:
        await client.close()
