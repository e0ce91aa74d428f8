"""A gRPC client that sends exactly the frames it is told, as a hostile or broken client
would: any body (empty, truncated, a length prefix that lies), headers that end the
stream, streams left open. Blocking sockets, loopback only; each read is bounded by a
timeout, so a test never waits longer than it says.

gRPC's own clients cannot send these: they always frame a whole message.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
REFUSED_STREAM = 0x7
INFER = "/inference.GRPCInferenceService/ModelInfer"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream)
        + payload
    )


def grpc_message(message: bytes) -> bytes:
    """``message`` with its 5-byte gRPC prefix (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass
class Answer:
    """What came back on one stream: its header blocks (response headers, then trailers),
    or the RST_STREAM code, or ``timed_out``."""

    headers: list[dict[str, str]] = field(default_factory=list)
    reset: int | None = None
    timed_out: bool = False
    seconds: float = 0.0

    @property
    def grpc_status(self) -> str | None:
        for block in reversed(self.headers):
            if "grpc-status" in block:
                return block["grpc-status"]
        return None

    @property
    def grpc_message(self) -> str:
        for block in reversed(self.headers):
            if "grpc-message" in block:
                return block["grpc-message"]
        return ""


class RawConnection:
    """One HTTP/2 connection to ``127.0.0.1:port`` (prior knowledge, no TLS)."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._encoder, self._decoder = hpack.Encoder(), hpack.Decoder()
        self._buffer = b""
        self._next_stream = 1
        self.answers: dict[int, Answer] = {}
        self._started: dict[int, float] = {}
        self._socket.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self,
        body: bytes | None,
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        path: str = INFER,
        end: bool = True,
    ) -> int:
        """Open a stream: headers, then ``body`` as one DATA frame (None: no DATA frame);
        ``end``: the last frame ends the stream. Its stream id."""
        stream, self._next_stream = self._next_stream, self._next_stream + 2
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        headers_end = END_STREAM if body is None and end else 0
        out = frame(HEADERS, END_HEADERS | headers_end, stream, self._encoder.encode(headers))
        if body is not None:
            out += frame(DATA, END_STREAM if end else 0, stream, body)
        self._socket.sendall(out)
        self._started[stream] = time.monotonic()
        return stream

    def wait(self, stream: int, timeout: float) -> Answer:
        """The answer on ``stream`` once it ends or is reset, or ``timed_out`` after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._done(stream):
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                answer = self.answers.setdefault(stream, Answer())
                answer.timed_out = True
                break
        answer = self.answers.setdefault(stream, Answer())
        answer.seconds = time.monotonic() - self._started[stream]
        return answer

    def _done(self, stream: int) -> bool:
        answer = self.answers.get(stream)
        return answer is not None and (answer.reset is not None or answer.grpc_status is not None)

    def _read(self, timeout: float) -> bool:
        """Take in one frame; False on timeout or a closed connection."""
        self._socket.settimeout(timeout)
        try:
            while len(self._buffer) < 9 or len(self._buffer) < 9 + int.from_bytes(
                self._buffer[:3], "big"
            ):
                data = self._socket.recv(1 << 16)
                if not data:
                    return False
                self._buffer += data
        except TimeoutError:
            return False
        length = int.from_bytes(self._buffer[:3], "big")
        kind, flags = self._buffer[3], self._buffer[4]
        stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
        payload, self._buffer = self._buffer[9 : 9 + length], self._buffer[9 + length :]
        if kind == SETTINGS and not flags & ACK:
            self._socket.sendall(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self._socket.sendall(frame(PING, ACK, 0, payload))
        elif kind == HEADERS:
            block = dict(self._decoder.decode(payload))
            self.answers.setdefault(stream, Answer()).headers.append(block)
        elif kind == RST_STREAM:
            self.answers.setdefault(stream, Answer()).reset = int.from_bytes(payload, "big")
        elif kind == GOAWAY:
            return False
        return True
