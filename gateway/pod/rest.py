"""The pod's REST adapter: the Open Inference Protocol (KServe V2) over HTTP/1.1.

As MLServer and Triton do, a pod serves V2 REST itself, on a listener beside
its gRPC one; Envoy sends it the requests in the OIP form (``data`` or
Triton's binary extension, and every GET), the protobuf-JSON form going
through the transcoder to the gRPC port instead. Endpoints:

- ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``;
- ``GET /v2/models/{name}[/versions/{v}]`` (metadata), ``.../ready``;
- ``POST /v2/models/{name}[/versions/{v}]/infer``;
- ``POST /v1/completions``, ``POST /v1/chat/completions``: OpenAI's API, for models that
  generate text (gateway.pod.openai_api), streamed as server-sent events when asked
  (``StreamReply``: chunked, each event written as it comes; a client that goes away
  cancels the answer, which stops the generation).

The model served is the one the ``mm-model-id`` header names (the concrete id
the gateway sets), else the path's name. Errors are ``{"error": "<message>"}``
with the HTTP status of the gRPC code the pod's error table gives
(``gateway.pod.servicer.grpc_status``), mapped as gRPC-HTTP transcoding maps
them; the body codec is ``gateway.pod.oip``.

The HTTP/1.1 server is an asyncio protocol over httptools (the parser uvicorn
uses): keep-alive, requests on a connection answered in order, bodies bounded
by ``max_body`` (413), header blocks by 64 KiB (431).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import grpc
import httptools

import gateway
from gateway.core import logs
from gateway.core.errors import GatewayError, InvalidInput, UnknownRoute
from gateway.core.protocol import MODEL_ID_HEADER, MODEL_VERSION, REQUEST_ID_HEADER
from gateway.pod.tracing import Tracing

from . import offload, oip
from .model import decode_for
from .openai_api import CHAT, COMPLETIONS, OpenAIApp, error_body
from .repository import ModelRepository
from .servicer import SERVER_NAME, grpc_status

log = logging.getLogger(__name__)

# gRPC code -> HTTP status, as gRPC-HTTP transcoding (and Envoy's convert_grpc_status) maps them.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
MAX_HEADER_BYTES = 64 * 1024
_JSON = b"application/json"
_EVENTS = b"text/event-stream"
_OPENAI_PATHS = {"/v1/completions": COMPLETIONS, "/v1/chat/completions": CHAT}
_BINARY = b"application/octet-stream"
# The spec's health answers: the status says it, the body says it again.
_LIVE, _READY, _NOT_READY = (
    oip.dumps({"live": True}),
    oip.dumps({"ready": True}),
    oip.dumps({"ready": False}),
)
_SERVER_METADATA = oip.dumps(
    {"name": SERVER_NAME, "version": gateway.__version__, "extensions": ["binary_tensor_data"]}
)


@dataclass(slots=True)
class Request:
    method: str = ""
    url: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    keep_alive: bool = True


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: bytes = _JSON
    header_length: int | None = None  # the binary extension's JSON length

    @classmethod
    def error(cls, status: int, message: str) -> Reply:
        return cls(status, oip.dumps({"error": message}))


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A 200 whose body is written piece by piece as ``chunks`` yields it (chunked)."""

    chunks: AsyncGenerator[bytes, None]
    content_type: bytes = _EVENTS


