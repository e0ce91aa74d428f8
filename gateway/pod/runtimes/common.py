"""Helpers the file-based runtimes share: finding the model file, checking the
request's input and picking the requested outputs.

The messages are part of the runtimes' contract (users and tests read them), so
every runtime that uses these helpers words its errors the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from gateway.core.errors import (
    InvalidInput,
    LoadFailed,
    ModelFormatError,
    ModelNotInStorage,
    StorageAccessDenied,
)

from ..model import InferenceRequest, Tensor, TensorSpec


def model_file(path: Path, suffixes: Sequence[str]) -> Path:
    """The model file behind ``path``: the file itself, or the one file with one of
    ``suffixes`` (lowercase, with the dot) in the folder ``path``.

    ModelNotInStorage when ``path`` does not exist, StorageAccessDenied when the
    file cannot be read; ModelFormatError for a file with another suffix, or a
    folder without exactly one candidate (naming those found).
    """
    file = _find(path, suffixes)
    if not os.access(file, os.R_OK):
        raise StorageAccessDenied(f"model file '{file}' cannot be read: permission denied")
    return file


def _find(path: Path, suffixes: Sequence[str]) -> Path:
    if not path.exists():
        raise ModelNotInStorage(f"model file not found: {path}")
    wanted = "/".join(suffixes)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if len(files) != 1:
            found = ", ".join(p.name for p in files) or "none"
            raise ModelFormatError(
                f"folder '{path}' must hold exactly one {wanted} file; found {found}"
            )
        return files[0]
    if path.suffix.lower() not in suffixes:
        raise ModelFormatError(f"'{path}' is not a {wanted} file")
    return path


def read_model_bytes(file: Path) -> bytes:
    """The contents of ``file``; LoadFailed (not a format error) when it cannot be read.

    For runtimes that hand the bytes to their library: an unreadable file is then
    told apart from one in the wrong format, which the library reports alike.
    """
    try:
        return file.read_bytes()
    except OSError as exc:
        raise LoadFailed(
            f"cannot read model file '{file}': {exc.strerror or type(exc).__name__}"
        ) from exc


def single_input(request: InferenceRequest, spec: TensorSpec) -> Tensor:
    """The request's only input, checked against ``spec`` (InvalidInput otherwise)."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"model expects 1 input, got {len(request.inputs)}")
    tensor = request.inputs[0]
    spec.check(tensor)
    return tensor


def match_inputs(tensors: Sequence[Tensor], specs: Sequence[TensorSpec]) -> list[Tensor]:
    """The request's tensors in the order of the model's inputs ``specs``, each checked
    against its spec (InvalidInput otherwise).

    One input and one tensor match whatever the tensor's name, as Triton and MLServer
    allow; otherwise by name, and an unknown, repeated or missing input is refused.
    """
    if len(specs) == 1 and len(tensors) == 1:
        specs[0].check(tensors[0])
        return [tensors[0]]
    by_name = {spec.name: spec for spec in specs}
    given: dict[str, Tensor] = {}
    for tensor in tensors:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise InvalidInput(
                f"input '{tensor.name}' is not an input of the model; "
                f"model expects {quoted(by_name)}"
            )
        if tensor.name in given:
            raise InvalidInput(f"input '{tensor.name}' is given more than once")
        spec.check(tensor)
        given[tensor.name] = tensor
    missing = [name for name in by_name if name not in given]
    if missing:
        raise InvalidInput(f"model expects inputs {quoted(by_name)}; missing {quoted(missing)}")
    return [given[spec.name] for spec in specs]


def check_outputs(wanted: Iterable[str], offered: Iterable[str]) -> None:
    """InvalidInput, naming the outputs on offer, for a wanted name the model does not have."""
    names = list(offered)
    for name in wanted:
        if name not in names:
            raise InvalidInput(f"output '{name}' is not available; model offers {quoted(names)}")


def requested_outputs(
    request: InferenceRequest, offered: Mapping[str, TensorSpec], default: str | Sequence[str]
) -> list[TensorSpec]:
    """The specs of the outputs ``request`` asks for (``default`` when it names none: one
    name, or several). InvalidInput for a name the model does not have."""
    wanted = request.outputs or ((default,) if isinstance(default, str) else tuple(default))
    check_outputs(wanted, offered)
    return [offered[name] for name in wanted]


def quoted(names: Iterable[str]) -> str:
    """``'a', 'b'``: names as the error messages list them."""
    return ", ".join(f"'{name}'" for name in names)
