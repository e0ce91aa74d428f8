"""The ONNX runtime: ``.onnx`` graphs run with onnxruntime on the CPU.

Model path: a ``.onnx`` file, or a folder holding exactly one (external weight
files beside it are fine: onnxruntime finds them relative to the graph), or a
model in Triton's repository layout (``config.pbtxt`` and ``<version>/model.onnx``:
gateway.pod.runtimes.triton_layout); the graph's own tensors are the metadata
there too, as Triton checks the config against them.

Tensors (``metadata()``): the graph's own inputs and outputs, by name; element
types map to V2 datatypes (``tensor(float)`` -> FP32, ``tensor(string)`` ->
BYTES, ...) and symbolic or unknown dimensions are -1. A graph input that is not
a tensor of a V2 datatype (a sequence, a map, bfloat16, ...) makes the model
unloadable (``ModelFormatError``); such outputs (e.g. the ZipMap of a converted
scikit-learn classifier) are left out, and a graph with no tensor output left is
unloadable too.

Inference:

- inputs are fed by name: the request must carry every graph input, once, and
  nothing else. A graph with a single input also takes a request with one input
  of any name (as the scikit-learn runtime does).
- each input must have the graph input's datatype and rank, and its size where
  the graph fixes one (``InvalidInput``: "model expects 'FP32'", "model expects
  [-1, 4]"). BYTES elements must be UTF-8 (ONNX strings are text).
- the answer is every tensor output, in graph order, or the requested
  ``outputs`` in the order asked; an unknown name is ``InvalidInput`` naming the
  available ones. Output datatypes are the graph's.
- ``session.run`` runs in a worker thread (``asyncio.to_thread``; onnxruntime
  releases the GIL), so a slow graph does not hold up the pod's other models.
  Errors from onnxruntime become ``PredictFailed`` in the repository.

Sessions use the CPU provider and one thread each (``intra_op_num_threads=1``):
a pod serves many requests and models at once, and on a 2-core machine one
thread per session was faster than onnxruntime's default (a thread per core)
for a 3 x 512 x 512 MLP: 0.27 vs 0.37 ms a request at batch 64 with two
callers, 0.037 vs 0.082 ms at batch 1, and no slower (0.58 vs 0.62 ms) with one
caller. It also spares every loaded model its own spinning thread pool.

Size: the bytes on disk (the graph file, or every file of the model folder),
close to what the session holds for weights.

onnxruntime is imported in the loading thread (the first load pays for it), not
on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput, ModelFormatError

from .. import datatypes
from ..model import InferenceRequest, Model, ModelConfig, ModelMetadata, Tensor, TensorSpec
from . import triton_layout
from .common import match_inputs, model_file, requested_outputs

SUFFIX = ".onnx"

# onnxruntime's element type names (NodeArg.type) -> V2 datatypes.
V2_DATATYPES: Mapping[str, str] = MappingProxyType(
    {
        "tensor(bool)": "BOOL",
        "tensor(uint8)": "UINT8",
        "tensor(uint16)": "UINT16",
        "tensor(uint32)": "UINT32",
        "tensor(uint64)": "UINT64",
        "tensor(int8)": "INT8",
        "tensor(int16)": "INT16",
        "tensor(int32)": "INT32",
        "tensor(int64)": "INT64",
        "tensor(float16)": "FP16",
        "tensor(float)": "FP32",
        "tensor(double)": "FP64",
        "tensor(string)": datatypes.BYTES,
    }
)


class ONNXModel(Model):
    """An ONNX graph behind an onnxruntime ``InferenceSession``."""

    platform = "onnx"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._session: Any = None
        self._inputs: dict[str, TensorSpec] = {}
        self._outputs: dict[str, TensorSpec] = {}
        self._size = 0

    async def load(self) -> None:
        self._session, self._size = await asyncio.to_thread(_open, Path(self.config.path))
        self._inputs, self._outputs = _tensor_specs(self._session)

    async def unload(self) -> None:
        self._session = None

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(
            self.platform, tuple(self._inputs.values()), tuple(self._outputs.values())
        )

    def size_bytes(self) -> int:
        return self._size

    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        feeds = self._feeds(request.inputs)
        wanted = requested_outputs(request, self._outputs, tuple(self._outputs))
        names = [spec.name for spec in wanted]
        results = await asyncio.to_thread(self._session.run, names, feeds)
        pairs = zip(wanted, results, strict=True)
        return [Tensor.of(spec.name, value, spec.datatype) for spec, value in pairs]

    def _feeds(self, tensors: Sequence[Tensor]) -> dict[str, np.ndarray]:
        specs = list(self._inputs.values())
        matched = match_inputs(tensors, specs)
        return {spec.name: _to_onnx(tensor) for spec, tensor in zip(specs, matched, strict=True)}


def _to_onnx(tensor: Tensor) -> np.ndarray:
    """The array onnxruntime takes: strings for BYTES, the array itself otherwise."""
    if tensor.datatype != datatypes.BYTES:
        return tensor.array
    try:
        text = [b.decode() if isinstance(b, bytes) else str(b) for b in tensor.array.ravel()]
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{tensor.name}': BYTES elements must be UTF-8 text") from None
    return np.array(text, dtype=object).reshape(tensor.array.shape)


def _tensor_specs(session: Any) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    inputs: dict[str, TensorSpec] = {}
    for arg in session.get_inputs():
        datatype = V2_DATATYPES.get(arg.type)
        if datatype is None:
            raise ModelFormatError(
                f"graph input '{arg.name}' is a {arg.type}; only tensors of "
                "V2 datatypes can be served"
            )
        inputs[arg.name] = TensorSpec(arg.name, datatype, _shape(arg.shape))
    outputs = {
        arg.name: TensorSpec(arg.name, V2_DATATYPES[arg.type], _shape(arg.shape))
        for arg in session.get_outputs()
        if arg.type in V2_DATATYPES
    }
    if not outputs:
        found = ", ".join(f"'{a.name}' ({a.type})" for a in session.get_outputs())
        raise ModelFormatError(f"graph has no tensor output of a V2 datatype; found {found}")
    return inputs, outputs


def _shape(dims: Sequence[Any] | None) -> tuple[int, ...]:
    """Fixed dims as they are; symbolic (str) and unknown (None) dims as -1."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims or ())


def _open(path: Path) -> tuple[Any, int]:
    """An InferenceSession for the graph behind ``path``, and its size (worker thread)."""
    import onnxruntime

    layout = triton_layout.resolve(path, "model.onnx")
    file = layout.file if layout is not None else model_file(path, (SUFFIX,))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(
            str(file), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelFormatError(
            f"cannot read '{file}' as an ONNX model: {type(exc).__name__}: {exc}"
        ) from exc
    if path.is_dir():  # the graph and its external weights (in Triton's layout: its version)
        folder = file.parent
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    else:
        size = file.stat().st_size
    return session, size
