"""The ext_proc transport against grpc's own client (an independent HTTP/2 + gRPC stack)
and against hand-made frames for what grpc's client never does (tiny windows, pings)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import hpack
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway.adapters.extproc import h2
from gateway.adapters.extproc.processor import ExternalProcessor
from gateway.adapters.extproc.server import ExtProcServer, health_service

from ..core.fakes import FakePod, FakePods
from ..core.harness import Harness, harness, isvc
from .test_extproc import POD, body, forward, headers

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Harness, str, str]]:
    h = await harness(tmp_path, FakePods(**{POD: FakePod()}))
    record, _ = await h.registry.apply(isvc())
    await h.placement.ensure_loaded(record.serving.model_id)
    server = ExtProcServer(ExternalProcessor(h.router, miss_timeout=100), "127.0.0.1", 0)
    await server.start()
    try:
        yield h, f"127.0.0.1:{server.port}", record.serving.model_id
    finally:
        await server.stop()


def process(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamMultiCallable:
    return channel.stream_stream(
        METHOD,
        request_serializer=pb.ProcessingRequest.SerializeToString,
        response_deserializer=pb.ProcessingResponse.FromString,
    )


async def exchange(
    target: str, *messages: pb.ProcessingRequest
) -> tuple[list[pb.ProcessingResponse], grpc.StatusCode]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = process(channel)(iter(messages))
        responses = [r async for r in call]
        return responses, await call.code()


async def test_a_hit_over_a_real_grpc_client(served: tuple[Harness, str, str]) -> None:
    _, target, model_id = served
    responses, code = await exchange(target, headers("/v2/models/sklearn-mnist/infer"))
    assert (responses, code) == ([forward(POD, model_id)], grpc.StatusCode.OK)


async def test_header_then_body_on_one_stream(served: tuple[Harness, str, str]) -> None:
    _, target, model_id = served
    async with grpc.aio.insecure_channel(target) as channel:
        call = process(channel)()
        await call.write(
            headers("/inference.GRPCInferenceService/ModelInfer", content_type="application/grpc")
        )
        ask = await call.read()
        assert ask.mode_override.request_body_mode  # asked for the body
        await call.write(body(v2.ModelInferRequest(model_name="sklearn-mnist").SerializeToString()))
        assert await call.read() == forward(POD, model_id, in_body=True)
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_a_miss_sends_the_timeout_extension_then_the_route(
    served: tuple[Harness, str, str],
) -> None:
    h, target, _ = served
    h.pods.gate = asyncio.Event()  # loads wait until the test lets them finish
    record, _ = await h.registry.apply(isvc("other", "v2.joblib"))
    async with grpc.aio.insecure_channel(target) as channel:
        call = process(channel)(iter([headers("/v2/models/other/infer")]))
        first = await call.read()  # the load cannot have finished: this is the extension
        assert first.HasField("override_message_timeout")
        h.pods.gate.set()
        assert await call.read() == forward(POD, record.serving.model_id)
        assert await call.code() == grpc.StatusCode.OK


async def test_a_client_that_goes_away_mid_load_leaves_no_trouble(
    served: tuple[Harness, str, str],
) -> None:
    h, target, _ = served
    h.pods.gate = asyncio.Event()
    await h.registry.apply(isvc("other", "v2.joblib"))
    async with grpc.aio.insecure_channel(target) as channel:
        call = process(channel)(iter([headers("/v2/models/other/infer")]))
        assert (await call.read()).HasField("override_message_timeout")
        call.cancel()
    h.pods.gate.set()
    responses, code = await exchange(target, headers("/v2/models/other/infer"))
    assert code == grpc.StatusCode.OK and responses[-1].HasField("request_headers")


async def test_unknown_method_is_unimplemented(served: tuple[Harness, str, str]) -> None:
    _, target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary("/envoy.service.ext_proc.v3.ExternalProcessor/Other")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_malformed_message_is_invalid_argument(served: tuple[Harness, str, str]) -> None:
    _, target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(METHOD)(iter([b"\xff\xff\xff"]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [r async for r in call]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_large_body_crosses_many_frames_and_windows(
    served: tuple[Harness, str, str],
) -> None:
    _, target, model_id = served
    request = v2.ModelInferRequest(model_name="sklearn-mnist")
    request.raw_input_contents.append(b"\x00" * (5 << 20))
    responses, code = await exchange(
        target,
        headers("/inference.GRPCInferenceService/ModelInfer", content_type="application/grpc"),
        body(request.SerializeToString()),
    )
    assert code == grpc.StatusCode.OK
    assert responses[-1] == forward(POD, model_id, in_body=True)


async def test_many_concurrent_streams(served: tuple[Harness, str, str]) -> None:
    _, target, model_id = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = process(channel)

        async def one(i: int) -> list[pb.ProcessingResponse]:
            path = "/v2/models/sklearn-mnist/infer" if i % 2 else "/v2/models/nope/infer"
            return [r async for r in stub(iter([headers(path)]))]

        results = await asyncio.gather(*(one(i) for i in range(200)))
    for i, responses in enumerate(results):
        if i % 2:
            assert responses == [forward(POD, model_id)]
        else:
            assert responses[0].immediate_response.status.code == 404


# -- hand-made frames ----------------------------------------------------------


class Wire:
    """A raw HTTP/2 client: writes frames, reads and parses what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()

    def send(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self.writer.write(h2.frame(kind, flags, stream_id, payload))

    def request(self, stream_id: int, message: pb.ProcessingRequest, *, end: bool = True) -> None:
        block = self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", METHOD),
                (":authority", "ext_proc"),
                ("content-type", "application/grpc"),
            ]
        )
        self.send(h2.HEADERS, h2.END_HEADERS, stream_id, block)
        data = message.SerializeToString()
        self.send(
            h2.DATA, h2.END_STREAM if end else 0, stream_id, len(data).to_bytes(5, "big") + data
        )

    async def frame(self, timeout: float = 2.0) -> tuple[int, int, int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(9), timeout)
        payload = await self.reader.readexactly(int.from_bytes(head[:3], "big"))
        return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF, payload

    async def until(self, kind: int, stream_id: int | None = None) -> tuple[int, bytes]:
        while True:
            k, flags, sid, payload = await self.frame()
            if k == kind and (stream_id is None or sid == stream_id):
                return flags, payload


