"""The ext_proc transport: gRPC for one method over HTTP/2, on asyncio.

Envoy opens one ExternalProcessor/Process stream per HTTP request, so the cost
of a gRPC stream is paid on every request, and on a 2-core machine every
microsecond of it is taken from Envoy and the pods. Measured in the ext_proc
process under the same load (c=16, fixed answer): grpc.aio spends about 270 us
of CPU per stream, a server on the general-purpose h2 library about 165 us;
this one, which speaks only what the one bidi method needs, far less (see the
README's benchmark figures).

What it speaks (RFC 9113): the connection preface; SETTINGS (acknowledged,
INITIAL_WINDOW_SIZE and MAX_FRAME_SIZE honoured); PING; WINDOW_UPDATE and
flow control on what it sends, window updates for what it receives; HEADERS
with CONTINUATION, padding and priority; DATA; RST_STREAM; GOAWAY. Header
blocks are decoded by the hpack library; the few it sends are constant
literals that never touch the dynamic table. gRPC on top: 5-byte
length-prefixed messages, response headers, trailers with grpc-status.

The decisions stay in gateway.adapters.extproc.processor.ExternalProcessor; this module moves
bytes. A stream ends with grpc-status 0 as soon as its final answer is sent
(Envoy closes the side stream once it needs nothing more, too). Any other path
gets UNIMPLEMENTED; a malformed or oversized message ends its stream with an
error status, which Envoy turns into status_on_error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import cast
from urllib.parse import quote

import hpack
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.message import DecodeError

from gateway.adapters.extproc.processor import Answer, ExternalProcessor

log = logging.getLogger(__name__)

PROCESS_PATH = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_MESSAGE_BYTES = 64 << 20  # a buffered gRPC request body, plus room
MAX_FRAME = 1 << 20  # largest frame we accept (our SETTINGS_MAX_FRAME_SIZE)
WINDOW = 1 << 30  # receive window we grant, per stream and per connection

# Frame types and flags (RFC 9113 section 6).
(
    DATA,
    HEADERS,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    PUSH_PROMISE,
    PING,
    GOAWAY,
    WINDOW_UPDATE,
    CONTINUATION,
) = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS = (
    0x4,
    0x5,
    0x3,
)
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6


class ProtocolError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as 'literal without indexing, new name' (RFC 7541 6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


# ":status: 200" is static-table entry 8; content-type (entry 31) as a literal.
RESPONSE_HEADERS = b"\x88" + _hpack_int(31, 4) + _hpack_int(16, 7) + b"application/grpc"


def trailers(code: int, message: str = "") -> bytes:
    block = _literal(b"grpc-status", str(code).encode())
    if message:  # gRPC percent-encodes grpc-message
        block += _literal(
            b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()
        )
    return block


OK_TRAILERS = trailers(0)


class _Stream:
    __slots__ = ("buffer", "started", "ended", "task", "window", "pending", "unacked")

    def __init__(self, window: int) -> None:
        self.buffer = bytearray()
        self.started = False  # response headers sent
        self.ended = False  # trailers queued: nothing more is read or sent
        self.task: asyncio.Task[None] | None = None  # an answer being awaited (a model loading)
        self.window = window  # what we may still send
        self.pending = bytearray()  # frames held back by flow control (DATA, then trailers)
        self.unacked = 0  # bytes received and not yet granted back


class _Connection(asyncio.Protocol):
    def __init__(self, processor: ExternalProcessor, connections: set[_Connection]) -> None:
        self._processor = processor
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface = False
        self._decoder = hpack.Decoder()
        self._decoded: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._streams: dict[int, _Stream] = {}
        self._headers: tuple[int, int, bytearray] | None = (
            None  # stream, flags, block awaiting CONTINUATION
        )
        self._peer_window = 65_535  # initial stream send window the peer granted
        self._peer_frame = 16_384  # largest frame the peer accepts
        self._send_window = 65_535  # connection send window
        self._unacked = 0  # connection bytes received and not yet granted back
        self._out = bytearray()

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._connections.add(self)
        settings = b"".join(
            key.to_bytes(2, "big") + value.to_bytes(4, "big")
            for key, value in (
                (SETTINGS_INITIAL_WINDOW_SIZE, WINDOW),
                (SETTINGS_MAX_FRAME_SIZE, MAX_FRAME),
                (SETTINGS_MAX_CONCURRENT_STREAMS, 1 << 20),
            )
        )
        self._transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, (WINDOW - 65_535).to_bytes(4, "big"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        for stream in self._streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self._streams.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        try:
            if not self._preface:
                if len(buffer) < len(PREFACE):
                    return
                if buffer[: len(PREFACE)] != PREFACE:
                    raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buffer[: len(PREFACE)]
                self._preface = True
            start = 0
            while len(buffer) - start >= 9:
                length = int.from_bytes(buffer[start : start + 3], "big")
                if length > MAX_FRAME:
                    raise ProtocolError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = start + 9 + length
                if end > len(buffer):
                    break
                kind, flags = buffer[start + 3], buffer[start + 4]
                stream_id = int.from_bytes(buffer[start + 5 : start + 9], "big") & 0x7FFF_FFFF
                self._frame(kind, flags, stream_id, bytes(buffer[start + 9 : end]))
                start = end
            del buffer[:start]
        except ProtocolError as exc:
            log.warning("ext_proc: HTTP/2 error from Envoy, closing the connection: %s", exc)
            self._out += frame(GOAWAY, 0, 0, (0).to_bytes(4, "big") + exc.code.to_bytes(4, "big"))
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        self._flush()

    # -- frames ---------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._headers is not None and kind != CONTINUATION:
            raise ProtocolError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._header_frame(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == RST_STREAM:
            self._forget(stream_id)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
                self._out += frame(SETTINGS, ACK, 0)
        elif kind == PING:
            if not flags & ACK:
                self._out += frame(PING, ACK, 0, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == GOAWAY:
            if self._transport is not None and not self._streams:
                self._transport.close()
        elif kind == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 requires.

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                delta, self._peer_window = value - self._peer_window, value
                for stream_id, stream in self._streams.items():
                    stream.window += delta
                    self._release(stream_id, stream)
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self._peer_frame = value

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        increment = int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF
        if stream_id == 0:
            self._send_window += increment
            for sid, waiting in list(self._streams.items()):
                self._release(sid, waiting)
        elif (stream := self._streams.get(stream_id)) is not None:
            stream.window += increment
            self._release(stream_id, stream)

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            pad = payload[0]
            if pad >= len(payload):
                raise ProtocolError(PROTOCOL_ERROR, "padding longer than the frame")
            return payload[1 : len(payload) - pad]
        return payload

    def _header_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        block = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block(flags, stream_id, block)
        else:
            self._headers = (stream_id, flags, bytearray(block))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._headers is None or self._headers[0] != stream_id:
            raise ProtocolError(PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, first_flags, block = self._headers
        block += payload
        if flags & END_HEADERS:
            self._headers = None
            self._header_block(first_flags, stream_id, bytes(block))

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Decode a header block; a repeat of one that left the dynamic table alone is served from cache.

        Envoy sends the same block (literals it does not index) on every ext_proc
        stream. Decoding it again against an unchanged table gives the same
        fields, so the cache holds only while no decode has changed the table.
        """
        cached = self._decoded.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table.dynamic_entries
        before = (len(table), table[0] if table else None)
        try:
            # raw=True: names and values as bytes, in a list
            fields = cast(list[tuple[bytes, bytes]], self._decoder.decode(block, raw=True))
        except hpack.HPACKError as exc:
            raise ProtocolError(0x9, f"bad header block: {exc}") from None  # COMPRESSION_ERROR
        if (len(table), table[0] if table else None) == before and (
            not table or table[0] is before[1]
        ):
            if len(self._decoded) < 64:
                self._decoded[block] = fields
        else:
            self._decoded.clear()
        return fields

    def _header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        fields = self._decode(block)
        stream = self._streams.get(stream_id)
        if stream is None:  # a new request
            stream = _Stream(self._peer_window)
            path = next((value for name, value in fields if name == b":path"), b"")
            self._streams[stream_id] = stream
            if path != PROCESS_PATH:
                self._end(stream_id, stream, 12, f"unknown method {path.decode(errors='replace')}")
                return
        if flags & END_STREAM:
            self._ended(stream_id)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._unacked += len(payload)
        if self._unacked >= WINDOW // 2:
            self._out += frame(WINDOW_UPDATE, 0, 0, self._unacked.to_bytes(4, "big"))
            self._unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None or stream.ended:  # already answered and ended on our side
            return
        stream.unacked += len(payload)
        if stream.unacked >= WINDOW // 2:
            self._out += frame(WINDOW_UPDATE, 0, stream_id, stream.unacked.to_bytes(4, "big"))
            stream.unacked = 0
        buffer = stream.buffer
        buffer += self._unpad(flags, payload)
        while len(buffer) >= 5:
            size = int.from_bytes(buffer[1:5], "big")
            if buffer[0] != 0:
                self._end(stream_id, stream, 12, "compressed messages are not supported")
                return
            if size > MAX_MESSAGE_BYTES:
                self._end(stream_id, stream, 8, f"message of {size} bytes is over the limit")
                return
            if len(buffer) < 5 + size:
                break
            message = bytes(buffer[5 : 5 + size])
            del buffer[: 5 + size]
            self._message(stream_id, stream, message)
            if stream.ended:
                return
        if flags & END_STREAM:
            self._ended(stream_id)

    # -- gRPC -----------------------------------------------------------------

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
        """Envoy half-closed its side: end ours unless an answer is still coming."""
        stream = self._streams.get(stream_id)
        if stream is not None and stream.task is None:
            self._end(stream_id, stream, 0)

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()

    # -- sending --------------------------------------------------------------

    def _send(self, stream_id: int, stream: _Stream, answer: Answer) -> None:
        self._reply(stream_id, stream, answer)
        if answer.final:
            self._end(stream_id, stream, 0)

    def _reply(self, stream_id: int, stream: _Stream, message: bytes) -> None:
        if not stream.started:
            stream.started = True
            self._out += frame(HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS)
        body = len(message).to_bytes(5, "big") + message  # flag byte 0: not compressed
        step = self._peer_frame
        for start in range(0, len(body), step):
            stream.pending += frame(DATA, 0, stream_id, body[start : start + step])
        self._release(stream_id, stream)

    def _end(self, stream_id: int, stream: _Stream, code: int, message: str = "") -> None:
        if stream.ended:
            return
        stream.ended = True
        block = OK_TRAILERS if code == 0 and not message else trailers(code, message)
        if not stream.started:
            stream.started = True
            block = RESPONSE_HEADERS + block
        stream.pending += frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
        self._release(stream_id, stream)

    def _release(self, stream_id: int, stream: _Stream) -> None:
        """Move held-back frames to the output as far as the send windows allow."""
        pending = stream.pending
        while pending:
            length = int.from_bytes(pending[:3], "big")
            size = 9 + length
            if pending[3] == DATA:
                if length > min(stream.window, self._send_window):
                    return
                stream.window -= length
                self._send_window -= length
            self._out += pending[:size]
            closing = pending[3] == HEADERS and pending[4] & END_STREAM
            del pending[:size]
            if closing:
                self._streams.pop(stream_id, None)

    def _flush(self) -> None:
        if self._out and self._transport is not None:
            self._transport.write(bytes(self._out))
            self._out.clear()

    def close(self) -> None:
        last = max(self._streams, default=0)
        self._out += frame(GOAWAY, 0, 0, last.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big"))
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

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

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
