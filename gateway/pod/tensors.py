"""Codec between KServe V2 protobuf tensors and numpy (``model.Tensor``).

Typed contents use the ``InferTensorContents`` field of each datatype (table
``CONTENTS_FIELDS``); FP16 has none and travels only as raw bytes. Raw contents
(``raw_input_contents[i]`` / ``raw_output_contents[i]``) are little-endian,
row-major; a raw BYTES tensor is, per element, a 4-byte little-endian length
followed by that many bytes (as Triton sends it).

Responses use the style of the request: raw when it sent raw_input_contents
(then every input must be raw, as the V2 protocol requires), typed contents
otherwise; a response with an FP16 output is all raw, FP16 having no typed field.

Numeric data never goes through a per-element Python loop: raw bytes become a
read-only ``numpy.frombuffer`` view, typed fields one ``numpy.asarray`` call.
Narrow integers (INT8/16, UINT8/16 in int_contents/uint_contents) are range
checked. Every malformed tensor is an ``InvalidInput`` naming the tensor.

``make_request`` and ``decode_response`` are the client side of the same codec
(tests, benchmarks, the gateway's own pod client).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from gateway._proto import grpc_predict_v2_pb2 as pb
from gateway.core.errors import InvalidInput

from . import datatypes
from .model import InferenceRequest, ModelMetadata, Parameter, Tensor, TensorSpec

CONTENTS_FIELDS: Mapping[str, str | None] = MappingProxyType(
    {
        "BOOL": "bool_contents",
        "UINT8": "uint_contents",
        "UINT16": "uint_contents",
        "UINT32": "uint_contents",
        "UINT64": "uint64_contents",
        "INT8": "int_contents",
        "INT16": "int_contents",
        "INT32": "int_contents",
        "INT64": "int64_contents",
        "FP16": None,
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
        "BYTES": "bytes_contents",
    }
)

# Datatypes carried in a wider typed field, and that field's dtype (values are range checked).
_WIDENED: Mapping[str, np.dtype] = MappingProxyType(
    {
        name: np.dtype(np.int32 if name.startswith("INT") else np.uint32)
        for name in ("INT8", "INT16", "UINT8", "UINT16")
    }
)
_NO_PARAMETERS: Mapping[str, Parameter] = MappingProxyType({})
# The most dimensions a tensor may have: numpy's own limit (NPY_MAXDIMS).
MAX_RANK = 64
_LENGTH = struct.Struct("<I")

Wire = Any  # an InferInputTensor or InferOutputTensor: same fields 1-3 and 5


# -- server side -------------------------------------------------------------------


def decode_request(request: pb.ModelInferRequest) -> InferenceRequest:
    """The model's view of a ModelInferRequest."""
    raw = request.raw_input_contents
    if raw:
        if len(raw) != len(request.inputs):
            raise InvalidInput(
                f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
                "when raw contents are used every input must have them"
            )
        inputs = tuple(decode_tensor(t, data) for t, data in zip(request.inputs, raw, strict=True))
    else:
        inputs = tuple(decode_tensor(t) for t in request.inputs)
    outputs = tuple(o.name for o in request.outputs) if request.outputs else ()
    parameters = decode_parameters(request.parameters) if request.parameters else _NO_PARAMETERS
    return InferenceRequest(inputs, outputs, parameters)


def encode_response(
    model_id: str, request: pb.ModelInferRequest, outputs: Sequence[Tensor]
) -> pb.ModelInferResponse:
    """A ModelInferResponse for ``outputs``, in the contents style ``request`` used."""
    response = pb.ModelInferResponse(model_name=model_id, id=request.id)
    raw = bool(request.raw_input_contents) or any(t.datatype == "FP16" for t in outputs)
    encode_tensors(response.outputs, outputs, response.raw_output_contents if raw else None)
    return response


def encode_metadata(model_id: str, metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=model_id,
        platform=metadata.platform,
        inputs=[_spec(s) for s in metadata.inputs],
        outputs=[_spec(s) for s in metadata.outputs],
    )


def _spec(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def decode_parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Parameter]:
    decoded: dict[str, Parameter] = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            decoded[key] = getattr(value, choice)
    return decoded


# -- client side -------------------------------------------------------------------


