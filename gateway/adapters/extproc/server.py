"""The ext_proc transport: the asyncio protocol around the sans-IO HTTP/2 connection.

Envoy opens one ExternalProcessor/Process stream per HTTP request, so the cost
of a gRPC stream is paid on every request, and on a 2-core machine every
microsecond of it is taken from Envoy and the pods. Measured in the ext_proc
process under the same load (c=16, fixed answer): grpc.aio spends about 270 us
of CPU per stream, a server on the general-purpose h2 library about 165 us;
this one, which speaks only what the one bidi method needs
(gateway.adapters.extproc.h2), far less (see the README's benchmark figures).

Two methods are served:

- ``/envoy.service.ext_proc.v3.ExternalProcessor/Process``: each
  ProcessingRequest goes to the ExternalProcessor (the decisions); a stream
  ends with grpc-status 0 as soon as its final answer is sent (Envoy closes
  the side stream once it needs nothing more, too). A miss's answer comes
  later: the processor's ``extend_timeout`` first, then the awaited answer.
- ``/grpc.health.v1.Health/Check``: SERVING for the whole server ("") and for
  the ExternalProcessor service, NOT_FOUND for any other name; Envoy's active
  health check of the ext_proc cluster asks it.
- ``/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs``, when the
  server is given an AccessLogReader: Envoy's access log, a long-lived stream
  of batches of finished requests (gateway.adapters.extproc.accesslog); it is
  answered only when Envoy ends it.

Any other path gets UNIMPLEMENTED; a malformed message ends its stream with an
error status, which Envoy turns into status_on_error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import cast

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.message import DecodeError

from gateway.adapters.extproc import h2
from gateway.adapters.extproc.accesslog import STREAM_ACCESS_LOGS_PATH, AccessLogReader
from gateway.adapters.extproc.processor import Answer, ExternalProcessor

log = logging.getLogger(__name__)

PROCESS_PATH = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
HEALTH_CHECK_PATH = b"/grpc.health.v1.Health/Check"
PROCESSOR_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
# grpc.health.v1.HealthCheckResponse{status: SERVING} (field 1, varint 1), as serialized.
SERVING = b"\x08\x01"
GRPC_NOT_FOUND = 5


def health_service(request: bytes) -> str:
    """The ``service`` of a serialized grpc.health.v1.HealthCheckRequest (field 1, a string).

    ValueError when the message is not one."""
    service = ""
    i = 0
    while i < len(request):
        tag = request[i]
        if tag != 0x0A:  # field 1, length-delimited: the only field the message has
            raise ValueError(f"unexpected field tag {tag:#x}")
        length, shift, i = 0, 0, i + 1
        while True:
            if i >= len(request) or shift > 28:
                raise ValueError("truncated length")
            byte = request[i]
            length |= (byte & 0x7F) << shift
            shift, i = shift + 7, i + 1
            if not byte & 0x80:
                break
        if i + length > len(request):
            raise ValueError("truncated string")
        service = request[i : i + length].decode()
        i += length
    return service


class _Connection(asyncio.Protocol):
    def __init__(
        self,
        processor: ExternalProcessor,
        connections: set[_Connection],
        access_log: AccessLogReader | None,
    ) -> None:
        self._processor = processor
        self._connections = connections
        self._access_log = access_log
        self._logs: set[int] = set()  # streams of StreamAccessLogs
        self._transport: asyncio.Transport | None = None
        self._h2 = h2.Connection(self)
        self._health: set[int] = set()  # streams of Health/Check
        self._later: dict[int, asyncio.Task[None]] = {}  # streams whose answer is awaited

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._connections.add(self)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        for task in self._later.values():
            task.cancel()
        self._later.clear()

    def data_received(self, data: bytes) -> None:
        was_closed = self._h2.closed
        self._h2.receive(data)
        if self._h2.error and not was_closed:
            log.warning(
                "ext_proc: HTTP/2 error from Envoy, closing the connection: %s", self._h2.error
            )
        self._flush()
        if self._h2.peer_going_away and not self._h2.open_streams:
            self.close()

    # -- h2.Handler -----------------------------------------------------------

    def request(self, stream_id: int, path: bytes) -> None:
        if path == HEALTH_CHECK_PATH:
            self._health.add(stream_id)
        elif path == STREAM_ACCESS_LOGS_PATH and self._access_log is not None:
            self._logs.add(stream_id)
        elif path != PROCESS_PATH:
            self._h2.end(
                stream_id, h2.GRPC_UNIMPLEMENTED, f"unknown method {path.decode(errors='replace')}"
            )

    def message(self, stream_id: int, message: bytes) -> None:
        if stream_id in self._health:
            self._health_check(stream_id, message)
            return
        if stream_id in self._logs:
            assert self._access_log is not None
            self._access_log.message(message)
            return
        try:
            request = pb.ProcessingRequest.FromString(message)
        except DecodeError:
            self._h2.end(stream_id, h2.GRPC_INVALID_ARGUMENT, "malformed ProcessingRequest")
            return
        answer = self._processor.answer(request)
        if isinstance(answer, Answer):
            self._send(stream_id, answer)
        else:
            self._h2.send(stream_id, self._processor.extend_timeout)
            self._later[stream_id] = asyncio.ensure_future(self._answer_later(stream_id, answer))

    def input_ended(self, stream_id: int) -> None:
        """Envoy half-closed its side: end ours unless an answer is still coming."""
        self._health.discard(stream_id)
        if stream_id in self._logs:  # StreamAccessLogsResponse, an empty message
            self._logs.discard(stream_id)
            self._h2.send(stream_id, b"")
        if stream_id not in self._later:
            self._h2.end(stream_id)

    def reset(self, stream_id: int) -> None:
        self._health.discard(stream_id)
        self._logs.discard(stream_id)
        task = self._later.pop(stream_id, None)
        if task is not None:
            task.cancel()

    # -- answers ----------------------------------------------------------------

    def _health_check(self, stream_id: int, message: bytes) -> None:
        try:
            service = health_service(message)
        except ValueError as exc:
            self._h2.end(
                stream_id, h2.GRPC_INVALID_ARGUMENT, f"malformed HealthCheckRequest: {exc}"
            )
            return
        if service in ("", PROCESSOR_SERVICE):
            self._h2.send(stream_id, SERVING)
            self._h2.end(stream_id)
        else:
            self._h2.end(stream_id, GRPC_NOT_FOUND, f"unknown service {service}")

    async def _answer_later(self, stream_id: int, pending: Awaitable[Answer]) -> None:
        answer = await pending
        self._later.pop(stream_id, None)
        if self._h2.is_open(stream_id):
            self._send(stream_id, answer)
            self._flush()

    def _send(self, stream_id: int, answer: Answer) -> None:
        self._h2.send(stream_id, answer)
        if answer.final:
            self._h2.end(stream_id)

    def _flush(self) -> None:
        out = self._h2.data_to_send()
        if out and self._transport is not None:
            self._transport.write(out)
        if self._h2.closed and self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        self._h2.close()
        self._flush()


class ExtProcServer:
    """Listens on host:port and serves ExternalProcessor/Process with ``processor`` (and
    Envoy's access log with ``access_log``, when given)."""

    def __init__(
        self,
        processor: ExternalProcessor,
        host: str,
        port: int,
        *,
        access_log: AccessLogReader | None = None,
    ) -> None:
        self._processor = processor
        self._access_log = access_log
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return cast(int, self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self._processor, self._connections, self._access_log),
            self._host,
            self._port,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
