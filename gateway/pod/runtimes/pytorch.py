"""The PyTorch runtime: TorchScript modules saved with ``torch.jit.save``, on the CPU.

Model path: a ``.pt``, ``.pth`` or ``.torchscript`` file, or a folder holding
exactly one, or a model in Triton's repository layout (``config.pbtxt`` and
``<version>/model.pt``: gateway.pod.runtimes.triton_layout), whose config
declares the tensors as a sidecar does (below), ``INPUT__0`` / ``OUTPUT__0``
and the batch dimension included. Only TorchScript archives load: a pickled module or a state_dict
saved with ``torch.save`` needs the Python class that made it, and is reported
as such (``ModelFormatError``); script or trace it, then ``torch.jit.save``.

TorchScript carries no tensor metadata, so it may come from the file ModelMesh's
``storage.schemaPath`` names, or from a JSON sidecar with the model file's name
and the suffix ``.json`` (``model.pt`` -> ``model.json``), in the same form::

    {"inputs":  [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
     "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]}

Both keys are optional; anything else in the file, or a malformed entry, makes
the model unloadable (``ModelFormatError`` naming the sidecar).

- Declared ``inputs``: the request must carry each by name (a single declared
  input also takes one request input of any name), with its datatype, rank and
  fixed sizes (``InvalidInput`` otherwise); they are passed to ``forward`` in the
  declared order.
- No declared inputs: metadata says ``input-0`` FP32 ``[-1, -1]``, but that is
  not enforced: the request's inputs, of any numeric datatype, are passed to
  ``forward`` in request order, and the module decides what it accepts.
- ``forward`` returns a tensor or a tuple/list of tensors: outputs ``output-0``,
  ``output-1``, ... with the datatypes of the returned tensors, or the declared
  ``outputs`` names (their number and datatypes must then match what the module
  returns). Undeclared, metadata says ``output-0`` FP32 ``[-1, -1]``.
- Requested ``outputs`` pick among those names; an unknown one is
  ``InvalidInput`` naming the available ones.
- BYTES inputs are refused: TorchScript tensors hold numbers.

The module runs in eval mode, under ``torch.inference_mode()``, in a worker
thread (``asyncio.to_thread``; torch releases the GIL in its kernels). Anything
the module raises becomes ``PredictFailed``: "<Type>: <message>", without the
TorchScript traceback an error inside scripted code carries (that goes to the
log).

The first load sets ``torch.set_num_threads(1)`` (process-wide; torch is only
used by this runtime in a pod): a pod serves many requests at once, and on a
2-core machine a 3 x 512 x 512 MLP answered batches of 64 in 0.76 ms a request
with two callers and one thread each, 1.29 ms with torch's default of a thread
per core (0.61 vs 0.77 ms with four callers). One caller alone is ~11% slower
(1.98 vs 1.76 ms), a fair price on a shared pod.

Size: the bytes of the module's parameters and buffers (the file size for a
module that has none).

torch is imported in the loading thread (it takes seconds), not on the event
loop: the pod goes on serving while the first TorchScript model loads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput, ModelFormatError, PredictFailed

from .. import datatypes
from ..model import InferenceRequest, Model, ModelConfig, ModelMetadata, Tensor, TensorSpec
from . import triton_layout
from .common import check_outputs, match_inputs, model_file, quoted

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".pth", ".torchscript")
SIDECAR_SUFFIX = ".json"

_DEFAULT_INPUT = TensorSpec("input-0", "FP32", (-1, -1))
_DEFAULT_OUTPUT = TensorSpec("output-0", "FP32", (-1, -1))
_INTERPRETER_ERROR = "The following operation failed in the TorchScript interpreter."


@dataclass(frozen=True, slots=True)
class Signature:
    """Tensors declared in a sidecar; empty when it declares none (or there is none)."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()


