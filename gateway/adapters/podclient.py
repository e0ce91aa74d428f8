"""The engine's PodClient over gRPC: the pods' ModelRuntime API.

Error table (pod's gRPC code on LoadModel -> core error): FAILED_PRECONDITION
and INVALID_ARGUMENT -> ModelFormatError (no runtime can read the file, or the
pod does not know the format); DEADLINE_EXCEEDED -> LoadTimeout;
RESOURCE_EXHAUSTED -> PodFull (no room for the expected bytes: not a failure of
the model); every other code -> LoadFailed with the pod's message, so the
engine tries another pod.

An UnloadModel answers once the pod has let the model's requests in flight
finish (its ``unload_drain_seconds``, 30 s by default): ``unload_timeout`` is
longer than that.

A RuntimeStatus (the health check) past its deadline is PodUnresponsive: the
pod is connected but silent, busy or hung; any other failure passes as it is.
Each pod's channel is watched: when it leaves READY (the connection broke),
the ``on_disconnect`` callbacks are told at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from gateway._proto import model_runtime_pb2 as rt
from gateway._proto import model_runtime_pb2_grpc as rt_grpc
from gateway.core.domain import ModelSpec
from gateway.core.errors import (
    LoadFailed,
    LoadTimeout,
    ModelFormatError,
    ModelNotInStorage,
    PodFull,
    PodUnresponsive,
)
from gateway.core.placement import PodStatus

_FORMAT_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT})


class GrpcPodClient:
    def __init__(self, *, max_message_bytes: int = 64 << 20, unload_timeout: float = 60.0) -> None:
        self._unload_timeout = unload_timeout
        self._stubs: dict[str, rt_grpc.ModelRuntimeStub] = {}
        self._channels: list[grpc.aio.Channel] = []
        self._watchers: set[asyncio.Task[None]] = set()
        self._on_disconnect: list[Callable[[str], None]] = []
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]

    def on_disconnect(self, callback: Callable[[str], None]) -> None:
        self._on_disconnect.append(callback)

    def _stub(self, address: str) -> rt_grpc.ModelRuntimeStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels.append(channel)
            watcher = asyncio.create_task(self._watch(address, channel), name=f"watch {address}")
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
            stub = self._stubs[address] = rt_grpc.ModelRuntimeStub(channel)
        return stub

    async def _watch(self, address: str, channel: grpc.aio.Channel) -> None:
        """Tell the callbacks when ``channel`` leaves READY: its pod's connection broke."""
        state = channel.get_state()
        while True:
            await channel.wait_for_state_change(state)
            new = channel.get_state()
            if state is grpc.ChannelConnectivity.READY and new is not state:
                for callback in self._on_disconnect:
                    callback(address)
            state = new

    async def load(self, address: str, spec: ModelSpec, timeout: float, expected: int) -> int:
        request = rt.LoadModelRequest(
            model_id=spec.model_id,
            model_type=spec.model_type,
            model_path=spec.path,
            model_key=spec.key,
            expected_size_in_bytes=expected,
        )
        try:
            response = await self._stub(address).LoadModel(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            message = f"pod {address}: {exc.details() or code.name}"
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise PodFull(message) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise LoadTimeout(
                    message
                    if exc.details()
                    else f"pod {address}: load timed out after {timeout:g} s"
                ) from None
            if code == grpc.StatusCode.NOT_FOUND:  # its file, object or bucket is not there
                raise ModelNotInStorage(message) from None
            raise (ModelFormatError if code in _FORMAT_CODES else LoadFailed)(message) from None
        return response.size_in_bytes

    async def unload(self, address: str, model_id: str) -> None:
        await self._stub(address).UnloadModel(
            rt.UnloadModelRequest(model_id=model_id), timeout=self._unload_timeout
        )

    async def status(self, address: str, timeout: float) -> PodStatus:
        try:
            response = await self._stub(address).RuntimeStatus(
                rt.RuntimeStatusRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise PodUnresponsive(f"no answer from pod {address} in {timeout:g} s") from None
            raise
        if response.status != rt.RuntimeStatusResponse.READY:
            raise LoadFailed(f"pod {address} is not ready")
        return PodStatus(
            capacity=response.capacity_in_bytes,
            model_types=tuple(response.model_types),
            loaded={m.model_id: m.size_in_bytes for m in response.loaded_models},
            inflight={m.model_id: m.in_flight for m in response.loaded_models},
            requests={m.model_id: m.requests for m in response.loaded_models},
            rest_port=response.rest_port,
            data_grpc_port=response.data_grpc_port,
            model_named_in_request=response.model_named_in_request,
            max_adapters=response.max_adapters,
            adapter_capacity=response.adapter_capacity_in_bytes,
        )

    async def close(self) -> None:
        for watcher in list(self._watchers):
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        for channel in self._channels:
            await channel.close(grace=None)
