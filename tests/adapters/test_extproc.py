"""The ext_proc servicer fed ProcessingRequest sequences, whole responses compared."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import duration_pb2

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway.adapters.extproc.processor import Answer, ExternalProcessor
from gateway.control.router import Router

from ..core.fakes import FakePod, FakePods
from ..core.harness import Harness, harness, isvc

POD = "10.0.0.1:9000"
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def headers(path: str, **extra: str) -> pb.ProcessingRequest:
    values = [
        (":path", path),
        (":method", "POST"),
        *((k.replace("_", "-"), v) for k, v in extra.items()),
    ]
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values]
            )
        )
    )


def body(message: bytes) -> pb.ProcessingRequest:
    frame = b"\x00" + len(message).to_bytes(4, "big") + message
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=frame, end_of_stream=True))


def setting(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()), append_action=OVERWRITE
    )


def forward(address: str, model_id: str | None, *, in_body: bool = False) -> pb.ProcessingResponse:
    sets = [setting("x-mmgw-upstream", address)]
    if model_id:
        sets.append(setting("mm-model-id", model_id))
    removed = ["x-mmgw-name-in-request", "x-mmgw-shadow"]
    mutation = pb.HeaderMutation(set_headers=sets, remove_headers=removed)
    common = pb.CommonResponse(header_mutation=mutation)
    if in_body:
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))


async def run(
    processor: ExternalProcessor, *messages: pb.ProcessingRequest
) -> list[pb.ProcessingResponse]:
    """Feed one stream's messages; collect every response as the transport would send it."""
    sent: list[bytes] = []
    for message in messages:
        answer = processor.answer(message)
        if not isinstance(answer, Answer):
            sent.append(processor.extend_timeout)
            answer = await answer
        sent.append(answer)
    return [pb.ProcessingResponse.FromString(raw) for raw in sent]


@pytest.fixture
async def loaded(tmp_path: Path) -> tuple[Harness, ExternalProcessor, str]:
    h = await harness(tmp_path, FakePods(**{POD: FakePod()}))
    record, _ = await h.registry.apply(isvc())
    await h.placement.ensure_loaded(record.serving.model_id)
    return h, ExternalProcessor(h.router, miss_timeout=100), record.serving.model_id


@pytest.mark.parametrize(
    ("path", "form", "upstream"),
    [
        ("/inference.GRPCInferenceService/ModelInfer", "", "10.0.0.1:9201"),  # MLServer's gRPC
        ("/v2/models/sklearn-mnist/infer", "", "10.0.0.1:9201"),  # transcoded to gRPC
        ("/v2/models/sklearn-mnist/infer", "oip", "10.0.0.1:9202"),  # MLServer's REST
    ],
)
async def test_a_pod_whose_mlserver_serves_gets_the_request_named_by_envoy(
    tmp_path: Path, path: str, form: str, upstream: str
) -> None:
    """Inference goes to the MLServer beside the pod's adapter, and Envoy is told to write the
    concrete id into the request (x-mmgw-name-in-request)."""
    mlserver = FakePod(rest_port=9202, data_grpc_port=9201, named_in_request=True)
    h = await harness(tmp_path, FakePods(**{POD: mlserver}))
    record, _ = await h.registry.apply(isvc())
    await h.placement.ensure_loaded(record.serving.model_id)
    processor = ExternalProcessor(h.router, miss_timeout=100)
    extra = {"mm-vmodel-id": "sklearn-mnist"} if path.startswith("/inference") else {}
    if form:
        extra["x-mmgw-form"] = form
    for _ in range(2):  # made, then from the memo
        (answer,) = await run(processor, headers(path, **extra))
        mutation = answer.request_headers.response.header_mutation
        sets = {s.header.key: s.header.raw_value.decode() for s in mutation.set_headers}
        assert sets["x-mmgw-upstream"] == upstream
        assert sets["mm-model-id"] == record.serving.model_id
        assert sets["x-mmgw-name-in-request"] == "model-id"
        assert "x-mmgw-name-in-request" not in mutation.remove_headers


