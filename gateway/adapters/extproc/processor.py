"""Envoy's external processor: tells Envoy which pod serves each request.

Each HTTP request is one ext_proc stream. Its request headers are answered with
two header mutations, x-mmgw-upstream (the chosen pod, then the model's other
copies for a retry; read by the override_host policy of Envoy's cluster
"pods", or of "pods_rest" with the pods' REST listeners for a request in the Open
Inference Protocol's form) and mm-model-id (the concrete model), or with an
immediate error response. Only a native gRPC call that names its model in the
body alone makes it ask for the body. An OpenAI API request (/v1/completions,
/v1/chat/completions) names its model in the body too, but Envoy's
json_to_metadata filter has read it into the request's metadata, sent with the
headers: no body is asked for. The decision is the router's
(gateway.control.router): the processor parses the request into a RouteKey,
asks ``Router.hit``, and turns the Route into an Answer, the bytes the transport
(gateway.adapters.extproc.server) sends. Answers are serialized once per Route
and reused: the router hands out the same Route object while a route is valid,
so the memo is a dict keyed by Route identity. On a Miss the processor awaits
``Router.load``.

Error table (core error -> REST status / gRPC code), used for immediate
responses. Their body is the plain message; envoy.yaml's local_reply_config
turns it into google.rpc.Status JSON for REST, like the transcoder's errors (and
into OpenAI's error JSON under /v1/).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2, json_format

from gateway.control.router import Miss, Route, Router
from gateway.core import logs, protocol, route_key
from gateway.core.errors import (
    GatewayError,
    InvalidInput,
    LoadFailed,
    ModelFormatError,
    ModelNotFound,
    NoCapacity,
    Unavailable,
    UnknownRoute,
)
from gateway.core.route_key import NEED_BODY, NEED_OPENAI_MODEL, RouteKey

log = logging.getLogger(__name__)


# core error -> (HTTP status, gRPC status code); most specific class first.
ERROR_TABLE: tuple[tuple[type[GatewayError], int, grpc.StatusCode], ...] = (
    (ModelNotFound, 404, grpc.StatusCode.NOT_FOUND),
    (UnknownRoute, 404, grpc.StatusCode.UNIMPLEMENTED),
    (InvalidInput, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (NoCapacity, 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelFormatError, 500, grpc.StatusCode.INTERNAL),
    (LoadFailed, 503, grpc.StatusCode.UNAVAILABLE),
    (Unavailable, 503, grpc.StatusCode.UNAVAILABLE),
)
_INTERNAL = (500, grpc.StatusCode.INTERNAL)
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_MAX_CACHED = 100_000


def status_for(error: BaseException) -> tuple[int, grpc.StatusCode]:
    for kind, http, code in ERROR_TABLE:
        if isinstance(error, kind):
            return http, code
    return _INTERNAL


class Answer(bytes):
    """One serialized ProcessingResponse, the bytes to send as they are (so the hot path
    hands the transport one object); ``final``: Envoy needs nothing more on this stream."""

    __slots__ = ()
    final = True


class PartialAnswer(Answer):
    """An answer after which Envoy sends more on the stream (the request body)."""

    __slots__ = ()
    final = False


class ExternalProcessor:
    """The decisions of the ext_proc service, free of any transport.

    ``answer`` takes each ProcessingRequest of a stream in turn. On a hit or an
    error it returns the Answer at once; on a miss it returns an awaitable, and
    the transport first sends ``extend_timeout`` (the load may take longer
    than Envoy's message_timeout) and then the awaited Answer.
    """

    def __init__(
        self,
        router: Router,
        *,
        miss_timeout: float,
        shadow_clusters: Mapping[str, str] = protocol.SHADOW_CLUSTERS,
    ) -> None:
        self._router = router
        self._shadow_clusters = shadow_clusters  # wire form -> the cluster a copy goes to
        # The serialization memo: Route -> its forward, for request headers (to the pods'
        # gRPC port), for a gRPC body, and for an OIP REST request (to their REST port).
        # Routes the router no longer hands out go with the rest at the bound.
        # (Keys are Routes; a Miss is looked up, never found.)
        self._for_headers: dict[Route | Miss, Answer] = {}
        self._for_body: dict[Route | Miss, Answer] = {}
        self._for_oip: dict[Route | Miss, Answer] = {}
        self._ask_for_body = PartialAnswer(
            pb.ProcessingResponse(
                request_headers=pb.HeadersResponse(),
                # the body up to Envoy's buffer limit; the rest of a larger one streams on
                mode_override=ProcessingMode(request_body_mode=ProcessingMode.BUFFERED_PARTIAL),
            ).SerializeToString()
        )
        self.extend_timeout = pb.ProcessingResponse(
            override_message_timeout=duration_pb2.Duration(seconds=int(miss_timeout))
        ).SerializeToString()

    def answer(self, request: pb.ProcessingRequest) -> Answer | Awaitable[Answer]:
        kind = request.WhichOneof("request")
        in_body = kind == "request_body"
        try:
            if kind == "request_headers":
                key = route_key.from_headers(request.request_headers.headers.headers)
                if key is NEED_OPENAI_MODEL:
                    key = route_key.from_openai(_openai_fields(request))
                elif key is NEED_BODY:
                    if request.request_headers.end_of_stream:  # no body will come to ask for
                        raise InvalidInput(route_key.NO_MESSAGE)
                    return self._ask_for_body
            elif in_body:
                sent = request.request_body
                key = route_key.from_grpc_frame(sent.body, complete=sent.end_of_stream)
            else:  # not enabled in envoy.yaml; let it pass unchanged
                log.warning("ext_proc: unexpected %s message", kind)
                return PartialAnswer(_passthrough(kind))
        except UnknownRoute as exc:
            return self._reject(exc, request, grpc_call=exc.grpc)
        except InvalidInput as exc:  # a gRPC call's headers or body, an OpenAI request's body
            grpc_call = kind != "request_headers" or _path(request) not in protocol.OPENAI_PATHS
            return self._reject(exc, request, grpc_call=grpc_call)
        assert isinstance(key, RouteKey)
        try:
            found = self._router.hit(key)
        except Exception as exc:
            return self._reject(exc, request, grpc_call=key.grpc)
        # The hot path: a Route served before (a Miss is never in the memo).
        memo = self._for_body if in_body else self._for_oip if key.oip else self._for_headers
        answer = memo.get(found)
        if answer is None:
            if isinstance(found, Miss):
                return self._load_then_forward(found, key, memo, in_body, request)
            try:
                answer = self._forward(found, key, memo, in_body)
            except Exception as exc:
                return self._reject(exc, request, grpc_call=key.grpc)
        if self._router.shadows and isinstance(found, Route):  # a mirror may want a copy
            return self._with_shadow(found, key, in_body) or answer
        return answer

    async def _load_then_forward(
        self,
        miss: Miss,
        key: RouteKey,
        memo: dict[Route | Miss, Answer],
        in_body: bool,
        request: pb.ProcessingRequest,
    ) -> Answer:
        if log.isEnabledFor(logging.DEBUG):  # one line per waiting request: DEBUG, as a burst
            request_id = _request_id(request)  # of them waits for one load (logged at INFO)
            log.debug(
                "request %s: model %s is not loaded: it waits for the load",
                request_id,
                miss.model_id,
                extra=logs.for_request(request_id),
            )
        try:
            route = await self._router.load(miss)
            return memo.get(route) or self._forward(route, key, memo, in_body)
        except Exception as exc:
            return self._reject(exc, request, grpc_call=key.grpc)

    def _forward(
        self, route: Route, key: RouteKey, memo: dict[Route | Miss, Answer], in_body: bool
    ) -> Answer:
        """Serialize the forward of a Route not in ``memo`` (the memo of the request's form)
        and keep it there."""
        if len(memo) >= _MAX_CACHED:
            memo.clear()
        answer = memo[route] = Answer(
            _forward_response(
                route,
                self._upstream(route, key.oip),
                in_body,
                named=self._router.named_in_request(route),
            )
        )
        return answer

    def _upstream(self, route: Route, oip: bool) -> str:
        """x-mmgw-upstream for ``route``: its pods' REST listeners for the OIP form, their
        gRPC ports otherwise; the chosen pod first, then the model's other copies."""
        if oip:
            return self._router.rest_upstream(route)
        return self._router.grpc_upstream(route)

    def _with_shadow(self, route: Route, key: RouteKey, in_body: bool) -> Answer | None:
        """The forward of ``route`` with a copy of the request for the mirror the router
        draws (never memoized: the draw is per request); None when there is no copy."""
        try:
            shadow = self._router.shadow(key)
            if shadow is None:
                return None
            copy_to = self._upstream(shadow, key.oip)
            upstream = self._upstream(route, key.oip)
        except Exception:  # a mirror never changes what the client gets
            log.debug("ext_proc: no copy for the mirror", exc_info=True)
            return None
        cluster = self._shadow_clusters["oip" if key.oip else "grpc"]
        copy = (cluster, copy_to, shadow.model_id or "")
        named = self._router.named_in_request(route)
        return Answer(_forward_response(route, upstream, in_body, copy, named=named))

    def _reject(
        self, error: BaseException, request: pb.ProcessingRequest, *, grpc_call: bool
    ) -> Answer:
        http, code = status_for(error)
        if isinstance(error, GatewayError):
            message = error.message
            # the client's mistakes only when asked for; what the gateway could not do, always
            level = logging.DEBUG if http < 500 else logging.WARNING
            if log.isEnabledFor(level):
                request_id = _request_id(request)
                log.log(
                    level,
                    "request %s: %s %s",
                    request_id,
                    code.name,
                    message,
                    extra=logs.for_request(request_id),
                )
        else:
            request_id = _request_id(request)
            log.error(
                "request %s: unexpected error",
                request_id,
                exc_info=error,
                extra=logs.for_request(request_id),
            )
            message = "internal error in the gateway"
        return Answer(_immediate(http, code, message, grpc_call).SerializeToString())


def _openai_fields(request: pb.ProcessingRequest) -> dict[str, object]:
    """What Envoy's json_to_metadata filter read of an OpenAI request's body."""
    namespaces = request.metadata_context.filter_metadata
    if protocol.OPENAI_METADATA not in namespaces:
        return {}
    return dict(json_format.MessageToDict(namespaces[protocol.OPENAI_METADATA]))


def _path(request: pb.ProcessingRequest) -> str:
    for header in request.request_headers.headers.headers:
        if header.key == ":path":
            return (header.raw_value.decode(errors="replace") or header.value).split("?", 1)[0]
    return ""


def _request_id(request: pb.ProcessingRequest) -> str:
    """The request's x-request-id (Envoy sends it with the headers; "-" for a body message)."""
    if request.WhichOneof("request") == "request_headers":
        for header in request.request_headers.headers.headers:
            if header.key == protocol.REQUEST_ID_HEADER:
                return (header.raw_value.decode(errors="replace") or header.value)[:128]
    return "-"


def _set(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE
    )


def _forward_response(
    route: Route,
    upstream: str,
    body: bool,
    copy: tuple[str, str, str] | None = None,
    *,
    named: bool = False,
) -> bytes:
    """``copy``: (cluster, pods, concrete id) of a mirror that gets a copy of the request;
    None: no copy, and a client's own shadow header is removed. ``named``: the pod picks
    the model by the request's own name (MLServer): Envoy writes the concrete id there."""
    headers = [_set(protocol.UPSTREAM_HEADER, upstream)]
    if route.model_id is not None:
        headers.append(_set(protocol.MODEL_ID_HEADER, route.model_id))
    if route.per_try_timeout_ms is not None:
        headers.append(_set(protocol.PER_TRY_TIMEOUT_HEADER, str(route.per_try_timeout_ms)))
    removed: list[str] = []
    if named and route.model_id is not None:
        headers.append(_set(protocol.NAME_IN_REQUEST_HEADER, protocol.NAME_IN_REQUEST))
    else:
        removed.append(protocol.NAME_IN_REQUEST_HEADER)
    if copy is None:
        removed.append(protocol.SHADOW_CLUSTER_HEADER)
    else:
        cluster, pods, model_id = copy
        headers.append(_set(protocol.SHADOW_CLUSTER_HEADER, cluster))
        headers.append(_set(protocol.SHADOW_UPSTREAM_HEADER, pods))
        headers.append(_set(protocol.SHADOW_MODEL_HEADER, model_id))
    common = pb.CommonResponse(
        header_mutation=pb.HeaderMutation(set_headers=headers, remove_headers=removed)
    )
    if body:
        response = pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    else:
        response = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))
    return response.SerializeToString()


def _immediate(
    http: int, code: grpc.StatusCode, message: str, grpc_call: bool
) -> pb.ProcessingResponse:
    # A plain message: Envoy's local_reply_config shapes it as google.rpc.Status
    # JSON for REST clients, and sends it as grpc-message to gRPC clients.
    immediate = pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=200 if grpc_call else http),
        body=message.encode(),
        details=f"mmgw_{code.name.lower()}",
    )
    if grpc_call:
        immediate.grpc_status.status = code.value[0]
    return pb.ProcessingResponse(immediate_response=immediate)


def _passthrough(kind: str) -> bytes:
    empty = {
        "response_headers": pb.HeadersResponse(),
        "response_body": pb.BodyResponse(),
        "request_trailers": pb.TrailersResponse(),
        "response_trailers": pb.TrailersResponse(),
    }
    return pb.ProcessingResponse(**{kind: empty[kind]}).SerializeToString()
