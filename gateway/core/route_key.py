"""What a request asks for: the model name, read from where the client put it.

- REST: the path, /v2/models/<name>[/versions/<v>][/infer|/ready], and the form
  Envoy found the request in (the x-mmgw-form header: protobuf JSON or OIP);
- native gRPC: the mm-vmodel-id or mm-model-id header (one of them, not empty:
  INVALID_ARGUMENT otherwise, as ModelMesh answers), or else field 1 of the
  request message (model_name / name), read from the raw gRPC frame.

- OpenAI's API (POST /v1/completions, /v1/chat/completions): the JSON body's
  ``model``, which Envoy's json_to_metadata filter reads into the request's dynamic
  metadata: ``from_headers`` answers NEED_OPENAI_MODEL, and ``from_openai`` reads it.

Server-level calls (/v2, /v2/health/*, ServerLive/Ready/Metadata) name no
model. Anything else is an UnknownRoute. A request may ask for one version of
its model in the x-mmgw-variant header (a native gRPC call: when a header names
the model; one named in the body alone is routed without it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from gateway.core import protocol
from gateway.core.errors import InvalidInput, UnknownRoute


class Header(Protocol):
    key: str
    value: str
    raw_value: bytes


@dataclass(frozen=True, slots=True)
class RouteKey:
    model: str | None  # None: a server-level call
    grpc: bool
    # a REST request in the Open Inference Protocol's form: the pod's REST listener answers it
    oip: bool = False
    variant: str | None = None  # the version the request asks for (VARIANT_HEADER)


@dataclass(frozen=True, slots=True)
class NeedBody:
    """A native gRPC call naming its model only in the message body."""


NEED_BODY = NeedBody()


@dataclass(frozen=True, slots=True)
class NeedOpenAIModel:
    """An OpenAI API request: its model is the body's ``model``, in the request's metadata."""


NEED_OPENAI_MODEL = NeedOpenAIModel()
_SERVER_PATHS = frozenset({"/v2", "/v2/", "/v2/health/live", "/v2/health/ready"})
_MODEL_SUFFIXES = frozenset({"infer", "ready"})


def from_headers(headers: Iterable[Header]) -> RouteKey | NeedBody | NeedOpenAIModel:
    path = form = ""
    vmodel = model = variant = None  # None: the header is absent
    for header in headers:
        key = header.key
        if key == ":path":
            path = _text(header)
        elif key == protocol.REST_FORM_HEADER:
            form = _text(header)
        elif key == protocol.VARIANT_HEADER:
            variant = _text(header) or None
        elif key == protocol.VMODEL_ID_HEADER:
            vmodel = _text(header)
        elif key == protocol.MODEL_ID_HEADER:
            model = _text(header)
    if path.startswith(protocol.GRPC_PREFIX):
        method = path[len(protocol.GRPC_PREFIX) :]
        if method in protocol.SERVER_METHODS:
            return RouteKey(None, grpc=True)
        if method not in protocol.MODEL_METHODS:
            raise UnknownRoute(f"unknown method {protocol.GRPC_SERVICE}/{method}", grpc=True)
        return _named_by_headers(vmodel, model, variant)
    if path.startswith("/v1/") and path.split("?", 1)[0] in protocol.OPENAI_PATHS:
        return NEED_OPENAI_MODEL
    name = rest_model(path)
    return RouteKey(
        name, grpc=False, oip=form == protocol.REST_FORM_OIP, variant=variant if name else None
    )


def _named_by_headers(
    vmodel: str | None, model: str | None, variant: str | None
) -> RouteKey | NeedBody:
    """The model a gRPC call's headers name, as ModelMesh reads them (ModelMeshApi: one of the
    two headers, never both, and not empty); NEED_BODY when it sends neither."""
    if vmodel is not None and model is not None:
        raise InvalidInput("must include only one of model id and vmodel id")
    name = vmodel if vmodel is not None else model
    if name is None:
        return NEED_BODY
    if not name:
        which = "vmodel" if vmodel is not None else "model"
        raise InvalidInput(f"provided {which}-id header must be non-empty")
    return RouteKey(name, grpc=True, variant=variant)


def _text(header: Header) -> str:
    # Envoy 1.40 sends header values in raw_value, older versions in value.
    return header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value


def rest_model(path: str) -> str | None:
    """The model a REST path names, None for server-level paths."""
    path = path.split("?", 1)[0]
    if path in _SERVER_PATHS:
        return None
    parts = path.split("/")  # "", "v2", "models", name, ...
    if len(parts) >= 4 and parts[1] == "v2" and parts[2] == "models" and parts[3]:
        rest = parts[4:]
        if rest[:1] == ["versions"] and len(rest) >= 2 and rest[1]:
            rest = rest[2:]
        if not rest or (len(rest) == 1 and rest[0] in _MODEL_SUFFIXES):
            return unquote(parts[3])
    raise UnknownRoute(f"unknown path {path!r}")


NO_MESSAGE = "the gRPC request has no message"
NOT_JSON = (
    "send the request body as JSON (Content-Type: application/json) naming the model "
    'in "model", as OpenAI\'s API does'
)


def from_openai(fields: dict[str, object]) -> RouteKey:
    """The model of an OpenAI API request, from what json_to_metadata read of its body:
    ``{"model": <the body's model>}``, ``{"invalid": True}`` when the body is not JSON, and
    nothing when it was not sent as JSON. Sent to the pod's REST listener (``oip``)."""
    if not fields or fields.get("invalid"):
        raise InvalidInput(NOT_JSON)
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("'model' must be a non-empty string naming the model")
    return RouteKey(model, grpc=False, oip=True)


def from_grpc_frame(body: bytes, *, complete: bool = True) -> RouteKey:
    """The model named in field 1 of a gRPC request message (after the 5-byte frame header).

    ``complete``: ``body`` is the whole request; else its first bytes (Envoy sends ext_proc
    at most its buffer's worth of a larger message), which hold field 1 in any message
    serialized in field order, as protobuf libraries do."""
    if len(body) < 5:
        raise InvalidInput(NO_MESSAGE)
    if body[0] != 0:
        raise InvalidInput(
            f"compressed gRPC messages need the {protocol.VMODEL_ID_HEADER} header to name the model"
        )
    end = 5 + int.from_bytes(body[1:5], "big")
    if end > len(body) and complete:
        raise InvalidInput(
            f"the gRPC request is truncated: its length prefix says {end - 5} bytes, "
            f"{len(body) - 5} came"
        )
    pos, present = 5, min(end, len(body))
    while pos < present:
        tag, pos = _varint(body, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = _varint(body, pos)
            if field == 1 and pos + length <= present:
                return RouteKey(body[pos : pos + length].decode("utf-8", "replace"), grpc=True)
            pos += length
        elif wire == 0:
            _, pos = _varint(body, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            break
    if end > len(body):
        raise InvalidInput(
            f"the request names no model in its first {len(body) - 5} bytes: set model_name "
            "(serialized first, as protobuf libraries do) or the mm-vmodel-id header"
        )
    raise InvalidInput("the request names no model: set model_name (or the mm-vmodel-id header)")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise InvalidInput("the gRPC request message is truncated")
