"""The pod's OIP REST listener (gateway.pod.rest) over real loopback HTTP/1.1: the
endpoints, the error statuses, and connections that misbehave."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway._proto import model_runtime_pb2 as rt

from .harness import Pod, StartPod


@pytest.fixture
async def loaded(start_pod: StartPod, svc_file: Path) -> Pod:
    pod = await start_pod(max_message_bytes=1 << 20)
    await pod.load("svc", svc_file)
    return pod


def url(pod: Pod, path: str) -> str:
    return f"http://127.0.0.1:{pod.server.rest_port}{path}"


def infer_body(row: np.ndarray) -> dict:
    return {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}]}


async def test_the_pod_reports_its_rest_port(loaded: Pod) -> None:
    status = await loaded.runtime.RuntimeStatus(rt.RuntimeStatusRequest())
    assert status.rest_port == loaded.server.rest_port > 0


async def test_infer_metadata_ready_and_server_endpoints(
    loaded: Pod, digit_898: np.ndarray
) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(url(loaded, "/v2/models/svc/infer"), json=infer_body(digit_898))
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["outputs"] == [
            {"name": "predict", "datatype": "INT64", "shape": [1, 1], "data": [8]}
        ]
        # the concrete id the gateway sets wins over the path's name, on every model endpoint
        named = await client.post(
            url(loaded, "/v2/models/sklearn-mnist/versions/3/infer"),
            json=infer_body(digit_898),
            headers={"mm-model-id": "svc"},
        )
        assert (named.json()["model_name"], named.json()["model_version"]) == ("svc", "3")
        metadata = (await client.get(url(loaded, "/v2/models/svc"))).json()
        assert metadata == {
            "name": "svc",
            "versions": ["1"],
            "platform": "sklearn",
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
        }
        ready = await client.get(url(loaded, "/v2/models/svc/versions/1/ready"))
        assert (ready.status_code, ready.json()) == (200, {"name": "svc", "ready": True})
        assert (await client.get(url(loaded, "/v2/health/live"))).json() == {"live": True}
        assert (await client.get(url(loaded, "/v2/health/ready"))).json() == {"ready": True}
        server = (await client.get(url(loaded, "/v2"))).json()
        assert server["name"] == "mmgw-runtime-pod" and "binary_tensor_data" in server["extensions"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v2/models/nope/infer", None, 404, "model 'nope' is not loaded on this pod"),
        ("GET", "/v2/models/nope", None, 404, "not loaded"),
        ("GET", "/v2/models/nope/ready", None, 404, "not loaded"),
        ("GET", "/v2/models/svc/infer", None, 405, "GET is not allowed here; use POST"),
        ("POST", "/v2/models/svc", b"{}", 405, "use GET"),
        ("GET", "/v2/models/svc/explain", None, 404, "unknown path"),
        ("GET", "/metrics", None, 404, "unknown path"),
        ("POST", "/v2/models/svc/infer", b"{", 400, "not valid JSON"),
        (
            "POST",
            "/v2/models/svc/infer",
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 63], "datatype": "FP32", "data": [0] * 63}]}
            ).encode(),
            400,
            "shape [1, 63] given, model expects [-1, 64]",
        ),
    ],
)
async def test_errors_are_the_specs_json_with_the_right_status(
    loaded: Pod, method: str, path: str, body: bytes | None, status: int, message: str
) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.request(method, url(loaded, path), content=body)
    assert answer.status_code == status
    assert message in answer.json()["error"]


async def test_a_compressed_body_is_refused_by_name(loaded: Pod) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            url(loaded, "/v2/models/svc/infer"), content=b"x", headers={"content-encoding": "gzip"}
        )
    assert answer.status_code == 415 and "gzip" in answer.json()["error"]


async def raw_exchange(pod: Pod, request: bytes, *, read: int = 65536) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", pod.server.rest_port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(read), 10)
    finally:
        writer.close()


async def test_a_body_over_the_limit_is_413_before_it_is_read(loaded: Pod) -> None:
    head = b"POST /v2/models/svc/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n"
    answer = await raw_exchange(loaded, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"over the 1048576-byte limit" in answer


async def test_malformed_http_and_huge_headers_get_4xx_and_a_closed_connection(
    loaded: Pod,
) -> None:
    assert (await raw_exchange(loaded, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    huge = b"GET /v2 HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert (await raw_exchange(loaded, huge)).startswith(b"HTTP/1.1 431 ")


async def test_pipelined_requests_are_answered_in_order_on_one_connection(
    loaded: Pod, digit_898: np.ndarray
) -> None:
    body = json.dumps(infer_body(digit_898)).encode()
    infer = b"POST /v2/models/svc/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    live = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
    closing = b"GET /v2 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", loaded.server.rest_port)
    writer.write(infer + live + infer + closing)
    answer = await asyncio.wait_for(reader.read(), 10)  # until the server closes
    writer.close()
    assert re.findall(rb"HTTP/1\.1 \d+ [A-Za-z ]+\r\n", answer) == [b"HTTP/1.1 200 OK\r\n"] * 4
    assert answer.index(b'"data":[8]') < answer.index(b'{"live":true}')
    assert answer.rstrip().endswith(b'"extensions":["binary_tensor_data"]}')


async def test_a_stopping_pod_finishes_the_request_it_is_answering(
    start_pod: StartPod,
) -> None:
    pod = await start_pod()
    await pod.load("slow", "fake.bin", model_type="fake", model_key='{"predict_s": 0.3}')
    async with httpx.AsyncClient() as client:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
        answer = asyncio.create_task(client.post(url(pod, "/v2/models/slow/infer"), json=body))
        await asyncio.sleep(0.1)
        await pod.server.stop(grace=5)
        assert (await answer).status_code == 200


async def test_a_wrong_datatype_is_named_before_a_wrong_count(loaded: Pod) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "INT32", "data": [0, 1, 2, 3]}]}
    async with httpx.AsyncClient() as client:
        answer = await client.post(url(loaded, "/v2/models/svc/infer"), json=body)
    assert answer.status_code == 400
    assert answer.json() == {"error": "input 'x': datatype 'INT32' given, model expects 'FP32'"}
    body["inputs"][0]["datatype"] = "FP32"  # the right datatype: the count is what is wrong
    async with httpx.AsyncClient() as client:
        answer = await client.post(url(loaded, "/v2/models/svc/infer"), json=body)
    assert "shape [1, 64] needs 64 elements, got 4" in answer.json()["error"]