async def test_rest_hit_sets_the_pod_and_the_concrete_id(
    loaded: tuple[Harness, ExternalProcessor, str],
) -> None:
    _, processor, model_id = loaded
    assert await run(processor, headers("/v2/models/sklearn-mnist/infer")) == [
        forward(POD, model_id)
    ]


async def test_client_sent_routing_headers_are_overwritten(
    loaded: tuple[Harness, ExternalProcessor, str],
) -> None:
    _, processor, model_id = loaded
    sneaky = headers("/v2/models/sklearn-mnist/infer", x_mmgw_upstream="169.254.169.254:80")
    [response] = await run(processor, sneaky)
    assert response == forward(POD, model_id)
    assert all(
        o.append_action == OVERWRITE
        for o in response.request_headers.response.header_mutation.set_headers
    )


async def test_an_oip_request_goes_to_the_pods_rest_listener(tmp_path: Path) -> None:
    """The Lua filter's x-mmgw-form: oip sends the request to the REST port the pod reported,
    for REST paths only; the other forms keep the gRPC address."""
    h = await harness(tmp_path, FakePods(**{POD: FakePod(rest_port=9111)}))
    record, _ = await h.registry.apply(isvc())
    await h.placement.ensure_loaded(record.serving.model_id)
    processor, model_id = ExternalProcessor(h.router, miss_timeout=100), record.serving.model_id
    oip = headers("/v2/models/sklearn-mnist/infer", x_mmgw_form="oip")
    assert await run(processor, oip) == [forward("10.0.0.1:9111", model_id)]
    assert await run(processor, headers("/v2", x_mmgw_form="oip")) == [
        forward("10.0.0.1:9111", None)
    ]
    assert await run(processor, headers("/v2/models/sklearn-mnist/infer")) == [
        forward(POD, model_id)
    ]
    grpc_call = headers(
        "/inference.GRPCInferenceService/ModelInfer",
        mm_vmodel_id="sklearn-mnist",
        x_mmgw_form="oip",
    )
    assert await run(processor, grpc_call) == [forward(POD, model_id)]


async def test_an_oip_request_to_a_pod_without_a_rest_listener_is_503(
    loaded: tuple[Harness, ExternalProcessor, str],
) -> None:
    _, processor, _ = loaded
    [response] = await run(processor, headers("/v2/models/sklearn-mnist/infer", x_mmgw_form="oip"))
    immediate = response.immediate_response
    assert immediate.status.code == 503
    assert b"serves no Open Inference Protocol REST listener" in immediate.body


async def test_grpc_with_header_needs_no_body(
    loaded: tuple[Harness, ExternalProcessor, str],
) -> None:
    _, processor, model_id = loaded
    call = headers(
        "/inference.GRPCInferenceService/ModelInfer",
        mm_vmodel_id="sklearn-mnist",
        content_type="application/grpc",
    )
    assert await run(processor, call) == [forward(POD, model_id)]


async def test_grpc_without_header_asks_for_the_body(
    loaded: tuple[Harness, ExternalProcessor, str],
) -> None:
    _, processor, model_id = loaded
    call = headers("/inference.GRPCInferenceService/ModelInfer", content_type="application/grpc")
    message = v2.ModelInferRequest(model_name="sklearn-mnist").SerializeToString()
    responses = await run(processor, call, body(message))
    ask = pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(),
        mode_override=ProcessingMode(request_body_mode=ProcessingMode.BUFFERED_PARTIAL),
    )
    assert responses == [ask, forward(POD, model_id, in_body=True)]


