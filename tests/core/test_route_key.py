from __future__ import annotations

import pytest
from envoy.config.core.v3.base_pb2 import HeaderValue

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway.core import route_key
from gateway.core.errors import InvalidInput, UnknownRoute
from gateway.core.route_key import NEED_BODY, RouteKey


def headers(**values: str) -> list[HeaderValue]:
    return [
        HeaderValue(key=k.replace("_", "-") if not k.startswith(":") else k, raw_value=v.encode())
        for k, v in values.items()
    ]


def path(p: str, **more: str) -> list[HeaderValue]:
    return [HeaderValue(key=":path", raw_value=p.encode()), *headers(**more)]


@pytest.mark.parametrize(
    ("p", "model"),
    [
        ("/v2/models/sklearn-mnist/infer", "sklearn-mnist"),
        ("/v2/models/sklearn-mnist/versions/1/infer", "sklearn-mnist"),
        ("/v2/models/sklearn-mnist", "sklearn-mnist"),
        ("/v2/models/sklearn-mnist/ready", "sklearn-mnist"),
        ("/v2/models/sklearn-mnist/versions/2", "sklearn-mnist"),
        ("/v2/models/sklearn-mnist/versions/2/ready?x=1", "sklearn-mnist"),
        ("/v2/models/a%5Fb/infer", "a_b"),
        ("/v2", None),
        ("/v2/health/live", None),
        ("/v2/health/ready", None),
    ],
)
def test_rest_paths(p: str, model: str | None) -> None:
    assert route_key.from_headers(path(p)) == RouteKey(model, grpc=False)


@pytest.mark.parametrize(
    "p",
    [
        "/v2/models",
        "/v2/models/",
        "/v2/models/m/explain",
        "/v2/foo",
        "/v1/models/m:predict",
        "/v2/models/m/versions/",
        "/v2/models/m/infer/more",
    ],
)
def test_unknown_rest_paths(p: str) -> None:
    with pytest.raises(UnknownRoute):
        route_key.from_headers(path(p))


def test_grpc_headers_name_the_model() -> None:
    infer = "/inference.GRPCInferenceService/ModelInfer"
    assert route_key.from_headers(path(infer, mm_model_id="c__isvc-1")) == RouteKey(
        "c__isvc-1", grpc=True
    )
    assert route_key.from_headers(path(infer, mm_vmodel_id="v")) == RouteKey("v", grpc=True)
    assert route_key.from_headers(path(infer)) is NEED_BODY
    assert route_key.from_headers(path("/inference.GRPCInferenceService/ServerLive")) == RouteKey(
        None, grpc=True
    )
    with pytest.raises(UnknownRoute, match="RepositoryIndex"):
        route_key.from_headers(path("/inference.GRPCInferenceService/RepositoryIndex"))


def test_envoy_value_field_is_read_when_raw_value_is_empty() -> None:
    hv = [HeaderValue(key=":path", value="/v2/models/m/infer")]
    assert route_key.from_headers(hv) == RouteKey("m", grpc=False)


