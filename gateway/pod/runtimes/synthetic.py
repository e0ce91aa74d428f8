"""The synthetic runtime: models that only take memory and time, for scale tests.

Model path: a JSON file (or a folder holding exactly one ``.json`` file), e.g.::

    {"size_bytes": 4194304, "load_seconds": 0.2}

- ``size_bytes`` (required, integer >= 0): memory the loaded model takes. The
  load really allocates it and writes one byte per 4096, so every page is
  resident; ``size_bytes()`` reports it; unload frees it.
- ``load_seconds`` (number >= 0, default 0): how long the load waits
  (``asyncio.sleep``: the pod goes on loading and serving other models).
- ``fail`` (string, optional): the load fails with ``LoadFailed`` carrying this
  message, after ``load_seconds``.
- ``predict_seconds`` (number >= 0, default 0): how long each predict waits,
  without blocking the pod. A predict still waiting when the model is unloaded
  fails, as with a real model whose weights were freed: the pod's graceful
  unload is what prevents that.

Other keys are an error, as are a malformed file and a missing or invalid
``size_bytes`` (``ModelFormatError``, naming the file and the field).

Tensors: one input of any numeric datatype (not BYTES), shape ``[batch, n]``;
the output ``predict`` is FP64 ``[batch, 1]``: the row sums, so tests can check
values. Metadata declares input ``input-0`` FP32 ``[-1, -1]`` and output
``predict`` FP64 ``[-1, 1]``.

``write_synthetic`` writes such a file, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import math
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput, LoadFailed, ModelFormatError

from .. import datatypes
from ..model import InferenceRequest, Model, ModelConfig, ModelMetadata, Tensor, TensorSpec

PREDICT = "predict"
PAGE = 4096
_CHUNK = 4 << 20  # bytes touched per step: short steps let other threads take the GIL
_INPUT = TensorSpec("input-0", "FP32", (-1, -1))
_OUTPUT = TensorSpec(PREDICT, "FP64", (-1, 1))
_FIELDS = ("size_bytes", "load_seconds", "fail", "predict_seconds")


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    """The contents of a synthetic model file."""

    size_bytes: int
    load_seconds: float = 0.0
    fail: str | None = None
    predict_seconds: float = 0.0

    def to_json(self) -> str:
        doc: dict[str, Any] = {"size_bytes": self.size_bytes, "load_seconds": self.load_seconds}
        if self.fail is not None:
            doc["fail"] = self.fail
        if self.predict_seconds:
            doc["predict_seconds"] = self.predict_seconds
        return json.dumps(doc)


def write_synthetic(
    path: Path | str,
    size_bytes: int,
    load_seconds: float = 0.0,
    fail: str | None = None,
    *,
    predict_seconds: float = 0.0,
) -> Path:
    """Write a synthetic model file at ``path`` (parent folders created); the path."""
    spec = SyntheticSpec(size_bytes, load_seconds, fail, predict_seconds)
    problem = _problem(spec)
    if problem is not None:
        raise ValueError(problem)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(spec.to_json() + "\n")
    return target


def read_synthetic(path: Path | str) -> SyntheticSpec:
    """Parse and check a synthetic model file (or a folder with one ``.json`` file).

    LoadFailed when it does not exist, ModelFormatError when it is malformed.
    """
    file = _model_file(Path(path))
    try:
        text = file.read_text()
    except OSError as exc:
        raise LoadFailed(f"cannot read '{file}': {exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelFormatError(
            f"cannot read '{file}' as a synthetic model: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(doc, dict):
        raise ModelFormatError(
            f"'{file}': a synthetic model is a JSON object, got {type(doc).__name__}"
        )
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise ModelFormatError(
            f"'{file}': unknown field(s) {', '.join(unknown)}; expected {', '.join(_FIELDS)}"
        )
    if "size_bytes" not in doc:
        raise ModelFormatError(f"'{file}': 'size_bytes' is missing")
    spec = SyntheticSpec(
        size_bytes=doc["size_bytes"],
        load_seconds=doc.get("load_seconds", 0.0),
        fail=doc.get("fail"),
        predict_seconds=doc.get("predict_seconds", 0.0),
    )
    problem = _problem(spec)
    if problem is not None:
        raise ModelFormatError(f"'{file}': {problem}")
    return spec


def _problem(spec: SyntheticSpec) -> str | None:
    """What is wrong with ``spec``'s values, or None."""
    size = spec.size_bytes
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return f"'size_bytes' must be an integer >= 0, got {json.dumps(size, default=repr)}"
    for name in ("load_seconds", "predict_seconds"):
        value = getattr(spec, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            return f"'{name}' must be a number >= 0, got {json.dumps(value, default=repr)}"
    if spec.fail is not None and not isinstance(spec.fail, str):
        return f"'fail' must be a string, got {json.dumps(spec.fail, default=repr)}"
    return None


def _model_file(path: Path) -> Path:
    if not path.exists():
        raise LoadFailed(f"model file not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".json")
        if len(files) != 1:
            found = ", ".join(p.name for p in files) or "none"
            raise ModelFormatError(
                f"folder '{path}' must hold exactly one .json file; found {found}"
            )
        return files[0]
    return path


def _allocate(size: int) -> mmap.mmap | None:
    """``size`` bytes with every page written, so the memory is resident (in a thread).

    An anonymous mapping: the kernel hands out zeroed pages as they are first
    written, so no large memset holds the GIL (the pod's live traffic goes on),
    and closing it returns the memory to the system at once.
    """
    if size == 0:
        return None
    memory = mmap.mmap(-1, size)
    for start in range(0, size, _CHUNK):
        stop = min(start + _CHUNK, size)
        memory[start:stop:PAGE] = b"\x01" * len(range(start, stop, PAGE))
    return memory


class SyntheticModel(Model):
    """A model that holds ``size_bytes`` of memory and answers row sums."""

    platform = "synthetic"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._spec: SyntheticSpec | None = None
        self._memory: mmap.mmap | None = None

    async def load(self) -> None:
        spec = await asyncio.to_thread(read_synthetic, self.config.path)
        self._memory = await asyncio.to_thread(_allocate, spec.size_bytes)
        self._spec = spec
        if spec.load_seconds:
            await asyncio.sleep(spec.load_seconds)
        if spec.fail is not None:
            raise LoadFailed(spec.fail)

    async def unload(self) -> None:
        memory, self._memory, self._spec = self._memory, None, None
        if memory is not None:
            await asyncio.to_thread(memory.close)  # unmapping is kernel work: off the event loop

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(self.platform, (_INPUT,), (_OUTPUT,))

    def size_bytes(self) -> int:
        return self._spec.size_bytes if self._spec is not None else 0

    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        if len(request.inputs) != 1:
            raise InvalidInput(f"model expects 1 input, got {len(request.inputs)}")
        tensor = request.inputs[0]
        if tensor.datatype == datatypes.BYTES:
            raise InvalidInput(
                f"input '{tensor.name}': datatype 'BYTES' given, model expects a numeric one"
            )
        if tensor.array.ndim != 2:
            name, shape = tensor.name, list(tensor.array.shape)
            raise InvalidInput(f"input '{name}': shape {shape} given, model expects [-1, -1]")
        for name in request.outputs:
            if name != PREDICT:
                raise InvalidInput(f"output '{name}' is not available; model offers '{PREDICT}'")
        spec = self._spec
        if spec is not None and spec.predict_seconds:
            await asyncio.sleep(spec.predict_seconds)
        if self._spec is None:  # as a real model whose weights were freed meanwhile
            raise RuntimeError(f"model '{self.model_id}' is not loaded")
        sums = tensor.array.astype(np.float64).sum(axis=1, keepdims=True)
        return [Tensor(PREDICT, "FP64", sums)]