async def test_server_calls_go_to_a_healthy_pod(
    loaded: tuple[Harness, ExternalProcessor, str],
) -> None:
    _, processor, _ = loaded
    assert await run(processor, headers("/v2/health/ready")) == [forward(POD, None)]
    grpc_live = headers(
        "/inference.GRPCInferenceService/ServerLive", content_type="application/grpc"
    )
    assert await run(processor, grpc_live) == [forward(POD, None)]


async def test_miss_extends_the_timeout_then_forwards(tmp_path: Path) -> None:
    h = await harness(tmp_path, FakePods(**{POD: FakePod()}))
    h.pods.gate = asyncio.Event()
    record, _ = await h.registry.apply(isvc())
    processor = ExternalProcessor(h.router, miss_timeout=100)
    task = asyncio.create_task(run(processor, headers("/v2/models/sklearn-mnist/infer")))
    await asyncio.sleep(0.01)
    h.pods.gate.set()
    assert await task == [
        pb.ProcessingResponse(override_message_timeout=duration_pb2.Duration(seconds=100)),
        forward(POD, record.serving.model_id),
    ]
    assert len(h.pods.loads) == 1


def rest_error(status: int, code: grpc.StatusCode, message: str) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status={"code": status}, body=message.encode(), details=f"mmgw_{code.name.lower()}"
        )
    )


def grpc_error(code: grpc.StatusCode, message: str) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status={"code": 200},
            grpc_status=pb.GrpcStatus(status=code.value[0]),
            body=message.encode(),
            details=f"mmgw_{code.name.lower()}",
        )
    )


async def test_unknown_model_rest_and_grpc(loaded: tuple[Harness, ExternalProcessor, str]) -> None:
    _, processor, _ = loaded
    assert await run(processor, headers("/v2/models/nope/infer")) == [
        rest_error(404, grpc.StatusCode.NOT_FOUND, "model 'nope' is not registered")
    ]
    call = headers(
        "/inference.GRPCInferenceService/ModelInfer",
        mm_vmodel_id="nope",
        content_type="application/grpc",
    )
    assert await run(processor, call) == [
        grpc_error(grpc.StatusCode.NOT_FOUND, "model 'nope' is not registered")
    ]


async def test_unknown_paths_and_methods(loaded: tuple[Harness, ExternalProcessor, str]) -> None:
    _, processor, _ = loaded
    assert await run(processor, headers("/v2/models/m/explain")) == [
        rest_error(404, grpc.StatusCode.UNIMPLEMENTED, "unknown path '/v2/models/m/explain'")
    ]
    call = headers(
        "/inference.GRPCInferenceService/ModelStreamInfer", content_type="application/grpc"
    )
    assert await run(processor, call) == [
        grpc_error(
            grpc.StatusCode.UNIMPLEMENTED,
            "unknown method inference.GRPCInferenceService/ModelStreamInfer",
        )
    ]


async def test_body_without_a_model_name(loaded: tuple[Harness, ExternalProcessor, str]) -> None:
    _, processor, _ = loaded
    call = headers("/inference.GRPCInferenceService/ModelInfer", content_type="application/grpc")
    responses = await run(processor, call, body(v2.ModelInferRequest(id="1").SerializeToString()))
    assert responses[1] == grpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request names no model: set model_name (or the mm-vmodel-id header)",
    )


async def test_a_call_that_ends_with_its_headers_is_answered_not_asked_for_a_body(
    loaded: tuple[Harness, ExternalProcessor, str],
) -> None:
    # no body will ever come: asking for one would hold the stream until Envoy gives up
    _, processor, _ = loaded
    call = headers("/inference.GRPCInferenceService/ModelInfer", content_type="application/grpc")
    call.request_headers.end_of_stream = True
    assert await run(processor, call) == [
        grpc_error(grpc.StatusCode.INVALID_ARGUMENT, "the gRPC request has no message")
    ]


