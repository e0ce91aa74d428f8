"""Triton's model repository layout, as ModelMesh users keep Triton-served models::

    <model>/config.pbtxt             Triton's ModelConfig, in protobuf text format
    <model>/<version>/model.onnx     (or model.pt, or config's default_model_filename)

``resolve(path, platform_file)`` returns None for a path without ``config.pbtxt``
(the runtime reads it as before), else a ``TritonModel``: the model file of the
version served, and the tensors the config declares.

- **Version.** The highest numbered version folder, or with ``version_policy {
  specific { versions: [...] } }`` the highest of those named that exists (a pod
  holds one version of a concrete model). ``latest`` and ``all`` serve the highest.
- **Tensors.** Each ``input`` and ``output``: ``name``, ``data_type``
  (``TYPE_FP32`` -> ``FP32``, ``TYPE_STRING`` -> ``BYTES``) and ``dims``, with a
  leading -1 (the batch) when ``max_batch_size`` > 0, as Triton reports them.
- Every other field of the config (instance_group, dynamic_batching, ...) is
  read past and ignored.

The text format is parsed here (``parse``): into dicts of lists, each field name
mapping to its values in order, since a field may repeat. A malformed file, a
missing version folder or model file, or an unknown data type is a
``ModelFormatError`` naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.errors import ModelFormatError

from .. import datatypes
from ..model import TensorSpec

CONFIG = "config.pbtxt"

# Triton's data_type -> V2 datatype: TYPE_<name> for each numeric one, TYPE_STRING for BYTES.
DATATYPES: Mapping[str, str] = {
    **{f"TYPE_{name}": name for name in datatypes.DTYPES if name != datatypes.BYTES},
    "TYPE_STRING": datatypes.BYTES,
}

Fields = dict[str, list[Any]]  # a message: field name -> its values, in order


@dataclass(frozen=True, slots=True)
class TritonModel:
    file: Path  # the model file of the version served
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int


def resolve(path: Path, platform_file: str) -> TritonModel | None:
    """The model in Triton's layout at ``path``; None when ``path`` has no config.pbtxt.

    ``platform_file`` is the runtime's default file name (``model.onnx``, ``model.pt``).
    """
    config_file = path / CONFIG
    if not path.is_dir() or not config_file.is_file():
        return None
    try:
        config = parse(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFormatError(f"cannot read '{config_file}': {exc}") from exc
    version = _version(path, config, config_file)
    name = _scalar(config, "default_model_filename", str, "") or platform_file
    file = path / str(version) / name
    if not file.is_file():
        raise ModelFormatError(
            f"'{config_file}': version {version} has no model file '{name}' ({file})"
        )
    batch = _scalar(config, "max_batch_size", int, 0)
    return TritonModel(
        file,
        version,
        tuple(_tensor(item, batch, config_file) for item in config.get("input", [])),
        tuple(_tensor(item, batch, config_file) for item in config.get("output", [])),
        batch,
    )


def _version(path: Path, config: Fields, config_file: Path) -> int:
    present = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if not present:
        raise ModelFormatError(f"'{config_file}': no version folder (1/, 2/, ...) beside it")
    policy = _message(config, "version_policy")
    specific = _message(policy, "specific") if policy else {}
    if specific:
        named = [int(v) for v in specific.get("versions", [])]
        served = sorted(set(named) & set(present))
        if not served:
            raise ModelFormatError(
                f"'{config_file}': version_policy names versions {named}, "
                f"but the folders are {present}"
            )
        return served[-1]
    return present[-1]


def _tensor(item: Any, batch: int, config_file: Path) -> TensorSpec:
    if not isinstance(item, dict):
        raise ModelFormatError(f"'{config_file}': an input or output must be a message")
    name = _scalar(item, "name", str, "")
    kind = _scalar(item, "data_type", str, "")
    datatype = DATATYPES.get(kind)
    if not name or datatype is None:
        raise ModelFormatError(
            f"'{config_file}': tensor {name or '?'} has data_type {kind or 'none'}; "
            f"expected one of {', '.join(DATATYPES)}"
        )
    dims = [int(d) for d in item.get("dims", [])]
    return TensorSpec(name, datatype, tuple([-1, *dims] if batch > 0 else dims))


def _message(fields: Fields, name: str) -> Fields:
    values = fields.get(name, [])
    return values[-1] if values and isinstance(values[-1], dict) else {}


def _scalar(fields: Fields, name: str, kind: type, default: Any) -> Any:
    values = fields.get(name, [])
    if not values:
        return default
    value = values[-1]
    if kind is int:
        if not isinstance(value, int):
            raise ValueError(f"field '{name}' must be an integer")
        return value
    return value if isinstance(value, str) else str(value)


# -- protobuf text format ------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)[fF]?)
      | (?P<word>[A-Za-z_][\w.]*)
      | (?P<punct>[{}\[\]:,;<>])
    )""",
    re.VERBOSE,
)


def parse(text: str) -> Fields:
    """A text-format message: field name -> its values (scalars, lists flattened, and
    nested messages as Fields)."""
    tokens = _tokens(text)
    fields, end = _fields(tokens, 0, closing=None)
    if end != len(tokens):
        raise ValueError(f"unexpected {tokens[end]!r}")
    return fields


def _tokens(text: str) -> list[str | int | float | tuple[str]]:
    """Tokens: punctuation and words as str, numbers as int/float, strings as 1-tuples."""
    out: list[str | int | float | tuple[str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position:].strip():
                raise ValueError(f"cannot read {text[position : position + 20]!r}")
            break
        position = match.end()
        if match["comment"] is not None:
            continue
        if match["string"] is not None:
            out.append((match["string"][1:-1].encode().decode("unicode_escape"),))
        elif match["number"] is not None:
            number = match["number"].rstrip("fF")
            is_int = re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|\d+)", number)
            out.append(int(number, 0) if is_int else float(number))
        else:
            out.append(match["word"] or match["punct"])
    return out


def _fields(tokens: Sequence[Any], at: int, closing: str | None) -> tuple[Fields, int]:
    fields: Fields = {}
    while at < len(tokens):
        token = tokens[at]
        if token == closing:
            return fields, at + 1
        if not isinstance(token, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", token):
            raise ValueError(f"expected a field name, got {token!r}")
        at += 1
        if at < len(tokens) and tokens[at] == ":":
            at += 1
        values, at = _value(tokens, at)
        fields.setdefault(token, []).extend(values)
        if at < len(tokens) and tokens[at] in (",", ";"):
            at += 1
    if closing is not None:
        raise ValueError(f"missing {closing!r}")
    return fields, at


def _value(tokens: Sequence[Any], at: int) -> tuple[list[Any], int]:
    if at >= len(tokens):
        raise ValueError("a field without a value")
    token = tokens[at]
    if token in ("{", "<"):
        message, at = _fields(tokens, at + 1, closing="}" if token == "{" else ">")
        return [message], at
    if token == "[":
        values: list[Any] = []
        at += 1
        while at < len(tokens) and tokens[at] != "]":
            item, at = _value(tokens, at)
            values.extend(item)
            if at < len(tokens) and tokens[at] == ",":
                at += 1
        if at >= len(tokens):
            raise ValueError("missing ']'")
        return values, at + 1
    if isinstance(token, tuple):  # adjacent strings concatenate
        text = token[0]
        at += 1
        while at < len(tokens) and isinstance(tokens[at], tuple):
            text += tokens[at][0]
            at += 1
        return [text], at
    if token in ("{", "}", "[", "]", ":", ",", ";", "<", ">"):
        raise ValueError(f"unexpected {token!r}")
    return [token], at + 1
