"""gRPC over HTTP/2, server side, without IO: bytes in, bytes out, calls to a handler.

``Connection.receive`` takes what the peer sent and calls the ``Handler`` for
each request (its ``:path``), each complete gRPC message and each half-close;
``send`` and ``end`` queue a message and the trailers of a stream;
``data_to_send`` hands the bytes to write. The asyncio protocol
(gateway.adapters.extproc.server) only moves those bytes, so every edge of the
protocol is tested frame by frame without a socket (tests/adapters/test_h2.py).

What it speaks (RFC 9113), as far as one bidi method needs: the connection
preface; SETTINGS (acknowledged; INITIAL_WINDOW_SIZE and MAX_FRAME_SIZE
honoured, also mid-connection); PING; WINDOW_UPDATE and flow control on what
it sends, window updates for what it receives; HEADERS with CONTINUATION,
padding and priority; DATA with padding; RST_STREAM; GOAWAY; PRIORITY and
unknown frame types ignored. Header blocks are decoded by the hpack library;
the few it sends are constant literals that never touch the dynamic table.
gRPC on top: 5-byte length-prefixed messages; compressed or oversized ones end
their stream with an error status. A protocol error ends the connection with
GOAWAY and the error's code.
"""

from __future__ import annotations

from typing import Protocol, cast
from urllib.parse import quote

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_MESSAGE_BYTES = 64 << 20  # a buffered gRPC request body, plus room
MAX_FRAME = 1 << 20  # largest frame we accept (our SETTINGS_MAX_FRAME_SIZE)
WINDOW = 1 << 30  # receive window we grant, per stream and per connection

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = (
    0x3,
    0x4,
    0x5,
)
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0, 1, 3, 6, 9

# gRPC status codes used by the transport itself.
GRPC_OK, GRPC_INVALID_ARGUMENT, GRPC_RESOURCE_EXHAUSTED, GRPC_UNIMPLEMENTED = 0, 3, 8, 12


class ProtocolError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Handler(Protocol):
    """What the connection calls as the peer's requests arrive."""

    def request(self, stream_id: int, path: bytes) -> None:
        """A new stream's request headers (only ``:path`` is read)."""

    def message(self, stream_id: int, message: bytes) -> None:
        """One complete gRPC message on an open stream."""

    def input_ended(self, stream_id: int) -> None:
        """The peer half-closed the stream: no more messages will come."""

    def reset(self, stream_id: int) -> None:
        """The stream is gone (RST_STREAM, or the connection ended): stop working on it."""


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


OK_TRAILERS = trailers(GRPC_OK)


class _Stream:
    __slots__ = ("buffer", "ended", "pending", "started", "unacked", "window")

    def __init__(self, window: int) -> None:
        self.buffer = bytearray()
        self.started = False  # response headers sent
        self.ended = False  # trailers queued: nothing more is read or sent
        self.window = window  # what we may still send
        self.pending = bytearray()  # frames held back by flow control (DATA, then trailers)
        self.unacked = 0  # bytes received and not yet granted back


