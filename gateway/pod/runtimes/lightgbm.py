"""The LightGBM runtime: boosters saved with ``save_model`` (LightGBM's text format).

Model path: a ``.txt`` or ``.bst`` file (``.bst`` is the name KServe's lgbserver
looks for; both hold the same text format), or a folder holding exactly one such
file. In a folder, a README.txt counts as a candidate too: point the path at the
model file itself when the folder holds other ``.txt`` files. Models from
``LGBMClassifier`` / ``LGBMRegressor`` (``booster_.save_model``) and from
``lightgbm.train`` are read alike, as a ``Booster``.

Tensors:

- one input, any name, metadata name ``input-0``, datatype FP32, shape
  ``[-1, n_features]`` with the booster's own feature count
  (``Booster.num_feature()``). Rank must be 2: one row is ``[1, n_features]``.
- output ``predict``: what ``Booster.predict`` returns (as KServe's lgbserver
  answers), FP64 as LightGBM computes it, shape ``[batch, width]``: width 1 for
  regression and ``binary`` (the probability of class 1), ``num_class`` for
  ``multiclass`` / ``multiclassova`` (the class probabilities). The width is
  read at load by predicting one row of zeros. Unlike MLServer's
  ``LGBMClassifier`` path, ``predict`` of a classifier is its probabilities, not
  labels: a saved booster does not keep the label encoding.
- output ``predict_proba``, only for ``binary``, ``multiclass`` and
  ``multiclassova`` boosters: FP64, ``[batch, n_classes]``, as
  ``LGBMClassifier.predict_proba`` gives it (for a binary model the columns are
  ``1 - p`` and ``p``).

With no outputs requested the answer is ``predict``; both can be asked for in
one request (LightGBM then predicts once).

Size: the model file's size. The text format is the whole model (trees,
parameters, feature names), of the same order as the trees in memory.

Loading runs in a worker thread; predict runs inline on the event loop for the
small batches of online inference, in a worker thread for large ones
(gateway.pod.offload).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.errors import ModelFormatError

from ..model import TensorSpec
from .common import model_file, read_model_bytes
from .tabular import BoosterModel

SUFFIXES = (".txt", ".bst")
DATATYPE = "FP64"  # LightGBM predicts in float64

_BINARY = "binary"
_CLASSIFIERS = (_BINARY, "multiclass", "multiclassova")


class LightGBMModel(BoosterModel):
    """A ``lightgbm.Booster`` read from a model file in LightGBM's text format."""

    platform = "lightgbm"
    output_datatype = DATATYPE

    def _open(self, path: Path) -> tuple[TensorSpec, dict[str, TensorSpec], int]:
        self._booster, size = _read(path)
        n_features = int(self._booster.num_feature())
        # "objective" as saved in the file's parameters, e.g. "binary" (arguments follow a space)
        objective = str(self._booster.params.get("objective", "")).split(" ")[0]
        input_spec, outputs = self._specs(
            n_features, classifier=objective in _CLASSIFIERS, binary=objective == _BINARY
        )
        return input_spec, outputs, size

    def _scores(self, x: np.ndarray) -> Any:
        return self._booster.predict(x)


def _read(path: Path) -> tuple[Any, int]:
    """Load the booster behind ``path`` and measure it (in a worker thread)."""
    import lightgbm

    file = model_file(path, SUFFIXES)
    data = read_model_bytes(file)
    problem = _layout_problem(data)
    if problem is None:
        try:
            return lightgbm.Booster(model_str=data.decode()), len(data)
        except Exception as exc:  # LightGBMError, or its Python side failing on a bad file
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if not isinstance(exc, lightgbm.basic.LightGBMError):
                text = f"{type(exc).__name__}: {text}"
            problem = text or type(exc).__name__
    raise ModelFormatError(f"cannot read '{file}' as a LightGBM model: {problem}")


def _layout_problem(data: bytes) -> str | None:
    """What makes ``data`` unsafe to hand to LightGBM, or None.

    LightGBM parses the trees in parallel at the offsets its ``tree_sizes`` header
    line gives, and a failure inside that parallel loop aborts the whole process
    (std::terminate), taking every model of the pod with it; a parameters section
    without its end line makes it read past the text (SIGSEGV). A file cut short
    (a partial copy) does either. So check first that each offset starts a
    ``Tree=`` line within the file and that the parameters end; LightGBM reports
    the other errors itself. (A hand-edited tree can still crash it: not checked.)
    """
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return f"not a text file (byte {exc.start} is not UTF-8)"
    trees = 0 if data.startswith(b"Tree=") else data.find(b"\nTree=") + 1 or len(data)
    sizes = re.search(rb"^tree_sizes=(.*)$", data[:trees], re.MULTILINE)
    if sizes is None:
        return None  # no parallel parse: LightGBM's own errors are safe
    try:
        lengths = [int(n) for n in sizes.group(1).split()]
    except ValueError:
        return "its tree_sizes line is not a list of numbers"
    offset = trees
    for index, length in enumerate(lengths):
        if not data.startswith(b"Tree=", offset) or length <= 0:
            return f"tree {index} is not where tree_sizes puts it (is the file cut short?)"
        offset += length
    if offset > len(data):
        return "its trees end past the end of the file (is the file cut short?)"
    # Reading a parameters section without its end line crashes (SIGSEGV) as well.
    parameters = data.find(b"\nparameters:", offset - 1)
    if parameters >= 0 and data.find(b"\nend of parameters", parameters) < 0:
        return "its parameters section has no end (is the file cut short?)"
    return None