def frame(message: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


def test_grpc_frame_field_one() -> None:
    request = v2.ModelInferRequest(model_name="sklearn-mnist", id="42")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend(
        [1.0] * 64
    )
    assert route_key.from_grpc_frame(frame(request.SerializeToString())) == RouteKey(
        "sklearn-mnist", grpc=True
    )
    ready = v2.ModelReadyRequest(name="m", version="1")
    assert route_key.from_grpc_frame(frame(ready.SerializeToString())).model == "m"


def test_grpc_frame_field_one_after_other_fields() -> None:
    # Protobuf allows any field order on the wire: id (3) before model_name (1).
    body = (
        v2.ModelInferRequest(id="abc").SerializeToString()
        + v2.ModelInferRequest(model_name="late").SerializeToString()
    )
    assert route_key.from_grpc_frame(frame(body)).model == "late"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no message"),
        (frame(b"", flag=1), "compressed"),
        (frame(v2.ModelInferRequest(id="x").SerializeToString()), "names no model"),
        (frame(b"\x0a\xff"), "truncated"),
        (frame(b"\x0a\x01m")[:-1], "truncated: its length prefix says 3 bytes, 2 came"),
    ],
)
def test_grpc_frame_errors(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        route_key.from_grpc_frame(body)


def test_the_first_bytes_of_a_large_message_name_its_model() -> None:
    """Envoy sends ext_proc at most its buffer's worth of a large message (not complete):
    field 1 comes first, so the name is read there; a short prefix is not truncation."""
    message = v2.ModelInferRequest(model_name="big", raw_input_contents=[b"x" * 1000])
    start = frame(message.SerializeToString())[:100]
    assert route_key.from_grpc_frame(start, complete=False).model == "big"
    with pytest.raises(InvalidInput, match="truncated"):
        route_key.from_grpc_frame(start)
    nameless = frame(v2.ModelInferRequest(raw_input_contents=[b"x" * 1000]).SerializeToString())
    with pytest.raises(InvalidInput, match="names no model in its first 95 bytes"):
        route_key.from_grpc_frame(nameless[:100], complete=False)


def test_the_rest_form_is_read_from_x_mmgw_form_on_rest_paths_only() -> None:
    infer = "/v2/models/m/infer"
    assert route_key.from_headers(path(infer, x_mmgw_form="oip")) == RouteKey(
        "m", grpc=False, oip=True
    )
    assert route_key.from_headers(path(infer, x_mmgw_form="other")).oip is False
    grpc_path = "/inference.GRPCInferenceService/ModelInfer"
    assert route_key.from_headers(path(grpc_path, mm_vmodel_id="m", x_mmgw_form="oip")) == (
        RouteKey("m", grpc=True)
    )


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"mm_vmodel_id": "v", "mm_model_id": "c"},
            "must include only one of model id and vmodel id",
        ),
        (
            {"mm_vmodel_id": "", "mm_model_id": "c"},
            "must include only one of model id and vmodel id",
        ),
        ({"mm_vmodel_id": ""}, "provided vmodel-id header must be non-empty"),
        ({"mm_model_id": ""}, "provided model-id header must be non-empty"),
    ],
)
def test_model_id_headers_are_refused_as_modelmesh_refuses_them(
    given: dict[str, str], message: str
) -> None:
    """ModelMeshApi's answers (getModelIdsFromHeaders, validateModelId): INVALID_ARGUMENT."""
    with pytest.raises(InvalidInput, match=message):
        route_key.from_headers(path("/inference.GRPCInferenceService/ModelInfer", **given))


def test_the_variant_header_is_read_with_the_model_name() -> None:
    variant = "m__isvc-0123456789"
    rest = route_key.from_headers(path("/v2/models/m/infer", x_mmgw_variant=variant))
    assert rest == RouteKey("m", grpc=False, variant=variant)
    grpc_call = route_key.from_headers(
        path("/inference.GRPCInferenceService/ModelInfer", mm_vmodel_id="m", x_mmgw_variant=variant)
    )
    assert grpc_call == RouteKey("m", grpc=True, variant=variant)
    assert route_key.from_headers(path("/v2/health/ready", x_mmgw_variant=variant)).variant is None


def test_openai_paths_are_named_by_the_bodys_model_in_the_metadata() -> None:
    for p in ("/v1/completions", "/v1/chat/completions", "/v1/completions?x=1"):
        assert route_key.from_headers(path(p)) is route_key.NEED_OPENAI_MODEL
    key = route_key.from_openai({"model": "tiny-lm"})
    assert key == route_key.RouteKey("tiny-lm", grpc=False, oip=True)
    for fields, message in [
        ({}, "send the request body as JSON"),
        ({"invalid": True}, "send the request body as JSON"),
        ({"model": ""}, "'model' must be a non-empty string"),
        ({"model": 3.0}, "'model' must be a non-empty string"),
        ({"model": ["a"]}, "'model' must be a non-empty string"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            route_key.from_openai(fields)
    with pytest.raises(UnknownRoute):
        route_key.from_headers(path("/v1/embeddings"))
