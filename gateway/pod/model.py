"""The runtime extension point: ``Model`` and the types it speaks.

A runtime (scikit-learn, xgboost, a user's own class, ...) subclasses ``Model``,
as in MLServer's ``MLModel``, and never sees protobuf or grpc:

- ``async load()``: read ``self.config.path``; runs once, before any predict.
  Blocking work belongs in a worker thread (``asyncio.to_thread``) so the pod
  keeps serving the models it already holds.
- ``metadata()``: the input and output tensors (``TensorSpec``; -1 marks a
  variable dimension); valid after ``load``.
- ``size_bytes()``: memory the loaded model occupies, 0 when unknown.
- ``async predict(request)``: ``InferenceRequest`` in, sequence of ``Tensor`` out.
  Work of more than a few milliseconds belongs in a worker thread too
  (``gateway.pod.offload.sized``): the event loop answers the gateway's health
  checks, and a pod silent for three of them is taken for dead.
  Raise ``gateway.core.errors.InvalidInput`` for requests that do not fit the model;
  any other exception is reported as ``PredictFailed`` and the pod goes on.
- ``async unload()``: optional; release what ``load`` acquired.

Input arrays may be read-only views of the request's bytes: copy before writing.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from gateway.core.errors import InvalidInput
from gateway.core.protocol import BASE_MODEL_KEY

from . import datatypes

# Values of V2 request parameters (InferParameter's oneof).
Parameter = bool | int | float | str

_NO_PARAMETERS: Mapping[str, Parameter] = MappingProxyType({})
Decoded = TypeVar("Decoded")
_TO_BYTES = np.frompyfunc(lambda v: v if isinstance(v, bytes) else str(v).encode(), 1, 1)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, V2 datatype and shape of a model input or output; -1 is any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def check_datatype(self, name: str, datatype: str) -> None:
        """Raise InvalidInput unless input ``name``'s ``datatype`` is this one."""
        if datatype != self.datatype:
            raise InvalidInput(
                f"input '{name}': datatype '{datatype}' given, model expects '{self.datatype}'"
            )

    def check(self, tensor: Tensor) -> None:
        """Raise InvalidInput unless ``tensor`` has this datatype and a matching shape."""
        self.check_datatype(tensor.name, tensor.datatype)
        shape = tensor.array.shape
        if len(shape) != len(self.shape) or any(
            want != -1 and got != want for got, want in zip(shape, self.shape, strict=True)
        ):
            raise InvalidInput(
                f"input '{tensor.name}': shape {list(shape)} given, "
                f"model expects {list(self.shape)}"
            )


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor: a V2 datatype and a numpy array of the matching dtype.

    BYTES tensors hold an ``object`` array of ``bytes``.
    """

    name: str
    datatype: str
    array: np.ndarray

    @classmethod
    def of(cls, name: str, array: Any, datatype: str | None = None) -> Tensor:
        """A tensor from anything numpy accepts, cast to ``datatype`` if given.

        Without a datatype it follows the array's dtype; str elements become
        UTF-8 ``bytes`` in a BYTES tensor.
        """
        if datatype is None:
            arr = np.asarray(array)
            datatype = datatypes.from_numpy(arr.dtype)
            if datatype != datatypes.BYTES:
                return cls(name, datatype, arr)
        elif datatype != datatypes.BYTES:
            return cls(name, datatype, np.asarray(array, dtype=datatypes.to_numpy(datatype)))
        # numpy's "S"/"U" dtypes drop trailing NULs: start from the original elements
        source = array if isinstance(array, np.ndarray) else np.array(array, dtype=object)
        return cls(name, datatypes.BYTES, np.asarray(_TO_BYTES(source), dtype=object))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """What a model is asked: its inputs, the outputs wanted and request parameters.

    An empty ``outputs`` means "the model's default outputs".
    """

    inputs: tuple[Tensor, ...]
    outputs: tuple[str, ...] = ()
    parameters: Mapping[str, Parameter] = field(default_factory=lambda: _NO_PARAMETERS)


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What a loaded model takes and gives; ``platform`` names its runtime."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def check_datatypes(self, given: Sequence[tuple[str, str]]) -> None:
        """InvalidInput for an input (name, datatype) whose datatype is not the declared one.

        Inputs pair with the declared ones as the runtimes pair them: one and one whatever
        the name, else by name (names the model does not declare are left to the runtime).
        The pods ask this when a request's tensors cannot even be decoded, so that a wrong
        datatype is reported before the element count it also gets wrong, as Triton does.
        """
        specs = self.inputs
        if len(specs) == 1 and len(given) == 1:
            pairs = [(given[0], specs[0])]
        else:
            by_name = {spec.name: spec for spec in specs}
            pairs = [(item, by_name[item[0]]) for item in given if item[0] in by_name]
        for (name, datatype), spec in pairs:
            spec.check_datatype(name, datatype)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Where a model comes from: the fields of a LoadModel request.

    ``key`` is the free-form JSON (storage parameters, format version) the
    gateway passes through; runtimes may ignore it. An adapter's key names its base
    model (``{"base_model_id": ...}``, ``base_model_id``); the repository then hands the
    loaded base to the runtime in ``base``.
    """

    model_id: str
    model_type: str
    path: Path
    key: str = ""
    base: Model | None = None

    @property
    def base_model_id(self) -> str:
        """The base model an adapter attaches to, as the key names it ("" for a model)."""
        try:
            data = json.loads(self.key) if self.key else None
        except json.JSONDecodeError:
            return ""
        base = data.get(BASE_MODEL_KEY) if isinstance(data, dict) else None
        return base if isinstance(base, str) else ""


class Model(abc.ABC):
    """Base class of every runtime; see the module docstring for the contract."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @abc.abstractmethod
    async def load(self) -> None:
        """Read the model from ``self.config.path``; raise LoadFailed or ModelFormatError."""

    @abc.abstractmethod
    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        """Answer one request; raise InvalidInput when it does not fit the model."""

    @abc.abstractmethod
    def metadata(self) -> ModelMetadata:
        """Input and output tensors of the loaded model."""

    def size_bytes(self) -> int:
        """Bytes the loaded model occupies; 0 when the runtime cannot tell."""
        return 0

    async def unload(self) -> None:
        """Release what ``load`` acquired; the default does nothing."""
        return None


def decode_for(
    model: Model,
    decode: Callable[[], Decoded],
    declared: Callable[[], Sequence[tuple[str, str]]],
) -> Decoded:
    """``decode()`` a request for ``model``; when it fails, a wrong datatype among the
    ``declared()`` inputs (name, datatype) is reported first, as Triton does
    (ModelMetadata.check_datatypes). Nothing is asked of a request that decodes."""
    try:
        return decode()
    except InvalidInput:
        try:
            metadata: ModelMetadata | None = model.metadata()
        except Exception:  # noqa: BLE001 - the model cannot say: the request's own error stands
            metadata = None
        if metadata is not None:
            metadata.check_datatypes(declared())
        raise
