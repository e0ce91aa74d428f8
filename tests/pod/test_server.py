"""The pod's gRPC server, started in-process on a free loopback port."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import gateway
from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway._proto import model_runtime_pb2 as rt
from gateway.core.errors import (
    InvalidInput,
    LoadFailed,
    LoadTimeout,
    ModelFormatError,
    ModelNotFound,
)
from gateway.core.protocol import MODEL_ID_HEADER
from gateway.pod import tensors
from gateway.pod.model import Tensor, decode_for
from gateway.pod.runtimes import BUILTIN_RUNTIMES
from gateway.pod.server import PodServer, PodSettings, serve
from gateway.pod.servicer import grpc_status
from gateway.tools import cli, launcher

from .. import rawgrpc
from .fakes import key
from .harness import Pod, StartPod
from .harness import rpc_error as _error

CONCRETE_ID = "sklearn-mnist__isvc-3f2a9c01b4"


def _infer_request(
    array: np.ndarray, name: str = "sklearn-mnist", *, raw: bool = False, datatype: str = "FP32"
) -> v2.ModelInferRequest:
    return tensors.make_request(name, [Tensor.of("predict", array, datatype)], raw=raw)


async def test_server_health_and_metadata(pod: Pod) -> None:
    assert (await pod.infer.ServerLive(v2.ServerLiveRequest())).live
    assert (await pod.infer.ServerReady(v2.ServerReadyRequest())).ready
    meta = await pod.infer.ServerMetadata(v2.ServerMetadataRequest())
    assert (meta.name, meta.version, list(meta.extensions)) == (
        "mmgw-runtime-pod",
        gateway.__version__,
        [],
    )


async def test_load_and_infer_by_header(pod: Pod, svc_file: Path, digit_898: np.ndarray) -> None:
    size = await pod.load(CONCRETE_ID, svc_file)
    assert size > 0
    header = ((MODEL_ID_HEADER, CONCRETE_ID),)
    response = await pod.infer.ModelInfer(_infer_request(digit_898), metadata=header)
    assert response.model_name == CONCRETE_ID
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("predict", "INT64", [1, 1])
    assert list(out.contents.int64_contents) == [8]


async def test_infer_by_model_name_and_raw(pod: Pod, svc_file: Path, digit_898: np.ndarray) -> None:
    await pod.load(CONCRETE_ID, svc_file)
    response = await pod.infer.ModelInfer(_infer_request(digit_898, CONCRETE_ID, raw=True))
    assert response.model_name == CONCRETE_ID
    assert response.raw_output_contents[0] == np.int64(8).tobytes()
    assert tensors.decode_response(response)[0].array.tolist() == [[8]]


async def test_model_ready_and_metadata(pod: Pod, svc_file: Path) -> None:
    await pod.load(CONCRETE_ID, svc_file)
    header = ((MODEL_ID_HEADER, CONCRETE_ID),)
    by_header = v2.ModelReadyRequest(name="sklearn-mnist")
    assert (await pod.infer.ModelReady(by_header, metadata=header)).ready
    assert (await pod.infer.ModelReady(v2.ModelReadyRequest(name=CONCRETE_ID))).ready
    meta = await pod.infer.ModelMetadata(v2.ModelMetadataRequest(name="x"), metadata=header)
    assert (meta.name, meta.platform) == (CONCRETE_ID, "sklearn")
    specs = [(t.name, t.datatype, list(t.shape)) for t in [*meta.inputs, *meta.outputs]]
    assert specs == [("input-0", "FP32", [-1, 64]), ("predict", "INT64", [-1, 1])]


async def test_unknown_model_is_not_found(pod: Pod, digit_898: np.ndarray) -> None:
    header = ((MODEL_ID_HEADER, "ghost__isvc-0"),)
    for call in (
        pod.infer.ModelInfer(_infer_request(digit_898), metadata=header),
        pod.infer.ModelReady(v2.ModelReadyRequest(name="ghost__isvc-0")),
        pod.infer.ModelMetadata(v2.ModelMetadataRequest(name="ghost__isvc-0")),
        pod.runtime.ModelSize(rt.ModelSizeRequest(model_id="ghost__isvc-0")),
    ):
        err = await _error(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert err.details() == "model 'ghost__isvc-0' is not loaded on this pod"


async def test_bad_input_is_invalid_argument_and_the_pod_goes_on(
    pod: Pod, svc_file: Path, digit_898: np.ndarray
) -> None:
    await pod.load(CONCRETE_ID, svc_file)
    header = ((MODEL_ID_HEADER, CONCRETE_ID),)
    int32 = _infer_request(digit_898, datatype="INT32")
    err = await _error(pod.infer.ModelInfer(int32, metadata=header))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model expects 'FP32'" in err.details()
    err = await _error(pod.infer.ModelInfer(_infer_request(digit_898[:, :63]), metadata=header))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "input 'predict': shape [1, 63] given, model expects [-1, 64]"
    short = _infer_request(digit_898)
    del short.inputs[0].contents.fp32_contents[-1]
    err = await _error(pod.infer.ModelInfer(short, metadata=header))
    assert err.details() == "input 'predict': shape [1, 64] needs 64 elements, got 63"
    wanted = _infer_request(digit_898)
    wanted.outputs.add(name="predict_proba")
    err = await _error(pod.infer.ModelInfer(wanted, metadata=header))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model offers 'predict'" in err.details()
    response = await pod.infer.ModelInfer(_infer_request(digit_898), metadata=header)
    assert list(response.outputs[0].contents.int64_contents) == [8]


async def test_load_errors(pod: Pod, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(os.urandom(256))
    err = await _error(pod.load("garbage", garbage))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot read" in err.details() and "as a scikit-learn model" in err.details()

    missing = tmp_path / "missing.joblib"
    err = await _error(pod.load("missing", missing))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == f"model file not found: {missing}"

    err = await _error(pod.load("tf", garbage, model_type="tensorflow"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "supports 'fake', " + ", ".join(f"'{t}'" for t in sorted(BUILTIN_RUNTIMES)) in err.details()
    )

    err = await _error(pod.load("", garbage))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "LoadModelRequest: model_id must be set"

    assert list((await pod.status()).loaded_models) == []  # nothing half-registered


async def test_concurrent_loads_are_coalesced(pod: Pod) -> None:
    sizes = await asyncio.gather(
        *(pod.load("m", "/fake", "fake", model_key=key(load_s=0.1, size=4242)) for _ in range(8))
    )
    assert sizes == [4242] * 8
    assert pod.fake.loads["m"] == 1
    assert await pod.load("m", "/fake", "fake") == 4242  # loaded: a no-op
    assert pod.fake.loads["m"] == 1


async def test_a_load_timeout_is_deadline_exceeded(start_pod: StartPod) -> None:
    pod = await start_pod(model_loading_timeout_ms=50)
    err = await _error(pod.load("slow", "/fake", "fake", model_key=key(load_s=5)))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.details() == "loading model 'slow' took longer than 50 ms"
    assert list((await pod.status()).loaded_models) == []


async def test_runtime_exceptions_are_internal_without_traceback(pod: Pod) -> None:
    await pod.load("boom", "/fake", "fake", model_key=key(predict_error="division by zero"))
    request = tensors.make_request("boom", [Tensor.of("x", np.ones(2, np.float32))])
    err = await _error(pod.infer.ModelInfer(request))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "ZeroDivisionError: division by zero"

    await pod.load("bug", "/fake", "fake", model_key=key(metadata_error="secret detail"))
    err = await _error(pod.infer.ModelMetadata(v2.ModelMetadataRequest(name="bug")))
    assert err.code() == grpc.StatusCode.INTERNAL and err.details() == "internal error"

    await pod.load("ok", "/fake", "fake")
    ok = tensors.make_request("ok", [Tensor.of("x", [1.5], "FP32")])
    response = await pod.infer.ModelInfer(ok)
    assert list(response.outputs[0].contents.fp32_contents) == [3.0]


async def test_unload(pod: Pod, svc_file: Path, digit_898: np.ndarray) -> None:
    await pod.load(CONCRETE_ID, svc_file)
    await pod.runtime.UnloadModel(rt.UnloadModelRequest(model_id=CONCRETE_ID))
    err = await _error(pod.infer.ModelInfer(_infer_request(digit_898, CONCRETE_ID)))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await pod.runtime.UnloadModel(rt.UnloadModelRequest(model_id=CONCRETE_ID))  # idempotent
    assert list((await pod.status()).loaded_models) == []


async def test_sizes(start_pod: StartPod, svc_file: Path, tmp_path: Path) -> None:
    pod = await start_pod(size_multiplier=2.0)
    on_disk = svc_file.stat().st_size
    assert await pod.predicted_size(svc_file) == math.ceil(on_disk * 2.0)
    size = await pod.load(CONCRETE_ID, svc_file)
    assert await pod.model_size(CONCRETE_ID) == size
    err = await _error(pod.predicted_size(tmp_path / "no"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "model file not found" in err.details()


async def test_default_size_multiplier(pod: Pod, svc_file: Path) -> None:
    assert await pod.predicted_size(svc_file) == math.ceil(svc_file.stat().st_size * 1.25)


async def test_runtime_status_lists_loaded_models(start_pod: StartPod, svc_file: Path) -> None:
    pod = await start_pod(
        capacity_bytes=123456789, max_loading_concurrency=3, model_loading_timeout_ms=5000
    )
    size = await pod.load(CONCRETE_ID, svc_file)
    await pod.load("f", "/fake", "fake", model_key=key(size=77))
    status = await pod.status()
    assert status.status == rt.RuntimeStatusResponse.READY
    assert status.capacity_in_bytes == 123456789
    assert status.max_loading_concurrency == 3
    assert status.model_loading_timeout_ms == 5000
    assert list(status.model_types) == sorted(["fake", *BUILTIN_RUNTIMES])
    assert status.runtime_version == gateway.__version__
    assert sorted((m.model_id, m.size_in_bytes) for m in status.loaded_models) == sorted(
        [(CONCRETE_ID, size), ("f", 77)]
    )


async def test_messages_above_grpcs_default_4mib_limit(pod: Pod) -> None:
    await pod.load("echo", "/fake", "fake")
    big = np.arange(2_000_000, dtype=np.float32)  # 8 MB each way
    response = await pod.infer.ModelInfer(
        tensors.make_request("echo", [Tensor.of("x", big)], raw=True)
    )
    np.testing.assert_array_equal(tensors.decode_response(response)[0].array, big * 2)


async def test_a_taken_port_is_an_error(pod: Pod) -> None:
    other = PodServer(PodSettings(port=pod.server.port or 0, capacity_bytes=1, pod_id="clash"))
    with pytest.raises(OSError, match=r"cannot bind 127\.0\.0\.1"):
        await other.start()
    await other.stop(grace=0)


def _free_port() -> int:
    return launcher.free_port()


def _nothing_listens_on(port: int, within: float = 10.0) -> bool:
    """True once the port can be bound again. SO_REUSEADDR: connections in
    TIME_WAIT do not count, a listener does; grpc closes its listener on its
    own threads, so allow it a (bounded) moment."""
    deadline = time.monotonic() + within
    while True:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
        time.sleep(0.05)


async def test_serve_runs_until_cancelled() -> None:
    port = _free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(
        serve(PodSettings(port=port, capacity_bytes=1, pod_id="s"), ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(v2.ServerLiveRequest(), timeout=5)).live
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _nothing_listens_on(port)


def test_main_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    code = (
        "from gateway.pod.server import main, PodSettings\n"
        f"main(PodSettings(port={port}, capacity_bytes=1, pod_id='p', shutdown_grace_s=0.5))\n"
    )
    log = tmp_path / "stderr.txt"
    command = [sys.executable, "-c", code]
    with log.open("wb") as stderr, subprocess.Popen(command, stderr=stderr) as proc:
        try:
            deadline = time.monotonic() + 20
            while True:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "pod did not start"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize(
    ("error", "code", "details"),
    [
        (
            LoadTimeout("took longer than 5 ms"),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "took longer than 5 ms",
        ),
        (LoadFailed("no file"), grpc.StatusCode.UNAVAILABLE, "no file"),
        (ModelFormatError("not a model"), grpc.StatusCode.FAILED_PRECONDITION, "not a model"),
        (
            ModelNotFound("m", "model 'm' is not loaded on this pod"),
            grpc.StatusCode.NOT_FOUND,
            "model 'm' is not loaded on this pod",
        ),
        (ModelNotFound("m"), grpc.StatusCode.NOT_FOUND, "model 'm' is not registered"),
        (TimeoutError("a runtime's own timeout"), grpc.StatusCode.INTERNAL, "internal error"),
    ],
)
def test_the_error_table(error: Exception, code: grpc.StatusCode, details: str) -> None:
    assert grpc_status(error) == (code, details)


def test_the_cli_passes_every_option_to_pod_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    given: list[PodSettings] = []
    monkeypatch.setattr("gateway.pod.server.main", given.append)
    monkeypatch.delenv("MMGW_STORE", raising=False)
    monkeypatch.delenv("MMGW_DATA_DIR", raising=False)
    assert cli.main(["pod", "--port", "9"]) == 0
    # the defaults agree; the id is unique per host, as a Kubernetes pod's name
    assert given.pop() == PodSettings(
        port=9, capacity_bytes=1 << 30, pod_id=f"{socket.gethostname()}-9"
    )
    argv = [
        "pod",
        "--host",
        "::1",
        "--port",
        "9101",
        "--capacity",
        "512Mi",
        "--id",
        "p",
        "--max-loading-concurrency",
        "3",
        "--model-loading-timeout-ms",
        "5000",
        "--max-message-bytes",
        "8Mi",
        "--store",
        "etcd://e:2379",
        "--data-dir",
        "/d",
        "--advertise",
        "10.0.0.7:9101",
        "--runtime-name",
        "mlserver-1.x",
    ]
    assert cli.main(argv) == 0
    expected = PodSettings(
        host="::1",
        port=9101,
        capacity_bytes=512 << 20,
        pod_id="p",
        max_loading_concurrency=3,
        model_loading_timeout_ms=5000,
        max_message_bytes=8 << 20,
        store="etcd://e:2379",
        data_dir=Path("/d"),
        advertise="10.0.0.7:9101",
        runtime_name="mlserver-1.x",
    )
    settings = given.pop()
    assert settings == expected
    # what was given on the command line wins over a ServingRuntime's YAML (gateway.pod.profile)
    assert {"capacity_bytes", "model_loading_timeout_ms"} <= settings.model_fields_set
    assert "unload_drain_seconds" not in settings.model_fields_set  # not given: a default


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_loading_concurrency"):
        PodSettings(port=0, capacity_bytes=1, pod_id="p", max_loading_concurrency=0)
    with pytest.raises(ValueError, match="port"):
        PodSettings(port=70000, capacity_bytes=1, pod_id="p")
    settings = PodSettings(port=0, capacity_bytes=1, pod_id="p")
    assert (settings.host, settings.max_message_bytes, settings.size_multiplier) == (
        "127.0.0.1",
        64 << 20,
        1.25,
    )


def test_the_pods_environment_fills_what_no_flag_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    given: list[PodSettings] = []
    monkeypatch.setattr("gateway.pod.server.main", given.append)
    monkeypatch.setenv("MMGW_STORE", "etcd://e:2379")
    monkeypatch.setenv("MMGW_DATA_DIR", "/data")
    monkeypatch.setenv("MMGW_UNLOAD_DRAIN_SECONDS", "5")
    assert cli.main(["pod", "--port", "9", "--store", "embedded"]) == 0
    settings = given.pop()
    assert (settings.store, settings.data_dir, settings.unload_drain_seconds) == (
        "embedded",  # the flag wins over the environment
        Path("/data"),
        5.0,
    )


def test_a_bad_pod_setting_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pod", "--port", "9", "--max-loading-concurrency", "0"]) != 0
    err = capsys.readouterr().err
    assert "max_loading_concurrency" in err and "greater than or equal to 1" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "ModelReady"])
async def test_an_undecodable_message_is_invalid_argument(pod: Pod, method: str) -> None:
    """grpc answers a deserializer's exception UNKNOWN, with the Python class name; the pod's
    tolerant deserializers make it INVALID_ARGUMENT naming the message type."""
    async with grpc.aio.insecure_channel(pod.server.address) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        err = await _error(call(b"\xff\xff\xff", metadata=(("mm-model-id", "m"),)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("the request is not a valid inference.")
    assert "class" not in err.details()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="headers-end-the-stream"),
        pytest.param(b"", id="empty-data"),
        pytest.param(b"\x00\x00\x00", id="3-bytes"),
        pytest.param(rawgrpc.grpc_message(b"\x0a\x01m")[:-1], id="prefix-says-one-more"),
    ],
)
async def test_a_call_without_a_complete_message_is_answered_at_once(
    pod: Pod, body: bytes | None
) -> None:
    """grpc's unary handling never answers these; each held a stream until the client's
    deadline (and 1,100 of them, Envoy's circuit breaker for everyone)."""

    def call() -> rawgrpc.Answer:
        assert pod.server.port is not None
        with rawgrpc.RawConnection(pod.server.port) as connection:
            stream = connection.call(body, metadata=(("mm-model-id", "m"),))
            return connection.wait(stream, timeout=10)

    answer = await asyncio.to_thread(call)
    assert not answer.timed_out
    assert answer.grpc_status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert answer.grpc_message.startswith(
        "the request is not a valid inference.ModelInferRequest: the call ended before a "
        "complete message arrived"
    )


def test_a_model_whose_metadata_fails_keeps_the_requests_own_error() -> None:
    """decode_for asks the model for its declared datatypes only when decoding failed; a
    model that cannot say leaves the decoding error as it was."""

    class Mute:
        def metadata(self) -> None:
            raise RuntimeError("no metadata")

    def decode() -> None:
        raise InvalidInput("input 'x': shape [1, 2] needs 2 elements, got 1")

    with pytest.raises(InvalidInput, match="needs 2 elements"):
        decode_for(Mute(), decode, lambda: [("x", "INT32")])  # type: ignore[arg-type]
