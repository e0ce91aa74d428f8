"""The sans-IO HTTP/2 connection, frame by frame: no socket, a handler that records calls."""

from __future__ import annotations

import hpack
import pytest

from gateway.adapters.extproc import h2
from gateway.adapters.extproc.h2 import frame

PATH = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bytes]] = []

    def request(self, stream_id: int, path: bytes) -> None:
        self.calls.append(("request", stream_id, path))

    def message(self, stream_id: int, message: bytes) -> None:
        self.calls.append(("message", stream_id, message))

    def input_ended(self, stream_id: int) -> None:
        self.calls.append(("input_ended", stream_id, b""))

    def reset(self, stream_id: int) -> None:
        self.calls.append(("reset", stream_id, b""))


Frame = tuple[int, int, int, bytes]


def parse(data: bytes) -> list[Frame]:
    frames, i = [], 0
    while i < len(data):
        length = int.from_bytes(data[i : i + 3], "big")
        kind, flags = data[i + 3], data[i + 4]
        stream_id = int.from_bytes(data[i + 5 : i + 9], "big")
        frames.append((kind, flags, stream_id, data[i + 9 : i + 9 + length]))
        i += 9 + length
    assert i == len(data), "a frame was cut short"
    return frames


def block(path: bytes = PATH) -> bytes:
    return hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":path", path.decode()), ("te", "trailers")]
    )


def grpc(message: bytes, flag: int = 0) -> bytes:
    return bytes((flag,)) + len(message).to_bytes(4, "big") + message


def connected(handler: Recorder) -> h2.Connection:
    connection = h2.Connection(handler)
    preface = parse(connection.data_to_send())
    assert [f[0] for f in preface] == [h2.SETTINGS, h2.WINDOW_UPDATE]
    connection.receive(h2.PREFACE + frame(h2.SETTINGS, 0, 0))
    assert parse(connection.data_to_send()) == [(h2.SETTINGS, h2.ACK, 0, b"")]
    return connection


def goaway_code(out: bytes) -> int:
    (goaway,) = [f for f in parse(out) if f[0] == h2.GOAWAY]
    return int.from_bytes(goaway[3][4:8], "big")


def trailers_of(out: bytes, stream_id: int) -> list[tuple[bytes, bytes]]:
    decoder = hpack.Decoder()
    last = [f for f in parse(out) if f[0] == h2.HEADERS and f[2] == stream_id][-1]
    assert last[1] & h2.END_STREAM
    return list(decoder.decode(last[3], raw=True))


def test_one_request_message_and_half_close_reach_the_handler_then_the_answer_is_framed() -> None:
    handler = Recorder()
    connection = connected(handler)
    connection.receive(
        frame(h2.HEADERS, h2.END_HEADERS, 1, block())
        + frame(h2.DATA, h2.END_STREAM, 1, grpc(b"hi"))
    )
    assert handler.calls == [("request", 1, PATH), ("message", 1, b"hi"), ("input_ended", 1, b"")]
    connection.send(1, b"answer")
    connection.end(1)
    kinds = [(f[0], f[1], f[2]) for f in parse(connection.data_to_send())]
    assert kinds == [
        (h2.HEADERS, h2.END_HEADERS, 1),
        (h2.DATA, 0, 1),
        (h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1),
    ]
    assert connection.open_streams == 0


def test_a_header_block_split_over_continuation_frames_is_one_request() -> None:
    handler = Recorder()
    connection = connected(handler)
    whole = block()
    connection.receive(frame(h2.HEADERS, 0, 1, whole[:3]))
    assert handler.calls == []
    connection.receive(frame(h2.CONTINUATION, 0, 1, whole[3:6]))
    connection.receive(frame(h2.CONTINUATION, h2.END_HEADERS, 1, whole[6:]))
    assert handler.calls == [("request", 1, PATH)]


def test_any_other_frame_between_headers_and_continuation_ends_the_connection() -> None:
    connection = connected(Recorder())
    connection.receive(frame(h2.HEADERS, 0, 1, block()[:3]) + frame(h2.PING, 0, 0, bytes(8)))
    assert connection.closed and goaway_code(connection.data_to_send()) == h2.PROTOCOL_ERROR


