"""The pod's gRPC adapter: KServe V2 ``GRPCInferenceService`` and ``ModelRuntime``.

The servicers translate messages and call the ``ModelRepository``; they decide
nothing. Model RPCs (ModelInfer, ModelReady, ModelMetadata) serve the model the
``mm-model-id`` header names (``gateway.core.protocol.MODEL_ID_HEADER``, always the
concrete id when the gateway forwards), else the request's model name; responses
carry the concrete id.

The error table, the one place core errors meet gRPC status codes (the first
match along the exception's class hierarchy wins):

=============================================  ===================  ==================
error                                          gRPC status          details
=============================================  ===================  ==================
InvalidInput (datatype, shape, outputs, ...)   INVALID_ARGUMENT     the message
InvalidSpec (unknown model type, empty field)  INVALID_ARGUMENT     the message
ModelNotFound (not loaded, being unloaded)     NOT_FOUND            the message
ModelFormatError (file unreadable as a model)  FAILED_PRECONDITION  the message
ModelNotInStorage (no file, object or bucket)  NOT_FOUND            the message
StorageAccessDenied (credentials, permission)  PERMISSION_DENIED    the message
LoadTimeout (model_loading_timeout_ms)         DEADLINE_EXCEEDED    the message
LoadFailed (storage unreachable, runtime       UNAVAILABLE          the message
  raised)
NoCapacity                                     RESOURCE_EXHAUSTED   the message
Unavailable                                    UNAVAILABLE          the message
UnknownRoute                                   UNIMPLEMENTED        the message
PredictFailed (runtime raised in predict)      INTERNAL             "<Type>: <message>"
any other GatewayError                         INTERNAL             the message
anything else                                  INTERNAL             "internal error"
=============================================  ===================  ==================

FAILED_PRECONDITION says "retrying this file will not help"; UNAVAILABLE says
"this pod could not load it; another pod or a later try may". Unexpected
exceptions are logged with their traceback and never sent on the wire.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

import gateway
from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway._proto import model_runtime_pb2 as rt
from gateway._proto import model_runtime_pb2_grpc as rt_grpc
from gateway.core import logs
from gateway.core.errors import (
    GatewayError,
    InvalidInput,
    InvalidSpec,
    LoadFailed,
    LoadTimeout,
    ModelFormatError,
    ModelNotFound,
    ModelNotInStorage,
    NoCapacity,
    PredictFailed,
    StorageAccessDenied,
    Unavailable,
    UnknownRoute,
)
from gateway.core.protocol import MODEL_ID_HEADER, REQUEST_ID_HEADER
from gateway.kserve.locations import S3Location
from gateway.kserve.storage import StorageRoots
from gateway.pod.tracing import Tracing

from . import tensors
from .model import ModelConfig, decode_for
from .repository import ModelRepository, predicted_size
from .settings import PodSettings

log = logging.getLogger(__name__)

SERVER_NAME = "mmgw-runtime-pod"

STATUS_CODES: Mapping[type[BaseException], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidSpec: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    ModelFormatError: grpc.StatusCode.FAILED_PRECONDITION,
    ModelNotInStorage: grpc.StatusCode.NOT_FOUND,
    StorageAccessDenied: grpc.StatusCode.PERMISSION_DENIED,
    LoadTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    LoadFailed: grpc.StatusCode.UNAVAILABLE,
    NoCapacity: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    UnknownRoute: grpc.StatusCode.UNIMPLEMENTED,
    PredictFailed: grpc.StatusCode.INTERNAL,
    GatewayError: grpc.StatusCode.INTERNAL,
}


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and details an exception is reported with (the table above)."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request message that did not parse: what the tolerant deserializer hands the servicer
    instead of raising (grpc reports a deserializer's exception as UNKNOWN, with the class
    name), so that it is answered INVALID_ARGUMENT naming the message type."""

    type_name: str
    reason: str


def tolerant(message: Any) -> Callable[[bytes], Any]:
    """``message.FromString`` that returns an Undecodable instead of raising."""
    name = message.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Undecodable(name, str(exc) or "not a protobuf message")

    return deserialize


