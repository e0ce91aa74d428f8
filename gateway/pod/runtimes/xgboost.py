"""The XGBoost runtime: boosters saved with ``save_model`` as JSON or UBJSON.

Model path: a ``.json`` or ``.ubj`` file, or a folder holding exactly one such
file. XGBoost tells the two formats apart by their contents. The
old binary format (``.bst``, ``.model``, ``.deprecated``) is not accepted: XGBoost
3 reads it only as a UBJSON guess; re-save such a model with ``save_model``.
Models from ``XGBClassifier`` / ``XGBRegressor`` and from ``xgboost.train`` are
read alike, as a ``Booster``. A UBJSON file is checked to be one complete
document before XGBoost reads it: XGBoost 3.2 crashes the process (SIGSEGV) on
a UBJSON file cut short; it reports a JSON file cut short as an error.

Tensors:

- one input, any name, metadata name ``input-0``, datatype FP32, shape
  ``[-1, n_features]`` with the booster's own feature count
  (``Booster.num_features()``). Rank must be 2: one row is ``[1, n_features]``.
- output ``predict``: what ``Booster.inplace_predict`` returns (as KServe's
  xgbserver and ``xgboost.train`` models answer), FP32 as XGBoost computes it,
  shape ``[batch, width]``: width 1 for regression and binary objectives (the
  probability of class 1 for ``binary:logistic``, the class index as a float
  for ``multi:softmax``), ``n_classes`` for ``multi:softprob`` (the class
  probabilities), ``n_targets`` for multi-target regression. The width is read
  at load by predicting one row of zeros, so every objective is described exactly.
  Unlike MLServer's ``XGBClassifier`` path, ``predict`` of a classifier is its
  probabilities, not labels: a saved booster does not keep the label encoding.
- output ``predict_proba``, only for ``binary:logistic`` and ``multi:softprob``
  boosters: FP32, ``[batch, n_classes]``, as ``XGBClassifier.predict_proba``
  gives it (for a binary model the columns are ``1 - p`` and ``p``).

With no outputs requested the answer is ``predict``; both can be asked for in
one request (XGBoost then predicts once).

A JSON model saved before XGBoost 1.6 (ModelMesh's mushroom.json) is read, then
held as this version writes it, with a warning to re-save the file: XGBoost
drops the old JSON reader after 3.2 (pyproject pins xgboost below 3.3, the
versions tested).

Size: the bytes of the booster serialised as UBJSON (``save_raw("ubj")``): about
its in-memory trees, and the same whether the file was JSON (larger) or UBJSON.

Loading runs in a worker thread; predict (``inplace_predict`` on a numpy array,
no DMatrix) runs inline on the event loop for the small batches of online
inference, in a worker thread for large ones (gateway.pod.offload).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.errors import ModelFormatError

from ..model import TensorSpec
from .common import model_file, read_model_bytes
from .tabular import BoosterModel

log = logging.getLogger(__name__)

SUFFIXES = (".json", ".ubj")
DATATYPE = "FP32"  # XGBoost predicts in float32

_BINARY = "binary:logistic"
_MULTICLASS = "multi:softprob"
# "[07:11:28] /workspace/src/c_api/c_api.cc:1532: " before XGBoost's own message
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


class XGBoostModel(BoosterModel):
    """An ``xgboost.Booster`` read from a JSON or UBJSON model file."""

    platform = "xgboost"
    output_datatype = DATATYPE

    def _open(self, path: Path) -> tuple[TensorSpec, dict[str, TensorSpec], int]:
        self._booster, size = _read(path)
        n_features = int(self._booster.num_features())
        config = json.loads(self._booster.save_config())
        objective = str(config["learner"]["objective"]["name"])
        input_spec, outputs = self._specs(
            n_features,
            classifier=objective in (_BINARY, _MULTICLASS),
            binary=objective == _BINARY,
        )
        return input_spec, outputs, size

    def _scores(self, x: np.ndarray) -> Any:
        return self._booster.inplace_predict(x)


def _read(path: Path) -> tuple[Any, int]:
    """Load the booster behind ``path`` and measure it (in a worker thread)."""
    import xgboost

    file = model_file(path, SUFFIXES)
    data = read_model_bytes(file)
    if not data.startswith(b"{"):  # JSON and UBJSON models are objects
        raise ModelFormatError(
            f"cannot read '{file}' as an XGBoost model: not a JSON or UBJSON object"
        )
    is_json = data.startswith(_JSON_STARTS)
    if not is_json:  # UBJSON
        problem = _ubjson_problem(data)
        if problem:
            raise ModelFormatError(f"cannot read '{file}' as an XGBoost model: {problem}")
    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(data))  # XGBoost tells JSON from UBJSON
    except (xgboost.core.XGBoostError, UnicodeDecodeError) as exc:
        raise ModelFormatError(
            f"cannot read '{file}' as an XGBoost model: {_message(exc)}"
        ) from exc
    raw = booster.save_raw(raw_format="ubj")
    saved_by = _json_version(data) if is_json else None
    if saved_by is not None and saved_by < (1, 6, 0):
        # XGBoost reads a JSON model saved before 1.6 through a path it drops after 3.2: hold it
        # as this version writes it, and say how to keep the file readable.
        booster = xgboost.Booster()
        booster.load_model(raw)
        log.warning(
            "model file '%s' was saved by XGBoost %s (before 1.6): converted at load; "
            "re-save it with save_model to keep it readable by XGBoost after 3.2",
            file,
            ".".join(map(str, saved_by)),
        )
    return booster, len(raw)


_JSON_STARTS = (b'{"', b"{}", b"{ ", b"{\n", b"{\r", b"{\t")
_VERSION = re.compile(rb'"version"\s*:\s*\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]')


def _json_version(data: bytes) -> tuple[int, int, int] | None:
    """The XGBoost version a JSON model names (its top-level "version", written last); None
    when it names none."""
    matches = list(_VERSION.finditer(data, max(0, len(data) - 4096)))
    if not matches:
        return None
    major, minor, patch = (int(part) for part in matches[-1].groups())
    return major, minor, patch


def _message(exc: Exception) -> str:
    """XGBoost's own message: its first line, without the time and source location.

    XGBoost's messages quote bytes of the file; when those are not UTF-8 its
    Python package fails to decode the message (UnicodeDecodeError): decode it
    here, replacing what is not text.
    """
    raw = exc.object if isinstance(exc, UnicodeDecodeError) else str(exc)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return "".join(c if c.isprintable() else "?" for c in _LOCATION.sub("", first))


# UBJSON (https://ubjson.org) as XGBoost writes it: markers of fixed-size values
# and their sizes; strings ("S", "H") and containers ("[", "{") are walked.
_FIXED = {
    ord(m): n for m, n in zip("iUIlLdDCTFZN", (1, 1, 2, 4, 8, 4, 8, 1, 0, 0, 0, 0), strict=True)
}
_COUNTS = {ord(m): n for m, n in zip("iUIlL", (1, 1, 2, 4, 8), strict=True)}


def _ubjson_problem(data: bytes) -> str | None:
    """Why ``data`` is not one complete UBJSON value, or None when it is.

    XGBoost's UBJSON reader trusts the lengths in the file: a file cut short (a
    partial copy) makes it read past the buffer and crash the whole process
    (SIGSEGV), taking every model of the pod with it. Walking the structure
    first turns that into a ModelFormatError. Typed arrays, the bulk of a
    model, are skipped by their count, so the walk is quick.
    """
    try:
        end = _skip_value(data, 0, None)
    except IndexError:
        return "not a complete UBJSON document (cut short)"
    except (ValueError, RecursionError) as exc:
        return f"not a complete UBJSON document ({exc})"
    if end != len(data):
        return f"not a UBJSON document: {len(data) - end} bytes follow its end"
    return None


def _skip_value(data: bytes, pos: int, marker: int | None) -> int:
    if marker is None:
        marker, pos = data[pos], pos + 1
    if marker in _FIXED:
        return _within(data, pos + _FIXED[marker])
    if marker in (ord("S"), ord("H")):
        length, pos = _count(data, pos)
        return _within(data, pos + length)
    if marker not in (ord("["), ord("{")):
        raise ValueError(f"unknown marker {bytes([marker])!r} at byte {pos - 1}")
    is_object, close = marker == ord("{"), ord("]") if marker == ord("[") else ord("}")
    item: int | None = None
    if data[pos] == ord("$"):
        item, pos = data[pos + 1], pos + 2
        if data[pos] != ord("#"):
            raise ValueError(f"typed container without a count at byte {pos}")
    if data[pos] == ord("#"):
        count, pos = _count(data, pos + 1)
        if item in _FIXED and not is_object:
            return _within(data, pos + count * _FIXED[item])
        for _ in range(count):
            pos = _skip_value(data, _skip_key(data, pos) if is_object else pos, item)
        return pos
    while data[pos] != close:
        pos = _skip_value(data, _skip_key(data, pos) if is_object else pos, None)
    return pos + 1


def _skip_key(data: bytes, pos: int) -> int:
    length, pos = _count(data, pos)
    return _within(data, pos + length)


def _count(data: bytes, pos: int) -> tuple[int, int]:
    size = _COUNTS.get(data[pos])
    if size is None:
        raise ValueError(f"no length at byte {pos}")
    end = _within(data, pos + 1 + size)
    value = int.from_bytes(data[pos + 1 : end], "big", signed=data[pos] != ord("U"))
    if value < 0:
        raise ValueError(f"negative length at byte {pos}")
    return value, end


def _within(data: bytes, end: int) -> int:
    if end > len(data):
        raise ValueError("cut short")
    return end