def test_padding_and_priority_fields_are_stripped_from_headers_and_data() -> None:
    handler = Recorder()
    connection = connected(handler)
    priority = (0).to_bytes(4, "big") + b"\x10"  # stream dependency and weight
    headers = bytes((3,)) + priority + block() + b"\x00" * 3
    data = bytes((5,)) + grpc(b"body") + b"\x00" * 5
    connection.receive(
        frame(h2.HEADERS, h2.END_HEADERS | h2.PADDED | h2.PRIORITY_FLAG, 1, headers)
        + frame(h2.DATA, h2.PADDED | h2.END_STREAM, 1, data)
    )
    assert handler.calls == [("request", 1, PATH), ("message", 1, b"body"), ("input_ended", 1, b"")]


def test_padding_longer_than_its_frame_is_a_protocol_error() -> None:
    connection = connected(Recorder())
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 1, block()))
    connection.receive(frame(h2.DATA, h2.PADDED, 1, bytes((9,)) + b"abc"))
    assert goaway_code(connection.data_to_send()) == h2.PROTOCOL_ERROR


def test_priority_and_unknown_frame_types_are_ignored() -> None:
    handler = Recorder()
    connection = connected(handler)
    connection.receive(frame(h2.PRIORITY, 0, 1, bytes(5)) + frame(0xEE, 0, 0, b"whatever"))
    assert not connection.closed and handler.calls == []
    assert connection.data_to_send() == b""


def test_a_message_split_across_data_frames_is_delivered_once_whole() -> None:
    handler = Recorder()
    connection = connected(handler)
    message = grpc(b"x" * 1000)
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 1, block()))
    for start in range(0, len(message), 7):
        connection.receive(frame(h2.DATA, 0, 1, message[start : start + 7]))
    assert handler.calls[-1] == ("message", 1, b"x" * 1000)


def test_a_stream_that_ends_inside_a_message_gets_invalid_argument() -> None:
    handler = Recorder()
    connection = connected(handler)
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 1, block()))
    connection.receive(frame(h2.DATA, h2.END_STREAM, 1, grpc(b"whole")[:4]))
    assert ("input_ended", 1, b"") not in handler.calls
    assert (b"grpc-status", b"3") in trailers_of(connection.data_to_send(), 1)


@pytest.mark.parametrize(
    ("message", "status"),
    [
        (grpc(b"zipped", flag=1), b"12"),  # compressed: UNIMPLEMENTED
        (b"\x00" + (h2.MAX_MESSAGE_BYTES + 1).to_bytes(4, "big"), b"8"),  # RESOURCE_EXHAUSTED
    ],
)
def test_compressed_and_oversized_messages_end_their_stream_only(
    message: bytes, status: bytes
) -> None:
    handler = Recorder()
    connection = connected(handler)
    connection.receive(
        frame(h2.HEADERS, h2.END_HEADERS, 1, block()) + frame(h2.DATA, 0, 1, message)
    )
    assert [c[0] for c in handler.calls] == ["request"]
    assert (b"grpc-status", status) in trailers_of(connection.data_to_send(), 1)
    assert not connection.closed  # the connection goes on: another stream is served
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 3, block()))
    assert handler.calls[-1] == ("request", 3, PATH)


def test_a_bad_header_block_is_a_compression_error() -> None:
    connection = connected(Recorder())
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 1, b"\xff\xff\xff\xff\xff"))
    assert goaway_code(connection.data_to_send()) == h2.COMPRESSION_ERROR


def test_a_frame_over_our_max_frame_size_is_a_frame_size_error() -> None:
    connection = connected(Recorder())
    connection.receive((h2.MAX_FRAME + 1).to_bytes(3, "big") + bytes((h2.DATA, 0)) + bytes(4))
    assert goaway_code(connection.data_to_send()) == h2.FRAME_SIZE_ERROR


def test_a_wrong_preface_is_refused_as_soon_as_it_differs() -> None:
    connection = h2.Connection(Recorder())
    connection.data_to_send()
    connection.receive(b"GET / HTTP/1.1\r\n")  # shorter than the preface: still refused
    assert connection.closed and goaway_code(connection.data_to_send()) == h2.PROTOCOL_ERROR


def test_rst_stream_forgets_the_stream_and_tells_the_handler() -> None:
    handler = Recorder()
    connection = connected(handler)
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 1, block()))
    connection.receive(frame(h2.RST_STREAM, 0, 1, (8).to_bytes(4, "big")))
    assert handler.calls[-1] == ("reset", 1, b"")
    connection.send(1, b"late")  # an answer for a reset stream is dropped
    assert connection.data_to_send() == b""