class TorchScriptModel(Model):
    """A TorchScript module (``torch.jit.load``) on the CPU."""

    platform = "pytorch"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._module: Any = None
        self._signature = Signature()
        self._size = 0

    async def load(self) -> None:
        self._module, self._signature, self._size = await asyncio.to_thread(
            _read, Path(self.config.path), _schema_path(self.config.key)
        )

    async def unload(self) -> None:
        self._module = None

    def metadata(self) -> ModelMetadata:
        sig = self._signature
        return ModelMetadata(
            self.platform, sig.inputs or (_DEFAULT_INPUT,), sig.outputs or (_DEFAULT_OUTPUT,)
        )

    def size_bytes(self) -> int:
        return self._size

    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        arrays = self._arguments(request.inputs)
        declared = [spec.name for spec in self._signature.outputs]
        if declared:
            check_outputs(request.outputs, declared)
        try:
            results = await asyncio.to_thread(_forward, self._module, arrays)
        except Exception as exc:
            failed = _interpreter_error(exc)
            if failed is None:
                raise  # the repository reports it as PredictFailed
            log.warning("model %s: predict raised %s", self.model_id, exc)
            raise failed from exc
        outputs = self._name(results)
        if not request.outputs:
            return outputs
        by_name = {tensor.name: tensor for tensor in outputs}
        check_outputs(request.outputs, list(by_name))
        return [by_name[name] for name in request.outputs]

    def _arguments(self, tensors: Sequence[Tensor]) -> list[np.ndarray]:
        for tensor in tensors:
            if tensor.datatype == datatypes.BYTES:
                raise InvalidInput(
                    f"input '{tensor.name}': BYTES given, a TorchScript model takes numbers"
                )
        specs = self._signature.inputs
        if not specs:
            return [tensor.array for tensor in tensors]
        return [tensor.array for tensor in match_inputs(tensors, specs)]

    def _name(self, arrays: Sequence[np.ndarray]) -> list[Tensor]:
        declared = self._signature.outputs
        if not declared:
            return [Tensor.of(f"output-{i}", array) for i, array in enumerate(arrays)]
        if len(arrays) != len(declared):
            raise ValueError(
                f"the module returned {len(arrays)} tensors; the sidecar declares "
                f"{len(declared)} outputs ({quoted(s.name for s in declared)})"
            )
        outputs = []
        for spec, array in zip(declared, arrays, strict=True):
            tensor = Tensor.of(spec.name, array)
            if tensor.datatype != spec.datatype:
                raise ValueError(
                    f"output '{spec.name}' is {tensor.datatype}; the sidecar declares "
                    f"{spec.datatype}"
                )
            outputs.append(tensor)
        return outputs


def _interpreter_error(exc: Exception) -> PredictFailed | None:
    """PredictFailed "<Type>: <message>" for an error raised inside TorchScript code,
    whose message carries a TorchScript traceback (kept for the log, not the wire)."""
    text = str(exc)
    if not text.startswith(_INTERPRETER_ERROR):
        return None
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    name, sep, message = last.partition(": ")
    if not sep or " " in name:
        return PredictFailed(f"{type(exc).__name__}: {last}")
    return PredictFailed(f"{name.removeprefix('builtins.')}: {message}")