class OipApp:
    """The endpoints: a Request in, a Reply out. Knows nothing of HTTP/1.1 framing."""

    def __init__(
        self, models: ModelRepository, ready: asyncio.Event, tracing: Tracing | None = None
    ) -> None:
        self._models = models
        self._ready = ready
        self._tracing = tracing or Tracing("", "")
        self._openai = OpenAIApp(models)

    async def handle(self, request: Request) -> Reply | StreamReply:
        path = request.url.decode("latin-1").split("?", 1)[0]
        kind = _OPENAI_PATHS.get(path)
        if kind is not None:
            return await self._openai_answer(request, kind)
        try:
            return await self._route(request, path)
        except _MethodNotAllowed as exc:
            return Reply.error(405, exc.message)
        except UnknownRoute as exc:
            return Reply.error(404, exc.message)
        except Exception as exc:
            code, details = grpc_status(exc)
            request_id = request.headers.get(REQUEST_ID_HEADER, "-")[:128]
            url = request.url.decode("latin-1")[:256]
            if code is grpc.StatusCode.INTERNAL and not isinstance(exc, GatewayError):
                log.error(
                    "request %s: %s %s failed",
                    request_id,
                    request.method,
                    url,
                    exc_info=True,
                    extra=logs.for_request(request_id),
                )
            else:
                log.info(
                    "request %s: %s %s: %s: %s",
                    request_id,
                    request.method,
                    url,
                    code.name,
                    details,
                    extra=logs.for_request(request_id),
                )
            return Reply.error(HTTP_STATUS.get(code, 500), details)

    async def _openai_answer(self, request: Request, kind: str) -> Reply | StreamReply:
        try:
            _require(request, "POST")
            checked, model_id, ids = await self._openai.prepare(
                kind, request.headers, bytes(request.body)
            )
            if checked.stream:
                return StreamReply(self._openai.events(checked, model_id, ids))
            return Reply(200, await self._openai.complete(checked, model_id, ids))
        except _MethodNotAllowed as exc:
            return Reply(405, error_body(405, exc.message))
        except Exception as exc:
            code, details = grpc_status(exc)
            status = HTTP_STATUS.get(code, 500)
            if status >= 500:
                log.error("%s %s failed", request.method, kind, exc_info=exc)
            return Reply(status, error_body(status, details))

    async def _route(self, request: Request, path: str) -> Reply:
        parts = path.split("/")  # "", "v2", ...
        if parts[:2] != ["", "v2"]:
            raise UnknownRoute(f"unknown path {path!r}")
        rest = parts[2:]
        if rest in ([], [""]):
            _require(request, "GET")
            return Reply(200, _SERVER_METADATA)
        if rest == ["health", "live"]:
            _require(request, "GET")
            return Reply(200, _LIVE)
        if rest == ["health", "ready"]:
            _require(request, "GET")
            ready = self._ready.is_set()
            return Reply(200 if ready else 503, _READY if ready else _NOT_READY)
        if rest[0] != "models" or len(rest) < 2 or not rest[1]:
            raise UnknownRoute(f"unknown path {path!r}")
        name, version, tail = unquote(rest[1]), MODEL_VERSION, rest[2:]
        if tail[:1] == ["versions"] and len(tail) >= 2 and tail[1]:
            version, tail = unquote(tail[1]), tail[2:]
        model_id = request.headers.get(MODEL_ID_HEADER) or name
        if not tail:
            _require(request, "GET")
            metadata = self._models.get(model_id).metadata()
            return Reply(200, oip.encode_metadata(model_id, version, metadata))
        if tail == ["ready"]:
            _require(request, "GET")
            self._models.get(model_id)
            return Reply(200, oip.dumps({"name": model_id, "ready": True}))
        if tail == ["infer"]:
            _require(request, "POST")
            if self._tracing.enabled:
                with self._tracing.span("infer", request.headers, {"mmgw.model_id": model_id}):
                    return await self._infer(request, model_id, version)
            return await self._infer(request, model_id, version)
        raise UnknownRoute(f"unknown path {path!r}")

    async def _infer(self, request: Request, model_id: str, version: str) -> Reply:
        encoding = request.headers.get("content-encoding", "identity")
        if encoding != "identity":
            return Reply.error(
                415, f"Content-Encoding {encoding!r} is not supported; send identity"
            )
        json_length = request.headers.get(oip.HEADER_LENGTH)
        await self._models.prepare(model_id)
        with self._models.serving(model_id) as model:
            raw = bytes(request.body)
            body = await offload.sized(
                lambda: decode_for(
                    model,
                    lambda: oip.decode_infer(raw, json_length),
                    lambda: oip.declared_inputs(raw, json_length),
                ),
                size=len(raw),
                inline_below=offload.DECODE_INLINE_BYTES,
            )
            outputs = await self._models.predict(model, body.request)
            data, header_length = oip.encode_infer(model_id, version, body, outputs)
        if header_length is None:
            return Reply(200, data)
        return Reply(200, data, _BINARY, header_length)


class _MethodNotAllowed(InvalidInput):
    pass