def test_goaway_from_the_peer_is_noted_and_open_streams_are_still_answered() -> None:
    connection = connected(Recorder())
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 1, block()))
    connection.receive(frame(h2.GOAWAY, 0, 0, (1).to_bytes(4, "big") + bytes(4)))
    assert connection.peer_going_away and connection.open_streams == 1
    connection.end(1)
    assert connection.open_streams == 0 and trailers_of(connection.data_to_send(), 1)


def test_answers_wait_for_the_peers_window_and_settings_mid_stream_release_them() -> None:
    connection = connected(Recorder())
    connection.receive(
        frame(h2.SETTINGS, 0, 0, h2.SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + bytes(4))
    )
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 1, block()))
    connection.data_to_send()
    connection.send(1, b"answer")
    connection.end(1)
    held = parse(connection.data_to_send())
    assert [f[0] for f in held] == [h2.HEADERS]  # response headers; DATA waits for the window
    window = (100).to_bytes(4, "big")
    connection.receive(
        frame(h2.SETTINGS, 0, 0, h2.SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + window)
    )
    released = parse(connection.data_to_send())
    # The new window applies as the SETTINGS frame is read: what it releases, then the ACK.
    assert [f[0] for f in released] == [h2.DATA, h2.HEADERS, h2.SETTINGS]
    assert released[0][3] == grpc(b"answer")


def test_data_is_cut_to_the_peers_max_frame_size() -> None:
    connection = connected(Recorder())
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 1, block()))
    connection.data_to_send()
    connection.send(1, b"y" * 40_000)
    sizes = [len(f[3]) for f in parse(connection.data_to_send()) if f[0] == h2.DATA]
    assert sizes == [16_384, 16_384, 40_005 - 2 * 16_384]


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(h2.SETTINGS, 0, 0, b"\x00\x04\x00"), h2.FRAME_SIZE_ERROR),  # not 6-byte entries
        (frame(h2.SETTINGS, 0, 3, b""), h2.PROTOCOL_ERROR),  # on a stream
        (frame(h2.SETTINGS, 0, 0, b"\x00\x05" + (100).to_bytes(4, "big")), h2.PROTOCOL_ERROR),
        (
            frame(h2.SETTINGS, 0, 0, b"\x00\x04" + (1 << 31).to_bytes(4, "big")),
            h2.FLOW_CONTROL_ERROR,
        ),
        (frame(h2.PING, 0, 0, b"short"), h2.FRAME_SIZE_ERROR),
        (frame(h2.WINDOW_UPDATE, 0, 0, b"\x00"), h2.FRAME_SIZE_ERROR),
        (frame(h2.PUSH_PROMISE, 0, 1, bytes(4)), h2.PROTOCOL_ERROR),
        (frame(h2.HEADERS, h2.END_HEADERS, 0, block()), h2.PROTOCOL_ERROR),
        (frame(h2.CONTINUATION, h2.END_HEADERS, 1, b""), h2.PROTOCOL_ERROR),
    ],
)
def test_malformed_control_frames_end_the_connection_with_their_code(bad: bytes, code: int) -> None:
    handler = Recorder()
    connection = connected(handler)
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 1, block()) + bad)
    assert connection.closed and goaway_code(connection.data_to_send()) == code
    assert handler.calls[-1] == ("reset", 1, b"")  # the open stream's work is stopped
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 3, block()))  # nothing after GOAWAY
    assert connection.data_to_send() == b""


def test_ping_is_answered_with_the_same_payload() -> None:
    connection = connected(Recorder())
    connection.receive(frame(h2.PING, 0, 0, b"12345678"))
    assert parse(connection.data_to_send()) == [(h2.PING, h2.ACK, 0, b"12345678")]


def test_received_data_is_granted_back_before_the_window_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h2, "WINDOW", 1 << 16)  # a small window: grants come after 32 KiB
    connection = connected(Recorder())
    connection.receive(frame(h2.HEADERS, h2.END_HEADERS, 1, block()))
    part = grpc(b"z" * 60_000)[:40_005]  # most of one message, still incomplete
    connection.receive(frame(h2.DATA, 0, 1, part))
    updates = [f for f in parse(connection.data_to_send()) if f[0] == h2.WINDOW_UPDATE]
    assert [(f[2], int.from_bytes(f[3], "big")) for f in updates] == [(0, 40_005), (1, 40_005)]
