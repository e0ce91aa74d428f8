"""Envoy's access log entries as served requests, and the access log stream through the
ext_proc transport against grpc's own client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2 as data
from envoy.service.accesslog.v3 import als_pb2

from gateway.adapters.extproc.accesslog import (
    STREAM_ACCESS_LOGS_PATH,
    AccessLogReader,
    served,
)
from gateway.adapters.extproc.processor import ExternalProcessor
from gateway.adapters.extproc.server import ExtProcServer
from gateway.core.traffic import GRPC, REST, Served

from ..core.fakes import FakePod, FakePods
from ..core.harness import harness
from .test_extproc import POD

INFER = "/inference.GRPCInferenceService/ModelInfer"
VARIANT = "mnist__isvc-0123456789"


def entry(
    path: str,
    *,
    status: int | None = 200,
    upstream: bool = True,
    original_path: str = "",
    request_headers: dict[str, str] | None = None,
    trailers: dict[str, str] | None = None,
    response_headers: dict[str, str] | None = None,
    micros: int = 2500,
) -> data.HTTPAccessLogEntry:
    e = data.HTTPAccessLogEntry()
    e.request.path = path
    e.request.original_path = original_path
    e.request.request_headers.update(request_headers or {})
    if status is not None:
        e.response.response_code.value = status
    e.response.response_trailers.update(trailers or {})
    e.response.response_headers.update(response_headers or {})
    if upstream:
        e.common_properties.upstream_cluster = "pods"
    e.common_properties.time_to_last_downstream_tx_byte.FromMicroseconds(micros)
    return e


def test_rest_in_both_forms_is_named_by_its_path() -> None:
    oip = entry("/v2/models/mnist/infer", request_headers={"mm-model-id": VARIANT})
    assert served(oip) == Served("mnist", VARIANT, REST, "200", 0.0025, True)
    transcoded = entry(
        INFER,
        original_path="/v2/models/mnist/versions/1/infer",
        status=400,
        request_headers={"mm-model-id": VARIANT},
        response_headers={"grpc-status": "3"},  # REST is judged by its HTTP status
    )
    assert served(transcoded) == Served("mnist", VARIANT, REST, "400", 0.0025, False)


def test_grpc_is_named_by_its_header_and_coded_by_its_grpc_status() -> None:
    ok = entry(
        INFER,
        request_headers={"mm-vmodel-id": "mnist", "mm-model-id": VARIANT},
        trailers={"grpc-status": "0"},
    )
    assert served(ok) == Served("mnist", VARIANT, GRPC, "OK", 0.0025, True)
    # a trailers-only answer (an error from Envoy or the pod) has grpc-status in its headers
    refused = entry(
        INFER,
        request_headers={"mm-vmodel-id": "mnist", "mm-model-id": VARIANT},
        response_headers={"grpc-status": "3"},
    )
    assert served(refused).code == "INVALID_ARGUMENT"  # type: ignore[union-attr]
    body_named = entry(
        INFER, request_headers={"mm-model-id": VARIANT}, trailers={"grpc-status": "0"}
    )
    assert served(body_named) == Served(None, VARIANT, GRPC, "OK", 0.0025, True)
    gone = entry(INFER, status=0, request_headers={"mm-vmodel-id": "mnist"})
    assert served(gone).code == "CANCELLED"  # type: ignore[union-attr]
    odd = entry(INFER, request_headers={"mm-vmodel-id": "m"}, trailers={"grpc-status": "x"})
    assert served(odd).code == "UNKNOWN"  # type: ignore[union-attr]


def test_the_time_at_the_pod_and_its_address_come_from_the_upstream_timings() -> None:
    e = entry("/v2/models/mnist/infer", request_headers={"mm-model-id": VARIANT})
    e.common_properties.upstream_remote_address.socket_address.address = "127.0.0.1"
    e.common_properties.upstream_remote_address.socket_address.port_value = 9111
    e.common_properties.time_to_first_upstream_tx_byte.FromMicroseconds(300)
    e.common_properties.time_to_last_upstream_rx_byte.FromMicroseconds(2100)
    got = served(e)
    assert got is not None and got.pod == "127.0.0.1:9111"
    assert got.pod_seconds is not None and abs(got.pod_seconds - 0.0018) < 1e-9
    assert served(entry("/v2/models/mnist/infer")).pod is None  # type: ignore[union-attr]


def test_a_refused_request_keeps_no_variant_of_the_clients() -> None:
    """ext_proc overwrites mm-model-id only on requests it lets through: a refused one
    (no upstream cluster) logs the client's own value, which must never become a label."""
    forged = entry(
        "/v2/models/nope/infer",
        status=404,
        upstream=False,
        request_headers={"mm-model-id": "nope__isvc-forged"},
    )
    assert served(forged) == Served("nope", None, REST, "404", 0.0025, False)
    grpc_forged = entry(
        INFER,
        upstream=False,
        response_headers={"grpc-status": "5"},
        request_headers={"mm-model-id": "nope__isvc-forged"},
    )
    assert served(grpc_forged) == Served(
        "nope__isvc-forged", None, GRPC, "NOT_FOUND", 0.0025, False
    )


