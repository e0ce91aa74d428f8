"""The scikit-learn runtime: estimators saved with joblib or pickle.

Model path: a ``.joblib``, ``.pkl`` or ``.pickle`` file, or a folder holding
exactly one such file. Both kinds are read with ``joblib.load``, which also reads
plain pickles. Unpickling runs code from the file: the gateway only passes paths
it resolved under its own storage root.

Tensors:

- one input, any name, datatype FP32, shape ``[-1, n_features_in_]`` (``[-1, -1]``
  when the estimator does not record its feature count). Rank must be 2: a
  single row is sent as ``[1, n_features]``.
- output ``predict``: shape ``[batch, 1]`` (``[batch, n_outputs]`` for
  multi-output estimators); INT64 for classifiers with integer labels and for
  clusterers, FP64 for regressors and float labels, BYTES for string labels.
- output ``predict_proba`` (only for estimators that have it): FP64,
  ``[batch, n_classes]``.

With no outputs requested the answer is ``predict``.

Size: the bytes of the estimator pickled with protocol 5, counted while writing
to a sink (no copy is kept, numpy buffers are counted out of band): close to its
in-memory footprint, and unlike the file size not shrunk by joblib compression.
Falls back to the file size if the estimator cannot be pickled.

Loading runs in a worker thread; predict runs inline on the event loop for a
small batch, the fastest choice for online inference, and in a worker thread
for a large one (gateway.pod.offload), so the pod keeps answering meanwhile.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput, ModelFormatError

from ..model import ModelConfig, Tensor, TensorSpec
from .common import model_file
from .tabular import INPUT_NAME, PREDICT, PREDICT_PROBA, TabularModel

log = logging.getLogger(__name__)

SUFFIXES = (".joblib", ".pkl", ".pickle")


class SKLearnModel(TabularModel):
    """A scikit-learn estimator (or anything pickled with a sklearn-like ``predict``)."""

    platform = "sklearn"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._estimator: Any = None

    def _open(self, path: Path) -> tuple[TensorSpec, dict[str, TensorSpec], int]:
        self._estimator, size = _read(path)
        return *_tensor_specs(self._estimator), size

    async def unload(self) -> None:
        self._estimator = None

    def _predict(self, x: np.ndarray, wanted: Sequence[TensorSpec]) -> list[Tensor]:
        return [_run(self._estimator, spec, x) for spec in wanted]


def _run(estimator: Any, spec: TensorSpec, x: np.ndarray) -> Tensor:
    try:
        result = np.asarray(getattr(estimator, spec.name)(x))
    except ValueError as exc:
        # scikit-learn's input validation: NaN or infinity for an estimator that takes neither
        # is the request's fault (estimators that accept NaN never raise this)
        if "NaN" in str(exc) or "infinity" in str(exc):
            raise InvalidInput(
                f"input '{INPUT_NAME}': NaN or infinite values; this model takes finite numbers"
            ) from None
        raise
    if result.ndim == 1:
        result = result.reshape(-1, 1)
    if spec.datatype == "BYTES":
        flat = [v if isinstance(v, bytes) else str(v).encode() for v in result.ravel()]
        result = np.array(flat, dtype=object).reshape(result.shape)
    else:
        result = result.astype(np.int64 if spec.datatype == "INT64" else np.float64, copy=False)
    return Tensor(spec.name, spec.datatype, result)


def _tensor_specs(estimator: Any) -> tuple[TensorSpec, dict[str, TensorSpec]]:
    features = getattr(estimator, "n_features_in_", None)
    n_features = int(features) if isinstance(features, (int, np.integer)) else -1
    input_spec = TensorSpec(INPUT_NAME, SKLearnModel.input_datatype, (-1, n_features))
    classes: Any = getattr(estimator, "classes_", None)
    outputs = {PREDICT: _predict_spec(estimator, classes)}
    if classes is not None and not isinstance(classes, list) and hasattr(estimator, PREDICT_PROBA):
        outputs[PREDICT_PROBA] = TensorSpec(PREDICT_PROBA, "FP64", (-1, len(classes)))
    return input_spec, outputs


_LABEL_DATATYPES = {"i": "INT64", "u": "INT64", "b": "INT64", "f": "FP64"}


def _predict_spec(estimator: Any, classes: Any) -> TensorSpec:
    if isinstance(classes, list):  # a multi-output classifier: one label array per output
        width, labels = len(classes), np.asarray(classes[0])
    elif classes is not None:
        width, labels = 1, np.asarray(classes)
    else:
        width = int(getattr(estimator, "n_outputs_", 1) or 1)
        datatype = "INT64" if _estimator_type(estimator) == "clusterer" else "FP64"
        return TensorSpec(PREDICT, datatype, (-1, width))
    return TensorSpec(PREDICT, _LABEL_DATATYPES.get(labels.dtype.kind, "BYTES"), (-1, width))


def _estimator_type(estimator: Any) -> str | None:
    try:
        from sklearn.utils import get_tags

        kind: str | None = get_tags(estimator).estimator_type
    except Exception:  # not a scikit-learn estimator, or an older scikit-learn
        kind = getattr(estimator, "_estimator_type", None)
    return kind


def _read(path: Path) -> tuple[Any, int]:
    """Load the estimator behind ``path`` and measure it (in a worker thread)."""
    import joblib

    file = model_file(path, SUFFIXES)
    try:
        estimator = joblib.load(file)
    except Exception as exc:
        raise ModelFormatError(
            f"cannot read '{file}' as a scikit-learn model: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(getattr(estimator, PREDICT, None)):
        raise ModelFormatError(
            f"'{file}' holds a {type(estimator).__qualname__}, which has no predict method"
        )
    return estimator, _pickled_size(estimator, file)


class _ByteCounter:
    """A write-only file that only counts what is written to it."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.count += n
        return n

    def buffer(self, buf: pickle.PickleBuffer) -> None:
        self.count += buf.raw().nbytes  # returning None keeps the buffer out of band


def _pickled_size(estimator: Any, file: Path) -> int:
    counter = _ByteCounter()
    try:
        pickle.Pickler(counter, protocol=5, buffer_callback=counter.buffer).dump(estimator)
    except Exception as exc:  # an estimator that cannot be pickled again
        log.debug("measuring %s by its file size: %s", file, exc)
        return file.stat().st_size
    return counter.count
