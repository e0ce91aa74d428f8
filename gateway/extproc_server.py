"""The ext_proc transport: gRPC for one method over HTTP/2, on h2 and asyncio.

Envoy opens one ExternalProcessor/Process stream per HTTP request, so the cost
of a gRPC stream is paid on every request. grpc.aio spends about 270 us of CPU
on each (cygrpc and asyncio task churn, measured in the ext_proc process at
c=16); this server, speaking the one bidi method we serve with the h2 protocol
library, about 165 us. The gRPC part is small: 5-byte length-prefixed
messages, response headers, trailers with grpc-status.

The decisions stay in gateway.extproc.ExternalProcessor; this module only
moves bytes. A stream ends with grpc-status 0 as soon as its final answer is
sent (Envoy closes the side stream once it needs nothing more, too). Any other
path gets UNIMPLEMENTED; a malformed message ends its stream with
INVALID_ARGUMENT, which Envoy turns into status_on_error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.message import DecodeError

from gateway.extproc import Answer, ExternalProcessor

log = logging.getLogger(__name__)

PROCESS_PATH = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
MAX_MESSAGE_BYTES = 64 << 20  # a buffered gRPC request body, plus room
_WINDOW = 16 << 20
_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


def _trailers(code: int, message: str = "") -> list[tuple[bytes, bytes]]:
    trailers = [(b"grpc-status", str(code).encode())]
    if message:
        trailers.append((b"grpc-message", message.encode()))
    return trailers


_OK = _trailers(0)


class _Stream:
    __slots__ = ("buffer", "started", "task", "done")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.started = False  # response headers sent
        self.task: asyncio.Task[None] | None = None
        self.done = False  # trailers sent


class _Connection(asyncio.Protocol):
    def __init__(self, processor: ExternalProcessor, connections: set[_Connection]) -> None:
        self._processor = processor
        self._connections = connections
        self._h2 = h2.connection.H2Connection(_CONFIG)
        self._streams: dict[int, _Stream] = {}
        self._transport: asyncio.Transport | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(self)
        self._h2.initiate_connection()
        self._h2.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100_000,
            }
        )
        self._h2.increment_flow_control_window(_WINDOW)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self._streams.clear()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("ext_proc: HTTP/2 protocol error from Envoy: %s", exc)
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                self._data(event)  # type: ignore[arg-type]
            elif kind is h2.events.RequestReceived:
                self._request(event)  # type: ignore[arg-type]
            elif kind is h2.events.StreamEnded:
                self._ended(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.StreamReset:
                self._forget(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.ConnectionTerminated and self._transport is not None:
                self._transport.close()
        self._flush()

    # -- HTTP/2 events ------------------------------------------------------

    def _request(self, event: h2.events.RequestReceived) -> None:
        path = next((v for k, v in event.headers or () if k == b":path"), b"")
        if path != PROCESS_PATH:
            self._h2.send_headers(event.stream_id, [*_RESPONSE_HEADERS, *_trailers(12, "unknown method")],
                                  end_stream=True)
            return
        self._streams[event.stream_id] = _Stream()

    def _data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        self._h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        stream = self._streams.get(stream_id)
        if stream is None or stream.done:
            return
        buffer = stream.buffer
        buffer += event.data
        while len(buffer) >= 5:
            size = int.from_bytes(buffer[1:5], "big")
            if size > MAX_MESSAGE_BYTES or buffer[0] != 0:
                self._end(stream_id, stream, 8, "message too large or compressed")
                return
            if len(buffer) < 5 + size:
                return
            message = bytes(buffer[5 : 5 + size])
            del buffer[: 5 + size]
            self._message(stream_id, stream, message)

    def _message(self, stream_id: int, stream: _Stream, message: bytes) -> None:
        try:
            request = pb.ProcessingRequest.FromString(message)
        except DecodeError:
            self._end(stream_id, stream, 3, "malformed ProcessingRequest")
            return
        answer = self._processor.answer(request)
        if isinstance(answer, Answer):
            self._send(stream_id, stream, answer)
        else:
            self._reply(stream_id, stream, self._processor.extend_timeout)
            stream.task = asyncio.ensure_future(self._later(stream_id, stream, answer))

    async def _later(self, stream_id: int, stream: _Stream, pending: Awaitable[Answer]) -> None:
        answer = await pending
        stream.task = None
        if self._streams.get(stream_id) is stream:
            self._send(stream_id, stream, answer)
            self._flush()

    def _ended(self, stream_id: int) -> None:
        # Envoy half-closed its side; end ours unless an answer is still coming.
        stream = self._streams.get(stream_id)
        if stream is not None and stream.task is None:
            self._end(stream_id, stream, 0)

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()

    # -- sending --------------------------------------------------------------

    def _send(self, stream_id: int, stream: _Stream, answer: Answer) -> None:
        self._reply(stream_id, stream, answer.message)
        if answer.final:
            self._end(stream_id, stream, 0)

    def _reply(self, stream_id: int, stream: _Stream, message: bytes) -> None:
        if not stream.started:
            stream.started = True
            self._h2.send_headers(stream_id, _RESPONSE_HEADERS)
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        # Envoy grants large windows; a frame larger than allowed is split.
        limit = self._h2.max_outbound_frame_size
        for start in range(0, len(framed), limit):
            self._h2.send_data(stream_id, framed[start : start + limit])

    def _end(self, stream_id: int, stream: _Stream, code: int, message: str = "") -> None:
        if stream.done:
            return
        stream.done = True
        trailers = _OK if code == 0 and not message else _trailers(code, message)
        if not stream.started:
            trailers = [*_RESPONSE_HEADERS, *trailers]
        try:
            self._h2.send_headers(stream_id, trailers, end_stream=True)
        except h2.exceptions.StreamClosedError:
            pass
        self._streams.pop(stream_id, None)

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)

    def close(self) -> None:
        self._h2.close_connection()
        self._flush()
        if self._transport is not None:
            self._transport.close()


class ExtProcServer:
    """Listens on host:port and serves ExternalProcessor/Process with ``processor``."""

    def __init__(self, processor: ExternalProcessor, host: str, port: int) -> None:
        self._processor = processor
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self._processor, self._connections), self._host, self._port
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