class Connection:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._buffer = bytearray()
        self._preface = False
        self._decoder = hpack.Decoder()
        self._decoded: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._streams: dict[int, _Stream] = {}
        # (stream, flags, block) of a header block awaiting CONTINUATION
        self._headers: tuple[int, int, bytearray] | None = None
        self._peer_window = 65_535  # initial stream send window the peer granted
        self._peer_frame = 16_384  # largest frame the peer accepts
        self._send_window = 65_535  # connection send window
        self._unacked = 0  # connection bytes received and not yet granted back
        self.closed = False  # a GOAWAY was queued (ours): write what is left, then close
        self.error = ""  # why, when it was a protocol error
        self.peer_going_away = False  # the peer sent GOAWAY
        settings = b"".join(
            key.to_bytes(2, "big") + value.to_bytes(4, "big")
            for key, value in (
                (SETTINGS_INITIAL_WINDOW_SIZE, WINDOW),
                (SETTINGS_MAX_FRAME_SIZE, MAX_FRAME),
                (SETTINGS_MAX_CONCURRENT_STREAMS, 1 << 20),
            )
        )
        self._out = bytearray(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, (WINDOW - 65_535).to_bytes(4, "big"))
        )

    # -- what the IO layer calls ----------------------------------------------

    def receive(self, data: bytes) -> None:
        """Take the peer's bytes; complete frames are handled at once, the rest kept."""
        if self.closed:
            return
        buffer = self._buffer
        buffer += data
        try:
            if not self._preface:
                if len(buffer) < len(PREFACE):
                    if PREFACE[: len(buffer)] != bytes(buffer):
                        raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                if buffer[: len(PREFACE)] != PREFACE:
                    raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buffer[: len(PREFACE)]
                self._preface = True
            start = 0
            while len(buffer) - start >= 9 and not self.closed:
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
            self.error = str(exc)
            self._terminate(exc.code)

    def send(self, stream_id: int, message: bytes) -> None:
        """Queue one gRPC message on ``stream_id`` (response headers first, once)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.ended:
            return
        if not stream.started:
            stream.started = True
            self._out += frame(HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS)
        body = len(message).to_bytes(5, "big") + message  # flag byte 0: not compressed
        step = self._peer_frame
        for start in range(0, len(body), step):
            stream.pending += frame(DATA, 0, stream_id, body[start : start + step])
        self._release(stream_id, stream)

    def end(self, stream_id: int, code: int = GRPC_OK, message: str = "") -> None:
        """Queue the trailers that end ``stream_id`` with a gRPC status."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.ended:
            return
        stream.ended = True
        block = OK_TRAILERS if code == GRPC_OK and not message else trailers(code, message)
        if not stream.started:
            stream.started = True
            block = RESPONSE_HEADERS + block
        stream.pending += frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
        self._release(stream_id, stream)

    def close(self) -> None:
        """Say GOAWAY (no error): the IO layer writes what is left and closes."""
        self._terminate(NO_ERROR)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def is_open(self, stream_id: int) -> bool:
        stream = self._streams.get(stream_id)
        return stream is not None and not stream.ended

    # -- frames ---------------------------------------------------------------

    def _terminate(self, code: int) -> None:
        last = max(self._streams, default=0)
        self._out += frame(GOAWAY, 0, 0, last.to_bytes(4, "big") + code.to_bytes(4, "big"))
        self.closed = True
        for stream_id in list(self._streams):
            self._forget(stream_id)

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
            if stream_id != 0:
                raise ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & ACK:
                self._settings(payload)
                self._out += frame(SETTINGS, ACK, 0)
        elif kind == PING:
            if len(payload) != 8:
                raise ProtocolError(FRAME_SIZE_ERROR, f"PING of {len(payload)} bytes")
            if not flags & ACK:
                self._out += frame(PING, ACK, 0, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == GOAWAY:
            self.peer_going_away = True
        elif kind == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 requires.

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ProtocolError(FRAME_SIZE_ERROR, f"SETTINGS of {len(payload)} bytes")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > 0x7FFF_FFFF:
                    raise ProtocolError(FLOW_CONTROL_ERROR, f"initial window of {value}")
                delta, self._peer_window = value - self._peer_window, value
                for sid, waiting in list(self._streams.items()):
                    waiting.window += delta
                    self._release(sid, waiting)
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise ProtocolError(PROTOCOL_ERROR, f"max frame size of {value}")
                self._peer_frame = value

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, f"WINDOW_UPDATE of {len(payload)} bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFF_FFFF
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
            if not payload:
                raise ProtocolError(PROTOCOL_ERROR, "padded frame without a pad length")
            pad = payload[0]
            if pad >= len(payload):
                raise ProtocolError(PROTOCOL_ERROR, "padding longer than the frame")
            return payload[1 : len(payload) - pad]
        return payload

    def _header_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(PROTOCOL_ERROR, "HEADERS on stream 0")
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
        if len(block) > MAX_FRAME:
            raise ProtocolError(PROTOCOL_ERROR, f"header block of over {MAX_FRAME} bytes")
        if flags & END_HEADERS:
            self._headers = None
            self._header_block(first_flags, stream_id, bytes(block))

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Decode a header block; a repeat of one that left the dynamic table alone is served
        from cache.

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
            raise ProtocolError(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        if (len(table), table[0] if table else None) == before and (
            not table or table[0] is before[1]
        ):
            if len(self._decoded) < 64:
                self._decoded[block] = fields
        else:
            self._decoded.clear()
        return fields

    def _header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        fields = self._decode(block)  # always: the decoder's table must follow every block
        if stream_id not in self._streams:  # a new request (else: trailers from the peer)
            self._streams[stream_id] = _Stream(self._peer_window)
            path = next((value for name, value in fields if name == b":path"), b"")
            self._handler.request(stream_id, path)
        if flags & END_STREAM:
            self._input_ended(stream_id)

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
                self.end(stream_id, GRPC_UNIMPLEMENTED, "compressed messages are not supported")
                return
            if size > MAX_MESSAGE_BYTES:
                self.end(
                    stream_id, GRPC_RESOURCE_EXHAUSTED, f"message of {size} bytes is over the limit"
                )
                return
            if len(buffer) < 5 + size:
                break
            message = bytes(buffer[5 : 5 + size])
            del buffer[: 5 + size]
            self._handler.message(stream_id, message)
            if not self.is_open(stream_id):
                return
        if flags & END_STREAM:
            self._input_ended(stream_id)

    def _input_ended(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.ended:
            return
        if stream.buffer:  # half a message, and no more will come
            self.end(stream_id, GRPC_INVALID_ARGUMENT, "the stream ended inside a message")
            return
        self._handler.input_ended(stream_id)

    def _forget(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._handler.reset(stream_id)

    # -- sending --------------------------------------------------------------

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