async def test_an_inference_services_per_try_timeout_goes_to_envoys_router(
    tmp_path: Path,
) -> None:
    h = await harness(tmp_path, FakePods(**{POD: FakePod()}))
    document = isvc()
    document["metadata"]["annotations"]["mmgw.io/per-try-timeout"] = "1500ms"
    record, _ = await h.registry.apply(document)
    await h.placement.ensure_loaded(record.serving.model_id)
    processor = ExternalProcessor(h.router, miss_timeout=100)
    (answer,) = await run(processor, headers("/v2/models/sklearn-mnist/infer"))
    sets = list(answer.request_headers.response.header_mutation.set_headers)
    assert sets[2:] == [setting("x-envoy-upstream-rq-per-try-timeout-ms", "1500")]
    document["metadata"]["annotations"].pop("mmgw.io/per-try-timeout")
    await h.registry.apply(document)  # removed: envoy.yaml's default again
    (answer,) = await run(processor, headers("/v2/models/sklearn-mnist/infer"))
    assert answer == forward(POD, record.serving.model_id)


async def test_failed_load_is_503_with_the_reason(tmp_path: Path) -> None:
    h = await harness(tmp_path, FakePods(**{POD: FakePod(fail_loads="disk on fire")}))
    await h.registry.apply(isvc())
    processor = ExternalProcessor(h.router, miss_timeout=100)
    responses = await run(processor, headers("/v2/models/sklearn-mnist/infer"))
    immediate = responses[-1].immediate_response
    assert immediate.status.code == 503
    assert "disk on fire" in immediate.body.decode()


async def test_one_stream_serves_many_requests_in_sequence(
    loaded: tuple[Harness, ExternalProcessor, str],
) -> None:
    _, processor, model_id = loaded
    responses = await run(
        processor, headers("/v2/models/sklearn-mnist/infer"), headers("/v2/models/nope/ready")
    )
    assert responses[0] == forward(POD, model_id)
    assert responses[1].immediate_response.status.code == 404


async def test_a_kept_answer_counts_each_request_and_follows_the_copies(tmp_path: Path) -> None:
    other = "10.0.0.2:9000"
    h = await harness(tmp_path, FakePods(**{POD: FakePod(), other: FakePod()}))
    record, _ = await h.registry.apply(isvc())
    model_id = record.serving.model_id
    await h.placement.ensure_loaded(model_id)
    processor = ExternalProcessor(h.router, miss_timeout=100)
    before = h.placement.model_requests()[model_id]
    first = processor.answer(headers("/v2/models/sklearn-mnist/infer"))
    again = processor.answer(headers("/v2/models/sklearn-mnist/infer"))
    assert first is again  # kept: serialized once
    assert h.placement.model_requests()[model_id] == before + 2  # yet each request counted
    (only,) = [p for p in h.placement.snapshot()["pods"] if p["models"]]

    # A second copy: the kept answer goes; the forward now names the other copy for a retry.
    assert await h.placement.ensure_copies(model_id, 2) == 2
    [both] = await run(processor, headers("/v2/models/sklearn-mnist/infer"))
    upstream = both.request_headers.response.header_mutation.set_headers[
        0
    ].header.raw_value.decode()
    assert sorted(upstream.split(",")) == sorted([POD, other])

    # The copy that served first is lost: forwards go to the one left, with no fallback.
    h.pods.pods[only["pod"]].down = True
    await h.placement.check_pods()
    left = other if only["pod"] == POD else POD
    assert await run(processor, headers("/v2/models/sklearn-mnist/infer")) == [
        forward(left, model_id)
    ]
    assert await run(processor, headers("/v2/models/sklearn-mnist/infer")) == [
        forward(left, model_id)
    ]
    assert h.placement.model_requests()[model_id] == before + 5