def _require(request: Request, method: str) -> None:
    """_MethodNotAllowed (405) unless ``request`` uses ``method`` (HEAD counts as GET)."""
    if request.method != method and not (method == "GET" and request.method == "HEAD"):
        raise _MethodNotAllowed(f"{request.method} is not allowed here; use {method}")


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection: parse with httptools, answer each request in order."""

    def __init__(self, app: OipApp, max_body: int, connections: set[HttpConnection]) -> None:
        self._app = app
        self._max_body = max_body
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._current = Request()
        self._header_bytes = 0
        self._header_name = ""
        self._pending: deque[Request] = deque()
        self._worker: asyncio.Task[None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        if self._worker is not None:
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Reply.error(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:  # a callback's refusal arrives wrapped in one
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._fail(refused.reply)
            else:
                self._fail(Reply.error(400, f"malformed HTTP request: {exc}"))

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._current = Request()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._current.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        key = name.decode("latin-1").lower()
        self._current.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        request = self._current
        request.method = self._parser.get_method().decode("latin-1")
        request.keep_alive = self._parser.should_keep_alive()
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise _Refused(Reply.error(413, f"the body is over the {self._max_body}-byte limit"))

    def on_body(self, body: bytes) -> None:
        self._current.body += body
        if len(self._current.body) > self._max_body:
            raise _Refused(Reply.error(413, f"the body is over the {self._max_body}-byte limit"))

    def on_message_complete(self) -> None:
        self._pending.append(self._current)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._answer_all())
        if len(self._pending) > 8 and self._transport is not None:
            self._transport.pause_reading()  # a client that pipelines without reading

    # -- answering

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Refused(Reply.error(431, f"the header block is over {MAX_HEADER_BYTES} bytes"))

    async def _answer_all(self) -> None:
        while self._pending and self._transport is not None:
            request = self._pending.popleft()
            reply = await self._app.handle(request)
            if isinstance(reply, StreamReply):
                await self._stream(reply, request.keep_alive)
            else:
                self._write(reply, request.keep_alive, head=request.method == "HEAD")
            if not request.keep_alive:
                self.close()
                return
            if len(self._pending) <= 8 and self._transport is not None:
                self._transport.resume_reading()

    def _write(self, reply: Reply, keep_alive: bool, *, head: bool = False) -> None:
        if self._transport is None:
            return
        lines = [
            b"HTTP/1.1 %d %s" % (reply.status, _REASONS.get(reply.status, "Error").encode()),
            b"content-type: " + reply.content_type,
            b"content-length: %d" % len(reply.body),
        ]
        if reply.header_length is not None:
            lines.append(b"inference-header-content-length: %d" % reply.header_length)
        if not keep_alive:
            lines.append(b"connection: close")
        head_bytes = b"\r\n".join(lines) + b"\r\n\r\n"
        self._transport.write(head_bytes if head else head_bytes + reply.body)

    async def _stream(self, reply: StreamReply, keep_alive: bool) -> None:
        """Write ``reply`` chunk by chunk as it comes. The connection closing cancels this
        task (connection_lost), which closes ``reply.chunks``: its producer stops."""
        lines = [
            b"HTTP/1.1 200 OK",
            b"content-type: " + reply.content_type,
            b"cache-control: no-cache",
            b"transfer-encoding: chunked",
        ]
        if not keep_alive:
            lines.append(b"connection: close")
        if self._transport is None:
            return
        self._transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        try:
            async with contextlib.aclosing(reply.chunks) as chunks:
                async for chunk in chunks:
                    if self._transport is None:
                        return
                    self._transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        except Exception:  # the status is sent: all that is left is to end the connection
            log.exception("a streamed answer failed after it began")
            self.close()
            return
        if self._transport is not None:
            self._transport.write(b"0\r\n\r\n")

    def _fail(self, reply: Reply) -> None:
        """A request that cannot be read: answer it and close (the stream is out of step)."""
        self._pending.clear()
        self._write(reply, keep_alive=False)
        self.close()

    @property
    def answering(self) -> asyncio.Task[None] | None:
        """The task answering this connection's requests, while it runs."""
        worker = self._worker
        return worker if worker is not None and not worker.done() else None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _Refused(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class RestServer:
    """The listener: ``start()`` binds (port 0 picks one) and returns the port; ``stop()``."""

    def __init__(self, app: OipApp, host: str, port: int, *, max_body: int) -> None:
        self._app = app
        self._host, self._port = host, port
        self._max_body = max_body
        self._server: asyncio.Server | None = None
        self._connections: set[HttpConnection] = set()

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        factory: Callable[[], Any] = lambda: HttpConnection(  # noqa: E731
            self._app, self._max_body, self._connections
        )
        self._server = await loop.create_server(
            factory, self._host.strip("[]"), self._port, reuse_address=True
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests being answered finish for ``grace`` seconds, close."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        busy = [c.answering for c in self._connections if c.answering is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for connection in list(self._connections):
            connection.close()
        await server.wait_closed()