def inference_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The GRPCInferenceService methods of ``servicer``, with tolerant deserializers.

    Each unary method is served as a client-streaming one (the same bytes on the wire)
    that takes the first message: grpc's own unary handling never answers a call that
    ends without a complete message (an empty body, or fewer bytes than its length
    prefix says), and each such call would hold a stream until the client's deadline.
    """
    service = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {
        method.name: grpc.stream_unary_rpc_method_handler(
            _first_message(getattr(servicer, method.name), method.input_type.full_name),
            request_deserializer=tolerant(getattr(v2, method.input_type.name)),
            response_serializer=getattr(v2, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _first_message(
    unary: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], type_name: str
) -> Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], Awaitable[Any]]:
    """``unary`` called with a call's first message; a call that ended before one came
    gets an Undecodable, answered INVALID_ARGUMENT. Later messages are not read (as grpc's
    unary handling ignores them)."""
    missing = Undecodable(
        type_name,
        "the call ended before a complete message arrived "
        "(an empty body, or fewer bytes than its length prefix says)",
    )

    async def handler(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        try:
            request = await anext(aiter(requests))
        except StopAsyncIteration:
            request = missing
        return await unary(request, context)

    return handler


Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S")
Handler = Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _rpc(method: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
    """Report whatever ``method`` raises with the status of the error table."""

    @functools.wraps(method)
    async def handler(self: S, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            if isinstance(request, Undecodable):
                raise InvalidInput(
                    f"the request is not a valid {request.type_name}: {request.reason}"
                )
            return await method(self, request, context)
        except Exception as exc:
            code, details = grpc_status(exc)
            request_id = _request_id(context)
            if code is grpc.StatusCode.INTERNAL and not isinstance(exc, GatewayError):
                log.error(
                    "request %s: %s failed",
                    request_id,
                    method.__name__,
                    exc_info=True,
                    extra=logs.for_request(request_id),
                )
            else:
                log.info(
                    "request %s: %s %s: %s",
                    request_id,
                    method.__name__,
                    code.name,
                    details,
                    extra=logs.for_request(request_id),
                )
            await context.abort(code, details)
            raise  # unreachable: abort raises

    return handler


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The call's x-request-id (Envoy sets one on every request), for log lines."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            return value[:128]
    return "-"


def _model_id(context: grpc.aio.ServicerContext, name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == MODEL_ID_HEADER and isinstance(value, str) and value:
            return value
    if not name:
        raise InvalidInput(f"no model named: set the {MODEL_ID_HEADER} header or the model name")
    return name


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    """KServe V2 data plane over the pod's repository."""

    def __init__(
        self, models: ModelRepository, ready: asyncio.Event, tracing: Tracing | None = None
    ) -> None:
        self._models = models
        self._ready = ready
        self._tracing = tracing or Tracing("", "")

    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self._ready.is_set())

    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name=SERVER_NAME, version=gateway.__version__)

    @_rpc
    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelReadyResponse:
        self._models.get(_model_id(context, request.name))
        return v2.ModelReadyResponse(ready=True)

    @_rpc
    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelMetadataResponse:
        model_id = _model_id(context, request.name)
        return tensors.encode_metadata(model_id, self._models.get(model_id).metadata())

    @_rpc
    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelInferResponse:
        model_id = _model_id(context, request.model_name)
        if self._tracing.enabled:
            headers = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            with self._tracing.span("ModelInfer", headers, {"mmgw.model_id": model_id}):
                return await self._infer(request, model_id)
        return await self._infer(request, model_id)

    async def _infer(self, request: v2.ModelInferRequest, model_id: str) -> v2.ModelInferResponse:
        await self._models.prepare(model_id)
        with self._models.serving(model_id) as model:
            decoded = decode_for(
                model,
                lambda: tensors.decode_request(request),
                lambda: [(t.name, t.datatype) for t in request.inputs],
            )
            outputs = await self._models.predict(model, decoded)
            try:
                return tensors.encode_response(model_id, request, outputs)
            except (ValueError, TypeError) as exc:
                log.warning("model %s: cannot encode its outputs", model_id, exc_info=True)
                raise PredictFailed(f"{type(exc).__name__}: {exc}") from exc