async def test_hits_kept_before_a_route_change_are_counted_to_the_copy_that_served_them(
    loaded: tuple[Harness, ExternalProcessor, str],
) -> None:
    h, processor, model_id = loaded
    before = h.placement.model_requests()[model_id]
    request = headers("/v2/models/sklearn-mnist/infer")
    first = processor.answer(request)
    assert processor.answer(request) is first  # kept; this hit is only buffered
    await h.registry.apply(isvc("another"))  # the routes change before anyone counted
    assert await run(processor, request) == [forward(POD, model_id)]
    assert h.placement.model_requests()[model_id] == before + 3


async def test_an_experiments_mirror_gets_a_copy_named_in_the_shadow_headers(
    tmp_path: Path,
) -> None:
    h = await harness(tmp_path, FakePods(**{POD: FakePod()}))
    a, _ = await h.registry.apply(isvc("mnist-a"))
    m, _ = await h.registry.apply(isvc("mnist-m", "v2.joblib"))
    for record in (a, m):
        await h.placement.ensure_loaded(record.serving.model_id)
    await h.registry.apply_experiment(
        {
            "apiVersion": "mlops.seldon.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "mnist-ab"},
            "spec": {
                "candidates": [{"name": "mnist-a", "weight": 1}],
                "mirror": {"name": "mnist-m", "percent": 100},
            },
        }
    )
    processor = ExternalProcessor(
        Router(h.registry, h.placement, random=lambda: 0.0), miss_timeout=100
    )
    call = headers("/v2/models/mnist-ab/infer")
    for _ in range(2):  # the answer that is made, then the one from the memo: both copy
        (answer,) = await run(processor, call)
        mutation = answer.request_headers.response.header_mutation
        sets = {s.header.key: s.header.raw_value.decode() for s in mutation.set_headers}
        assert sets["mm-model-id"] == a.serving.model_id
        assert sets["x-mmgw-shadow"] == "pods"
        assert sets["x-mmgw-shadow-model-id"] == m.serving.model_id
        assert sets["x-mmgw-shadow-upstream"] == POD
        assert list(mutation.remove_headers) == ["x-mmgw-name-in-request"]
    (plain,) = await run(processor, headers("/v2/models/mnist-a/infer"))  # no mirror
    assert plain == forward(POD, a.serving.model_id)


def openai_request(path: str, fields: dict[str, object] | None) -> pb.ProcessingRequest:
    """An OpenAI API request's headers, with what json_to_metadata read of its body."""
    request = headers(path, content_type="application/json")
    if fields is not None:
        namespace = request.metadata_context.filter_metadata["mmgw.openai"]
        namespace.update(fields)
    return request


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_an_openai_request_is_routed_by_the_bodys_model_to_the_pods_rest_listener(
    tmp_path: Path, path: str
) -> None:
    h = await harness(tmp_path, FakePods(**{POD: FakePod(rest_port=9300)}))
    record, _ = await h.registry.apply(isvc())
    await h.placement.ensure_loaded(record.serving.model_id)
    processor = ExternalProcessor(h.router, miss_timeout=100)
    (answer,) = await run(processor, openai_request(path, {"model": "sklearn-mnist"}))
    assert answer == forward("10.0.0.1:9300", record.serving.model_id)


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        (None, 400, "send the request body as JSON"),  # not sent as application/json
        ({"invalid": True}, 400, "send the request body as JSON"),  # not JSON
        ({"model": ""}, 400, "'model' must be a non-empty string"),  # no model field
        ({"model": 7}, 400, "'model' must be a non-empty string"),
        ({"model": "nope"}, 404, "model 'nope' is not registered"),
    ],
)
async def test_an_openai_request_without_a_usable_model_gets_a_rest_error(
    loaded: tuple[Harness, ExternalProcessor, str],
    fields: dict[str, object] | None,
    status: int,
    message: str,
) -> None:
    _, processor, _ = loaded
    (answer,) = await run(processor, openai_request("/v1/completions", fields))
    immediate = answer.immediate_response
    assert immediate.status.code == status  # an HTTP status: not a gRPC call
    assert not immediate.HasField("grpc_status")
    assert message in immediate.body.decode()
