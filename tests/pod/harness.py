"""The in-process pod the gRPC tests talk to (fixtures ``start_pod`` and ``pod`` in conftest)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway._proto import model_runtime_pb2 as rt
from gateway._proto import model_runtime_pb2_grpc as rt_grpc
from gateway.pod.runtimes import BUILTIN_RUNTIMES
from gateway.pod.server import PodServer, PodSettings

from .fakes import FakeModel, fake_runtime


@dataclass
class Pod:
    server: PodServer
    infer: v2_grpc.GRPCInferenceServiceStub
    runtime: rt_grpc.ModelRuntimeStub
    fake: type[FakeModel]

    async def load(
        self, model_id: str, path: Path | str, model_type: str = "sklearn", **kw: Any
    ) -> int:
        request = rt.LoadModelRequest(
            model_id=model_id, model_type=model_type, model_path=str(path), **kw
        )
        return (await self.runtime.LoadModel(request)).size_in_bytes

    async def predicted_size(self, path: Path | str) -> int:
        request = rt.PredictModelSizeRequest(model_path=str(path))
        return (await self.runtime.PredictModelSize(request)).size_in_bytes

    async def model_size(self, model_id: str) -> int:
        return (await self.runtime.ModelSize(rt.ModelSizeRequest(model_id=model_id))).size_in_bytes

    async def status(self) -> rt.RuntimeStatusResponse:
        return await self.runtime.RuntimeStatus(rt.RuntimeStatusRequest())


StartPod = Callable[..., Awaitable[Pod]]


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error ``call`` fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def pod_starter() -> AsyncIterator[StartPod]:
    """Start pods on free loopback ports (built-in runtimes and a fresh fake runtime,
    type "fake"); stopped when the iterator ends."""
    started: list[tuple[PodServer, grpc.aio.Channel]] = []

    async def start(**overrides: Any) -> Pod:
        fake = fake_runtime()
        given: dict[str, Any] = {
            "port": 0,
            "capacity_bytes": 1 << 30,
            "pod_id": "test-pod",
            "runtimes": {**BUILTIN_RUNTIMES, "fake": fake},
        }
        settings = PodSettings(**(given | overrides))
        server = PodServer(settings)
        await server.start()
        channel = grpc.aio.insecure_channel(
            server.address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        started.append((server, channel))
        return Pod(
            server,
            v2_grpc.GRPCInferenceServiceStub(channel),
            rt_grpc.ModelRuntimeStub(channel),
            fake,
        )

    yield start
    for server, channel in started:
        await channel.close()
        await server.stop(grace=0)