class RuntimeServicer(rt_grpc.ModelRuntimeServicer):
    """The management API the gateway's placement engine calls."""

    def __init__(
        self,
        models: ModelRepository,
        ready: asyncio.Event,
        settings: PodSettings,
        rest_port: Callable[[], int] = lambda: 0,
        *,
        data_grpc_port: Callable[[], int] = lambda: 0,
        model_named_in_request: bool = False,
    ) -> None:
        self._models = models
        self._ready = ready
        self._settings = settings
        self._rest_port = rest_port  # the bound REST listener's port, 0: none
        # another server's gRPC data plane (MLServer beside an adapter), 0: this one
        self._data_grpc_port = data_grpc_port
        self._named_in_request = model_named_in_request

    @_rpc
    async def LoadModel(
        self, request: rt.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> rt.LoadModelResponse:
        _require(request, "model_id", "model_type", "model_path")
        config = ModelConfig(
            request.model_id, request.model_type, Path(request.model_path), request.model_key
        )
        size = await self._models.load(config, expected_bytes=request.expected_size_in_bytes)
        return rt.LoadModelResponse(model_id=request.model_id, size_in_bytes=size)

    @_rpc
    async def UnloadModel(
        self, request: rt.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> rt.UnloadModelResponse:
        """Answers once the model is gone: after its requests in flight (bounded by
        ``unload_drain_seconds``)."""
        _require(request, "model_id")
        await self._models.unload(request.model_id)
        return rt.UnloadModelResponse()

    @_rpc
    async def PredictModelSize(
        self, request: rt.PredictModelSizeRequest, context: grpc.aio.ServicerContext
    ) -> rt.PredictModelSizeResponse:
        _require(request, "model_path")
        location = S3Location.from_request(request.model_path, request.model_key)
        if location is None:
            size = await asyncio.to_thread(
                predicted_size, Path(request.model_path), self._settings.size_multiplier
            )
        else:
            roots = StorageRoots({}, self._settings.storage_config)
            size = math.ceil((await roots.measure(location) or 0) * self._settings.size_multiplier)
        return rt.PredictModelSizeResponse(size_in_bytes=size)

    @_rpc
    async def ModelSize(
        self, request: rt.ModelSizeRequest, context: grpc.aio.ServicerContext
    ) -> rt.ModelSizeResponse:
        return rt.ModelSizeResponse(size_in_bytes=self._models.get(request.model_id).size_bytes())

    @_rpc
    async def RuntimeStatus(
        self, request: rt.RuntimeStatusRequest, context: grpc.aio.ServicerContext
    ) -> rt.RuntimeStatusResponse:
        settings = self._settings
        ready = self._ready.is_set()
        return rt.RuntimeStatusResponse(
            status=rt.RuntimeStatusResponse.READY if ready else rt.RuntimeStatusResponse.STARTING,
            capacity_in_bytes=settings.capacity_bytes,
            max_loading_concurrency=settings.max_loading_concurrency,
            model_loading_timeout_ms=settings.model_loading_timeout_ms,
            model_types=self._models.model_types,
            runtime_version=gateway.__version__,
            rest_port=self._rest_port(),
            data_grpc_port=self._data_grpc_port(),
            model_named_in_request=self._named_in_request,
            max_adapters=settings.max_adapters,
            adapter_capacity_in_bytes=settings.adapter_capacity_bytes,
            loaded_models=[
                _LoadedModel(
                    model_id=m.model_id,
                    size_in_bytes=m.size_bytes,
                    in_flight=m.in_flight,
                    requests=m.requests,
                )
                for m in self._models.loaded()
            ],
        )


_LoadedModel = rt.RuntimeStatusResponse.LoadedModel


def _require(request: Any, *fields: str) -> None:
    missing = [f for f in fields if not getattr(request, f)]
    if missing:
        raise InvalidSpec(f"{type(request).__name__}: {', '.join(missing)} must be set")
