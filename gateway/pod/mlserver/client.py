"""The MLServer calls the adapter makes: its repository API and its readiness, over gRPC.

MLServer serves the model repository extension on its data plane's service
(``inference.GRPCInferenceService/RepositoryModelLoad`` and ``.../RepositoryModelUnload``,
MLServer's dataplane.proto). Both requests carry only ``model_name`` (field 2), and both
answers are empty, so they are written here as bytes rather than generated from a second
copy of that service (whose full name our KServe V2 proto already holds).

A failure is reported with MLServer's own message: LoadFailed for a load MLServer
refused or could not do, ModelNotFound for an unload of a model it does not hold,
Unavailable when MLServer cannot be reached.
"""

from __future__ import annotations

import grpc

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.core.errors import LoadFailed, ModelNotFound, Unavailable

_SERVICE = "/inference.GRPCInferenceService/"
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def _named(model_name: str) -> bytes:
    """A RepositoryModel{Load,Unload}Request naming ``model_name`` (field 2, a string)."""
    name = model_name.encode()
    return b"\x12" + _varint(len(name)) + name


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _ignored(_: bytes) -> None:
    return None


class MLServerClient:
    """One channel to an MLServer's gRPC port (``host:port``)."""

    def __init__(self, target: str) -> None:
        self._connect(target)

    async def retarget(self, target: str) -> None:
        """Talk to the MLServer at ``target`` from now on (one restarted on other ports)."""
        old = self._channel
        self._connect(target)
        await old.close(grace=None)

    def _connect(self, target: str) -> None:
        self.target = target
        self._channel = grpc.aio.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)]
        )
        self._ready = v2_grpc.GRPCInferenceServiceStub(self._channel).ServerReady
        self._load = self._channel.unary_unary(
            _SERVICE + "RepositoryModelLoad",
            request_serializer=_named,
            response_deserializer=_ignored,
        )
        self._unload = self._channel.unary_unary(
            _SERVICE + "RepositoryModelUnload",
            request_serializer=_named,
            response_deserializer=_ignored,
        )

    async def ready(self, timeout: float) -> bool:
        """Whether MLServer answers that it is ready within ``timeout`` seconds."""
        try:
            answer = await self._ready(v2.ServerReadyRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.ready)

    async def load(self, model_name: str) -> None:
        """MLServer loads ``model_name`` from its models directory (waits for its ``load()``)."""
        try:
            await self._load(model_name)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _UNREACHABLE:
                raise Unavailable(
                    f"MLServer at {self.target} is not reachable: {exc.details()}"
                ) from None
            raise LoadFailed(
                f"MLServer could not load model '{model_name}': {exc.details() or exc.code().name}"
            ) from None

    async def unload(self, model_name: str, timeout: float) -> None:
        try:
            await self._unload(model_name, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise ModelNotFound(model_name, exc.details() or "") from None
            if exc.code() in _UNREACHABLE:
                raise Unavailable(
                    f"MLServer at {self.target} is not reachable: {exc.details()}"
                ) from None
            raise LoadFailed(
                f"MLServer could not unload model '{model_name}': {exc.details()}"
            ) from None

    async def close(self) -> None:
        await self._channel.close(grace=None)
