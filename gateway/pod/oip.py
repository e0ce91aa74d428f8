"""The Open Inference Protocol's REST form of tensors: JSON ``data`` and Triton's binary extension.

The V2 REST spec (kserve/open-inference-protocol, ``required_api.md``) sends each
tensor as ``{"name", "datatype", "shape", "data"}``, ``data`` flat or nested
(row-major), BYTES elements as JSON strings. Triton's binary tensor data
extension, which tritonclient.http uses by default, sends the JSON first (its
length in the ``Inference-Header-Content-Length`` header) and the tensors'
raw bytes after it, in input order, each input naming its size in
``parameters.binary_data_size``. Outputs are answered in binary when the
request's ``parameters.binary_data_output`` or an output's
``parameters.binary_data`` says so.

This module is the REST wire form only: raw bytes are read and written by the
codec every form shares (``gateway.pod.tensors``: ``array_from_raw``,
``to_raw``, ``narrowed``), so a tensor means the same through gRPC, the
transcoded REST form and this one. Every malformed request is an
``InvalidInput`` naming the tensor; nothing is allocated from a shape before
the data's element count has matched it.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput

from . import datatypes, tensors
from .model import InferenceRequest, ModelMetadata, Parameter, Tensor, TensorSpec

HEADER_LENGTH = "inference-header-content-length"
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data_output"
BINARY_DATA = "binary_data"

# numpy kinds a JSON array of each datatype may parse to (np.array without a dtype):
# integers are valid floats, and nothing else is valid for any other type.
_KINDS: Mapping[str, str] = {
    **{name: "iuf" for name in ("FP16", "FP32", "FP64")},
    **{name: "iu" for name in datatypes.DTYPES if name.startswith(("INT", "UINT"))},
    "BOOL": "b",
}
_JSON_TYPE = {"iuf": "numbers", "iu": "integers", "b": "booleans (true/false)"}
# A dimension past this is no tensor anyone can send (and keeps math.prod in bounds).
_MAX_DIMENSION = 1 << 62


@dataclass(frozen=True, slots=True)
class InferBody:
    """A decoded REST infer request: what the model is asked, and how to answer."""

    request: InferenceRequest
    request_id: str
    binary_outputs: frozenset[str]  # outputs to answer in binary
    binary_default: bool  # outputs not named in the request: binary?


def decode_infer(body: bytes, header_length: str | None) -> InferBody:
    """The infer request in ``body``; ``header_length`` is the binary extension's header."""
    document, binary = _split(body, header_length)
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty array of tensors")
    parameters = _parameters(document.get("parameters"), "the request")
    offset = 0
    inputs: list[Tensor] = []
    for index, item in enumerate(raw_inputs):
        tensor, used = _input(item, index, binary, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidInput(
            f"the inputs' binary_data_size add up to {offset} bytes, "
            f"but {len(binary)} bytes of binary data follow the JSON header"
        )
    wanted, binary_outputs = _outputs(document.get("outputs"))
    binary_default = parameters.pop(BINARY_OUTPUT, False)
    if not isinstance(binary_default, bool):
        raise InvalidInput(f"parameter '{BINARY_OUTPUT}' must be true or false")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferBody(
        InferenceRequest(tuple(inputs), wanted, _scalars(parameters)),
        request_id or str(uuid.uuid4()),
        binary_outputs,
        binary_default,
    )


def declared_inputs(body: bytes, header_length: str | None) -> list[tuple[str, str]]:
    """The (name, datatype) of each input a request names, as far as it can be read; for
    reporting a wrong datatype before the other faults of a request that did not decode."""
    try:
        document, _ = _split(body, header_length)
    except InvalidInput:
        return []
    items = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(items, list):
        return []
    return [
        (item["name"], item["datatype"])
        for item in items
        if isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("datatype"), str)
    ]


def encode_infer(
    model_id: str, version: str, body: InferBody, outputs: Sequence[Tensor]
) -> tuple[bytes, int | None]:
    """The answer's bytes and, when binary data follows the JSON, the JSON's length."""
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in outputs:
        item: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.array.shape),
        }
        binary = tensor.name in body.binary_outputs or (
            body.binary_default and tensor.name not in body.request.outputs
        )
        if binary:
            raw = tensors.to_raw(tensor)
            item["parameters"] = {BINARY_SIZE: len(raw)}
            chunks.append(raw)
        else:
            item["data"] = _json_values(tensor)
        described.append(item)
    answer = {
        "model_name": model_id,
        "model_version": version,
        "id": body.request_id,
        "parameters": {},
        "outputs": described,
    }
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join((header, *chunks)), len(header)


def encode_metadata(model_id: str, version: str, metadata: ModelMetadata) -> bytes:
    return dumps(
        {
            "name": model_id,
            "versions": [version],
            "platform": metadata.platform,
            "inputs": [_spec(s) for s in metadata.inputs],
            "outputs": [_spec(s) for s in metadata.outputs],
        }
    )


def dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _spec(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


# -- the request's parts -----------------------------------------------------------


def _split(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """The JSON document and the binary data after it."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"Inference-Header-Content-Length must be a byte count, got {header_length!r}"
            ) from None
        if not 0 < length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {length}, but the body has {len(body)} bytes"
            )
        json_part, binary = body[:length], memoryview(body)[length:]
    try:
        return json.loads(json_part), binary
    except UnicodeDecodeError:
        raise InvalidInput("the request's JSON is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"the request is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("the request's JSON is nested too deeply") from None


def _input(item: Any, index: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    """Input ``index`` of the request, and the bytes of binary data it used."""
    if not isinstance(item, dict):
        raise InvalidInput(f"input {index} must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"input {index}: 'name' must be a non-empty string")
    label = f"input '{name}'"
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in datatypes.DTYPES:
        raise InvalidInput(
            f"{label}: unknown datatype {json.dumps(datatype)}; "
            f"expected one of {', '.join(datatypes.DTYPES)}"
        )
    shape = _shape(item.get("shape"), label)
    parameters = _parameters(item.get("parameters"), label)
    if "contents" in item:
        if "data" in item:
            raise InvalidInput(f"{label} has both 'data' and 'contents'; send one ('data')")
        raise InvalidInput(
            f"{label}: 'contents' belongs to the protobuf-JSON form, which cannot be mixed "
            "with the Open Inference Protocol's 'data' in one request"
        )
    size = parameters.get(BINARY_SIZE)
    if size is not None:
        if "data" in item:
            raise InvalidInput(f"{label} has both 'data' and parameters.binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{label}: binary_data_size must be a byte count")
        if offset + size > len(binary):
            raise InvalidInput(
                f"{label}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes of binary data left)"
            )
        raw = bytes(binary[offset : offset + size])
        array = tensors.array_from_raw(raw, datatype, label, shape)
        return Tensor(name, datatype, array.reshape(shape)), size
    if "data" not in item:
        raise InvalidInput(f"{label} has no 'data' (nor parameters.binary_data_size)")
    array = _from_json(item["data"], datatype, label, shape)
    return Tensor(name, datatype, array.reshape(shape)), 0


def _shape(value: Any, label: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidInput(f"{label}: 'shape' must be an array of integers")
    if len(value) > tensors.MAX_RANK:
        raise InvalidInput(
            f"{label}: rank {len(value)} is over the {tensors.MAX_RANK} dimensions allowed"
        )
    if any(d < 0 for d in value):
        raise InvalidInput(f"{label}: shape {value} has a negative dimension")
    if any(d > _MAX_DIMENSION for d in value):
        raise InvalidInput(f"{label}: shape {value} is larger than any tensor can be")
    return tuple(value)


def _from_json(data: Any, datatype: str, label: str, shape: tuple[int, ...]) -> np.ndarray:
    """The flat array of a tensor's JSON ``data``, checked against its datatype and shape."""
    if not isinstance(data, list):
        raise InvalidInput(f"{label}: 'data' must be an array")
    if datatype == datatypes.BYTES:
        return _bytes_from_json(data, label, shape)
    try:
        parsed = np.array(data)
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"{label}: 'data' has nested arrays of uneven length, or values of mixed types"
        ) from None
    if parsed.size != math.prod(shape):
        raise tensors.count_error(label, shape, parsed.size)
    kinds = _KINDS[datatype]
    if kinds == "iu" and parsed.dtype.kind in "fO":
        # floats, or integers past int64 (UINT64's upper half, which numpy widens to float64
        # beside smaller ones): element by element, exactly
        return _big_integers(data, datatype, label)
    if parsed.size and parsed.dtype.kind not in kinds:
        raise InvalidInput(f"{label}: {datatype} data must be JSON {_JSON_TYPE[kinds]}")
    flat = parsed.reshape(-1)
    if datatype.startswith(("INT", "UINT")) and flat.size:
        return tensors.narrowed(flat, datatype, label)
    return flat.astype(datatypes.DTYPES[datatype])


def _big_integers(data: list[Any], datatype: str, label: str) -> np.ndarray:
    flat = _flatten(data)
    if not all(type(v) is int for v in flat):
        raise InvalidInput(f"{label}: {datatype} data must be JSON integers")
    try:
        return np.array(flat, dtype=datatypes.DTYPES[datatype])
    except OverflowError:
        raise tensors.range_error(datatype, label) from None


def _flatten(data: list[Any]) -> list[Any]:
    """The leaves of nested lists, row-major."""
    flat: list[Any] = []
    pending: list[Any] = [data]
    while pending:  # depth first, in order
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _bytes_from_json(data: list[Any], label: str, shape: tuple[int, ...]) -> np.ndarray:
    leaves = _flatten(data)
    if not all(isinstance(v, str) for v in leaves):
        raise InvalidInput(f"{label}: BYTES data must be JSON strings")
    flat = [v.encode("utf-8", "surrogatepass") for v in leaves]
    if len(flat) != math.prod(shape):
        raise tensors.count_error(label, shape, len(flat))
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object")
    return dict(value)


def _scalars(parameters: Mapping[str, Any]) -> dict[str, Parameter]:
    """The request parameters a model sees: any JSON value, objects and arrays as JSON text."""
    return {
        key: value if isinstance(value, bool | int | float | str) else json.dumps(value)
        for key, value in parameters.items()
        if value is not None
    }


def _outputs(value: Any) -> tuple[tuple[str, ...], frozenset[str]]:
    """The outputs named, and those of them wanted in binary."""
    if value is None:
        return (), frozenset()
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be an array of {\"name\": ...} objects")
    names: list[str] = []
    binary: set[str] = set()
    for index, item in enumerate(value):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"output {index}: 'name' must be a non-empty string")
        flag = _parameters(item.get("parameters"), f"output '{name}'").get(BINARY_DATA, False)
        if not isinstance(flag, bool):
            raise InvalidInput(f"output '{name}': binary_data must be true or false")
        names.append(name)
        if flag:
            binary.add(name)
    return tuple(names), frozenset(binary)


def _json_values(tensor: Tensor) -> list[Any]:
    flat = tensor.array.reshape(-1)
    if tensor.datatype != datatypes.BYTES:
        values: list[Any] = flat.tolist()
        return values
    return [
        (v if isinstance(v, bytes) else str(v).encode()).decode("utf-8", "replace") for v in flat
    ]