def _forward(module: Any, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Call ``module`` on ``arrays`` (in a worker thread): its outputs as numpy arrays."""
    import torch

    # torch refuses read-only buffers (request bytes are read-only views): copy those.
    args = [torch.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays]
    with torch.inference_mode():
        result = module(*args)
    items = result if isinstance(result, (tuple, list)) else (result,)
    arrays_out = []
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise TypeError(
                f"the module returned a {type(item).__name__} as output {i}; "
                "expected a tensor, or a tuple/list of tensors"
            )
        try:
            arrays_out.append(item.detach().cpu().numpy())
        except TypeError:
            raise TypeError(
                f"output {i} has dtype {item.dtype}, which has no V2 datatype"
            ) from None
    return arrays_out


def _schema_path(key: str) -> Path | None:
    """ModelMesh's ``storage.schemaPath``, as the gateway passes it (resolved inside the PVC)
    in the load's key: ``{"schema_path": "/models/..."}``."""
    try:
        document = json.loads(key) if key else {}
    except json.JSONDecodeError:
        return None
    schema = document.get("schema_path") if isinstance(document, dict) else None
    return Path(schema) if isinstance(schema, str) and schema else None


def _read(path: Path, schema: Path | None = None) -> tuple[Any, Signature, int]:
    """Load the module behind ``path``, its declared tensors (a Triton config, else the
    schemaPath file, else the sidecar) and its size (in a worker thread)."""
    import torch

    torch.set_num_threads(1)  # measured: see the module docstring
    layout = triton_layout.resolve(path, "model.pt")
    if layout is not None:
        file, signature = layout.file, _declared(layout)
    else:
        file = model_file(path, SUFFIXES)
        if schema is not None and not schema.is_file():
            raise ModelFormatError(f"schemaPath file not found: {schema}")
        signature = _signature(schema or file.with_suffix(SIDECAR_SUFFIX))
    try:
        module = torch.jit.load(str(file), map_location="cpu")
    except Exception as exc:
        if _saved_with_torch_save(file):
            raise ModelFormatError(
                f"'{file}' was saved with torch.save, not torch.jit.save: only TorchScript "
                "can be served (torch.jit.script or torch.jit.trace the module, then "
                "torch.jit.save it)"
            ) from exc
        raise ModelFormatError(
            f"cannot read '{file}' as a TorchScript model: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    module.eval()
    tensors = [*module.parameters(), *module.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors) or file.stat().st_size
    return module, signature, size


def _saved_with_torch_save(file: Path) -> bool:
    """A torch.save zip archive: pickled data, but no TorchScript constants."""
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any(
        n.endswith("/constants.pkl") for n in names
    )


# -- the sidecar -------------------------------------------------------------------------


def _declared(layout: triton_layout.TritonModel) -> Signature:
    """The tensors a Triton config.pbtxt declares, held to what TorchScript can take."""
    for spec in (*layout.inputs, *layout.outputs):
        if spec.datatype == datatypes.BYTES:
            raise ModelFormatError(
                f"'{layout.file}': tensor '{spec.name}' is TYPE_STRING; TorchScript tensors hold "
                "numbers"
            )
    return Signature(layout.inputs, layout.outputs)


def _signature(sidecar: Path) -> Signature:
    if not sidecar.is_file():
        return Signature()
    try:
        doc = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"sidecar '{sidecar}': not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelFormatError(f"sidecar '{sidecar}': must hold a JSON object")
    unknown = sorted(set(doc) - {"inputs", "outputs"})
    if unknown:
        raise ModelFormatError(
            f"sidecar '{sidecar}': unknown keys {quoted(unknown)}; expected 'inputs', 'outputs'"
        )
    return Signature(
        _specs(sidecar, "inputs", doc.get("inputs", [])),
        _specs(sidecar, "outputs", doc.get("outputs", [])),
    )


def _specs(sidecar: Path, key: str, entries: Any) -> tuple[TensorSpec, ...]:
    if not isinstance(entries, list):
        raise ModelFormatError(f"sidecar '{sidecar}': '{key}' must be a list")
    specs = tuple(_spec(sidecar, f"{key}[{i}]", entry) for i, entry in enumerate(entries))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ModelFormatError(f"sidecar '{sidecar}': '{key}' repeats a name")
    return specs


def _spec(sidecar: Path, where: str, entry: Any) -> TensorSpec:
    def bad(why: str) -> ModelFormatError:
        return ModelFormatError(f"sidecar '{sidecar}': {where} {why}")

    if not isinstance(entry, Mapping) or set(entry) != {"name", "datatype", "shape"}:
        raise bad("must be an object with exactly 'name', 'datatype' and 'shape'")
    name, datatype, shape = entry["name"], entry["datatype"], entry["shape"]
    if not isinstance(name, str) or not name:
        raise bad("needs a non-empty string 'name'")
    if datatype not in datatypes.DTYPES or datatype == datatypes.BYTES:
        raise bad(f"has datatype {datatype!r}; expected a numeric V2 datatype")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
    ):
        raise bad("needs a 'shape' list of sizes (-1 for any size)")
    return TensorSpec(name, datatype, tuple(shape))