@pytest.fixture
async def wire(served: tuple[Harness, str, str]) -> AsyncIterator[Wire]:
    host, port = served[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(h2.PREFACE)
    client = Wire(reader, writer)
    # A peer that grants only 10 bytes per stream.
    client.send(
        h2.SETTINGS,
        0,
        0,
        h2.SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + (10).to_bytes(4, "big"),
    )
    try:
        yield client
    finally:
        writer.close()


async def test_server_settings_ack_and_ping(wire: Wire) -> None:
    flags, payload = await wire.until(h2.SETTINGS)
    assert not flags & h2.ACK and payload  # the server's own settings come first
    assert (await wire.until(h2.SETTINGS))[0] & h2.ACK  # then it acknowledges ours
    wire.send(h2.PING, 0, 0, b"12345678")
    flags, payload = await wire.until(h2.PING)
    assert flags & h2.ACK and payload == b"12345678"


async def test_data_waits_for_the_peers_window(
    wire: Wire, served: tuple[Harness, str, str]
) -> None:
    model_id = served[2]
    await wire.until(h2.SETTINGS)
    await wire.until(h2.SETTINGS)  # our 10-byte window is in force
    wire.request(1, headers("/v2/models/sklearn-mnist/infer"))
    await wire.until(h2.HEADERS, 1)  # response headers may go; the DATA may not
    with pytest.raises(TimeoutError):
        await wire.frame(timeout=0.2)
    wire.send(h2.WINDOW_UPDATE, 0, 1, (1 << 20).to_bytes(4, "big"))
    _, payload = await wire.until(h2.DATA, 1)
    assert pb.ProcessingResponse.FromString(payload[5:]) == forward(POD, model_id)
    flags, block = await wire.until(h2.HEADERS, 1)
    assert flags & h2.END_STREAM and wire.decoder.decode(block) == [("grpc-status", "0")]


async def test_garbage_gets_goaway(served: tuple[Harness, str, str]) -> None:
    host, port = served[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 40)
    client = Wire(reader, writer)
    assert (await client.until(h2.GOAWAY))[1][4:8] == h2.PROTOCOL_ERROR.to_bytes(4, "big")
    writer.close()


async def health_check(target: str, request: bytes) -> tuple[bytes | None, grpc.StatusCode]:
    async with grpc.aio.insecure_channel(target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        try:
            return await check(request), grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return None, exc.code()


def health_request(service: str) -> bytes:
    """grpc.health.v1.HealthCheckRequest{service}, serialized (field 1, a string)."""
    name = service.encode()
    return b"\x0a" + bytes((len(name),)) + name if name else b""


async def test_grpc_health_check_answers_serving_for_the_server_and_the_processor(
    served: tuple[Harness, str, str],
) -> None:
    _, target, _ = served
    serving = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
    assert await health_check(target, health_request("")) == (serving, grpc.StatusCode.OK)
    processor = "envoy.service.ext_proc.v3.ExternalProcessor"
    assert await health_check(target, health_request(processor)) == (serving, grpc.StatusCode.OK)
    assert await health_check(target, health_request("nope")) == (None, grpc.StatusCode.NOT_FOUND)
    assert await health_check(target, b"\x12\x00") == (None, grpc.StatusCode.INVALID_ARGUMENT)
    # Watch is not served; the connection goes on serving ext_proc afterwards.
    async with grpc.aio.insecure_channel(target) as channel:
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in watch(b""):
                pass
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    responses, code = await exchange(target, headers("/v2/models/sklearn-mnist/infer"))
    assert code == grpc.StatusCode.OK and len(responses) == 1


@pytest.mark.parametrize(
    ("raw", "service"),
    [(b"", ""), (b"\x0a\x03abc", "abc"), (b"\x0a\x81\x01" + b"s" * 129, "s" * 129)],
)
def test_health_service_reads_the_request_name(raw: bytes, service: str) -> None:
    assert health_service(raw) == service


@pytest.mark.parametrize(
    "raw", [b"\x12\x00", b"\x0a", b"\x0a\x05ab", b"\x0a\xff\xff\xff\xff\xff\x01"]
)
def test_health_service_refuses_what_is_not_a_health_check_request(raw: bytes) -> None:
    with pytest.raises(ValueError):
        health_service(raw)