def make_request(
    model_name: str,
    inputs: Iterable[Tensor],
    *,
    outputs: Iterable[str] = (),
    raw: bool = False,
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying ``inputs`` as typed contents, or raw if ``raw``."""
    request = pb.ModelInferRequest(model_name=model_name, id=request_id)
    request.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs)
    tensors = list(inputs)
    raw = raw or any(t.datatype == "FP16" for t in tensors)
    encode_tensors(request.inputs, tensors, request.raw_input_contents if raw else None)
    return request


def decode_response(response: pb.ModelInferResponse) -> list[Tensor]:
    """The outputs of a ModelInferResponse, raw or typed."""
    raw = response.raw_output_contents
    if raw:
        if len(raw) != len(response.outputs):
            raise InvalidInput(
                f"raw_output_contents has {len(raw)} entries for {len(response.outputs)} outputs"
            )
        pairs = zip(response.outputs, raw, strict=True)
        return [decode_tensor(t, data, "output") for t, data in pairs]
    return [decode_tensor(t, None, "output") for t in response.outputs]


# -- one tensor --------------------------------------------------------------------


def decode_tensor(tensor: Wire, raw: bytes | None = None, role: str = "input") -> Tensor:
    """A Tensor from an input/output message and, if given, its raw bytes."""
    label = f"{role} '{tensor.name}'"
    datatype = tensor.datatype
    dtype = datatypes.DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"{label}: unknown datatype '{datatype}'; expected one of {', '.join(datatypes.DTYPES)}"
        )
    shape = tuple(tensor.shape)
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"{label}: rank {len(shape)} is over the {MAX_RANK} dimensions allowed")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{label}: shape {list(shape)} has a negative dimension")
    if raw is None:
        array = _from_contents(tensor.contents, datatype, dtype, label, shape)
    elif tensor.HasField("contents") and tensor.contents.ByteSize():
        raise InvalidInput(f"{label} has both contents and raw contents")
    else:
        array = array_from_raw(raw, datatype, label, shape)
    return Tensor(tensor.name, datatype, array.reshape(shape))


def array_from_raw(raw: bytes, datatype: str, label: str, shape: tuple[int, ...]) -> np.ndarray:
    """The flat array of raw (little-endian, row-major; BYTES length-prefixed) tensor data.

    The one reader of raw bytes, for raw_input_contents and the REST binary extension.
    """
    if datatype == datatypes.BYTES:
        return _bytes_from_raw(raw, label, shape)
    return _numbers_from_raw(raw, datatype, datatypes.DTYPES[datatype], label, shape)


def narrowed(wide: np.ndarray, datatype: str, label: str) -> np.ndarray:
    """``wide`` (an integer array) as ``datatype``'s dtype; InvalidInput if a value is out of its
    range."""
    dtype = datatypes.DTYPES[datatype]
    limits = np.iinfo(dtype)
    if wide.size and (wide.min() < limits.min or wide.max() > limits.max):
        raise range_error(datatype, label)
    return wide.astype(dtype)


def range_error(datatype: str, label: str) -> InvalidInput:
    """Integers out of an integer datatype's range, in one wording for every wire form."""
    limits = np.iinfo(datatypes.DTYPES[datatype])
    return InvalidInput(
        f"{label}: values outside the {datatype} range [{limits.min}, {limits.max}]"
    )


def count_error(label: str, shape: tuple[int, ...], got: int) -> InvalidInput:
    return InvalidInput(
        f"{label}: shape {list(shape)} needs {math.prod(shape)} elements, got {got}"
    )


def _from_contents(
    contents: pb.InferTensorContents,
    datatype: str,
    dtype: np.dtype,
    label: str,
    shape: tuple[int, ...],
) -> np.ndarray:
    field = CONTENTS_FIELDS[datatype]
    if field is None:
        raise InvalidInput(f"{label}: {datatype} data must be sent as raw contents")
    values = getattr(contents, field)
    if len(values) != math.prod(shape):
        if not values:
            used = [f.name for f, _ in contents.ListFields()]
            if used:
                raise InvalidInput(
                    f"{label}: {datatype} data belongs in contents.{field}, "
                    f"found contents.{used[0]}"
                )
        raise count_error(label, shape, len(values))
    if datatype == datatypes.BYTES:
        return _object_array(values)
    wide_dtype = _WIDENED.get(datatype)
    if wide_dtype is None:
        return np.asarray(values, dtype=dtype)
    return narrowed(np.asarray(values, dtype=wide_dtype), datatype, label)


def _numbers_from_raw(
    raw: bytes, datatype: str, dtype: np.dtype, label: str, shape: tuple[int, ...]
) -> np.ndarray:
    size = dtype.itemsize
    if len(raw) != math.prod(shape) * size:
        if len(raw) % size:
            raise InvalidInput(
                f"{label}: {len(raw)} bytes of raw data are not a whole number "
                f"of {datatype} elements ({size} bytes each)"
            )
        raise count_error(label, shape, len(raw) // size)
    if datatype == "BOOL":
        return np.frombuffer(raw, dtype=np.uint8) != 0
    return np.frombuffer(raw, dtype=dtype)


def _bytes_from_raw(raw: bytes, label: str, shape: tuple[int, ...]) -> np.ndarray:
    items: list[bytes] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"{label}: raw BYTES data ends inside a length prefix")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(f"{label}: raw BYTES element runs past the end of the data")
        items.append(raw[offset : offset + length])
        offset += length
    if len(items) != math.prod(shape):
        raise count_error(label, shape, len(items))
    return _object_array(items)


def _object_array(items: Sequence[bytes]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array


def encode_tensors(messages: Any, tensors: Sequence[Tensor], raw: Any | None) -> None:
    """Append ``tensors`` to a repeated input/output field; raw bytes to ``raw`` if given."""
    for tensor in tensors:
        message = messages.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
        if raw is not None:
            raw.append(to_raw(tensor))
        else:
            _fill_contents(message.contents, tensor)


def to_raw(tensor: Tensor) -> bytes:
    """The raw bytes of a tensor (the form raw_output_contents and the binary extension use)."""
    if tensor.datatype == datatypes.BYTES:
        items = [_as_bytes(v) for v in tensor.array.ravel()]
        return b"".join(_LENGTH.pack(len(b)) + b for b in items)
    dtype = datatypes.DTYPES.get(tensor.datatype)
    if dtype is None:
        raise ValueError(f"tensor '{tensor.name}': unknown datatype '{tensor.datatype}'")
    return np.ascontiguousarray(tensor.array, dtype=dtype).tobytes()


def _fill_contents(contents: pb.InferTensorContents, tensor: Tensor) -> None:
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:  # FP16 (callers send it raw) or an unknown datatype
        raise ValueError(f"tensor '{tensor.name}': no typed contents for '{tensor.datatype}'")
    flat = tensor.array.ravel()
    if tensor.datatype == datatypes.BYTES:
        getattr(contents, field).extend([_as_bytes(v) for v in flat])
    else:
        dtype = datatypes.DTYPES[tensor.datatype]
        getattr(contents, field).extend(flat.astype(dtype, copy=False).tolist())


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