def test_requests_that_name_no_model_are_left_out() -> None:
    for path in (
        "/v2/health/ready",
        "/v2",
        "/inference.GRPCInferenceService/ServerLive",
        "/no/such/path",
        "/v2/repository/index",
    ):
        assert served(entry(path)) is None, path
    # a client that went away before an answer: no time to last byte, the duration instead
    e = entry("/v2/models/m/infer", status=None)
    e.common_properties.ClearField("time_to_last_downstream_tx_byte")
    e.common_properties.duration.FromMilliseconds(40)
    got = served(e)
    assert got is not None and (got.code, got.seconds, got.ok) == ("0", 0.04, False)


def test_the_reader_drops_a_malformed_message_and_counts_entries() -> None:
    got: list[Served] = []
    reader = AccessLogReader(got.append)
    assert reader.message(b"\xff\xff\xff") is False
    message = als_pb2.StreamAccessLogsMessage()
    message.http_logs.log_entry.extend(
        [entry("/v2/models/a/infer"), entry("/v2/health/live"), entry("/v2/models/b/infer")]
    )
    assert reader.message(message.SerializeToString()) is True
    assert [s.name for s in got] == ["a", "b"] and reader.entries == 3


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, list[Served]]]:
    h = await harness(tmp_path, FakePods(**{POD: FakePod()}))
    got: list[Served] = []
    extproc = ExtProcServer(
        ExternalProcessor(h.router, miss_timeout=100),
        "127.0.0.1",
        0,
        access_log=AccessLogReader(got.append),
    )
    await extproc.start()
    try:
        yield f"127.0.0.1:{extproc.port}", got
    finally:
        await extproc.stop()


async def test_envoy_s_access_log_stream_is_read_as_it_comes_and_answered_at_its_end(
    server: tuple[str, list[Served]],
) -> None:
    target, got = server
    batch = als_pb2.StreamAccessLogsMessage()
    batch.identifier.log_name = "mmgw"
    batch.http_logs.log_entry.extend([entry(f"/v2/models/m{i}/infer") for i in range(50)])
    queue: asyncio.Queue[als_pb2.StreamAccessLogsMessage | None] = asyncio.Queue()

    async def messages() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
        while (message := await queue.get()) is not None:
            yield message

    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_unary(
            STREAM_ACCESS_LOGS_PATH.decode(),
            request_serializer=als_pb2.StreamAccessLogsMessage.SerializeToString,
            response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
        )(messages())
        for _ in range(3):  # a long-lived stream: each batch is read before the next comes
            before = len(got)
            await queue.put(batch)
            for _ in range(200):
                if len(got) == before + 50:
                    break
                await asyncio.sleep(0.01)
            assert len(got) == before + 50
        await queue.put(None)
        assert await call == als_pb2.StreamAccessLogsResponse()
        assert await call.code() == grpc.StatusCode.OK
    assert [s.name for s in got[:3]] == ["m0", "m1", "m2"] and len(got) == 150


async def test_without_a_reader_the_access_log_method_is_unimplemented(tmp_path: Path) -> None:
    h = await harness(tmp_path, FakePods(**{POD: FakePod()}))
    extproc = ExtProcServer(ExternalProcessor(h.router, miss_timeout=100), "127.0.0.1", 0)
    await extproc.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{extproc.port}") as channel:
            call = channel.stream_unary(
                STREAM_ACCESS_LOGS_PATH.decode(),
                request_serializer=als_pb2.StreamAccessLogsMessage.SerializeToString,
                response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
            )(iter([als_pb2.StreamAccessLogsMessage()]))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await extproc.stop()
