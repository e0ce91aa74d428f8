"""Typed ``predict`` methods: ``decode_args``, after MLServer's decorator of that name.

A runtime may write its predict with typed parameters instead of taking an
``InferenceRequest`` and returning ``Tensor``s::

    class Sentiment(Model):
        @decode_args(outputs=("label",))
        async def predict(self, text: list[str]) -> list[str]:
            ...

The decorated method is an ordinary ``Model.predict(request)``. Each parameter is
filled from one request input: the input of the parameter's name, or else the
next input not claimed by name, in order. A parameter with a default may be left
out of the request. By annotation:

- ``list[str]``: a BYTES input, flattened, each element decoded as UTF-8;
- ``list[bytes]``: a BYTES input, flattened;
- ``list[int]``, ``list[float]``, ``list[bool]``: a numeric input, flattened;
- ``np.ndarray``: the input's array as sent (an ``object`` array of ``bytes``
  for BYTES); read-only, copy before writing;
- ``Tensor``: the input itself.

``X | None`` is read as ``X``.

The return value becomes the outputs: a ``list[str]``/``list[bytes]`` is a BYTES
tensor of shape ``[n]``, other lists and numpy arrays keep numpy's dtype
(``Tensor.of``), a ``Tensor`` is passed on with its own name. A tuple gives one
output per element. Outputs are named by ``outputs=`` (default ``output-0``,
``output-1``, ...). When the request names outputs, only those are returned.

A request that does not fit (a missing or extra input, a wrong datatype, bytes
that are not UTF-8) raises ``InvalidInput``; an annotation the decorator cannot
decode raises ``TypeError`` when the class is defined.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput

from . import datatypes
from .model import InferenceRequest, Tensor

Predict = Callable[[Any, InferenceRequest], Awaitable[Sequence[Tensor]]]
_Decoder = Callable[[Tensor], Any]


def _strings(tensor: Tensor) -> list[str]:
    out = []
    for i, value in enumerate(_byte_values(tensor)):
        try:
            out.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input '{tensor.name}': element {i} is not UTF-8 text") from None
    return out


def _byte_values(tensor: Tensor) -> list[bytes]:
    if tensor.datatype != datatypes.BYTES:
        raise InvalidInput(
            f"input '{tensor.name}': datatype '{tensor.datatype}' given, model expects 'BYTES'"
        )
    return [bytes(v) for v in tensor.array.ravel()]


def _numbers(kind: type) -> _Decoder:
    def decode(tensor: Tensor) -> list[Any]:
        if tensor.datatype == datatypes.BYTES:
            raise InvalidInput(
                f"input '{tensor.name}': datatype 'BYTES' given, model expects numbers"
            )
        return [kind(v) for v in tensor.array.ravel().tolist()]

    return decode


_DECODERS: dict[Any, _Decoder] = {
    list[str]: _strings,
    list[bytes]: _byte_values,
    list[int]: _numbers(int),
    list[float]: _numbers(float),
    list[bool]: _numbers(bool),
    np.ndarray: lambda tensor: tensor.array,
    Tensor: lambda tensor: tensor,
}


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    decode: _Decoder
    required: bool


def decode_args(
    fn: Callable[..., Awaitable[Any]] | None = None, *, outputs: Sequence[str] = ()
) -> Any:
    """Decorate a typed ``async def predict(self, ...)``; see the module docstring.

    Usable bare (``@decode_args``) or with output names (``@decode_args(outputs=("label",))``).
    """
    if fn is None:
        return lambda f: _wrap(f, tuple(outputs))
    return _wrap(fn, tuple(outputs))


def _wrap(fn: Callable[..., Awaitable[Any]], names: tuple[str, ...]) -> Predict:
    params = _params(fn)
    as_bytes = _bytes_outputs(typing.get_type_hints(fn).get("return"))

    @functools.wraps(fn)
    async def predict(self: Any, request: InferenceRequest) -> Sequence[Tensor]:
        result = await fn(self, **_decode(params, request))
        return _select(_encode(result, names, as_bytes), request.outputs)

    return predict


def _params(fn: Callable[..., Any]) -> tuple[_Param, ...]:
    hints = typing.get_type_hints(fn)
    params = []
    for param in list(inspect.signature(fn).parameters.values())[1:]:  # after self
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise TypeError(
                f"{fn.__qualname__}: parameter '{param.name}' must be a named parameter"
            )
        hint = hints.get(param.name)
        decoder = _DECODERS.get(_without_none(hint))
        if decoder is None:
            raise TypeError(
                f"{fn.__qualname__}: parameter '{param.name}' has annotation {hint!r}; "
                "decode_args takes list[str], list[bytes], list[int], list[float], list[bool], "
                "np.ndarray or Tensor"
            )
        params.append(_Param(param.name, decoder, param.default is param.empty))
    return tuple(params)


def _without_none(hint: Any) -> Any:
    """``X`` for ``X | None`` (a parameter that may be left out), else ``hint``."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2
    if optional and type(None) in args:
        return next(a for a in args if a is not type(None))
    return hint


def _decode(params: tuple[_Param, ...], request: InferenceRequest) -> dict[str, Any]:
    by_name = {p.name for p in params}
    named = {t.name: t for t in request.inputs if t.name in by_name}
    rest = iter([t for t in request.inputs if t.name not in by_name])
    args: dict[str, Any] = {}
    for param in params:
        tensor = named.get(param.name) or next(rest, None)
        if tensor is not None:
            args[param.name] = param.decode(tensor)
        elif param.required:
            raise InvalidInput(f"model expects input '{param.name}'; request has {_names(request)}")
    extra = list(rest)
    if extra:
        raise InvalidInput(
            f"model takes {len(params)} input(s) ({', '.join(repr(p.name) for p in params)}); "
            f"unexpected input '{extra[0].name}'"
        )
    return args


def _names(request: InferenceRequest) -> str:
    return ", ".join(f"'{t.name}'" for t in request.inputs) or "no inputs"


def _bytes_outputs(hint: Any) -> tuple[bool, ...]:
    """Per returned value, whether the annotation makes it BYTES (so an empty list is too)."""
    if typing.get_origin(hint) is tuple:
        return tuple(h in (list[str], list[bytes]) for h in typing.get_args(hint))
    return (hint in (list[str], list[bytes]),)


def _encode(result: Any, names: tuple[str, ...], as_bytes: tuple[bool, ...]) -> list[Tensor]:
    values = list(result) if isinstance(result, tuple) else [result]
    if len(names) > len(values):
        raise TypeError(
            f"decode_args: {len(names)} output names for {len(values)} returned value(s)"
        )
    return [
        _tensor(names[i] if i < len(names) else f"output-{i}", v, i < len(as_bytes) and as_bytes[i])
        for i, v in enumerate(values)
    ]


def _tensor(name: str, value: Any, as_bytes: bool) -> Tensor:
    if isinstance(value, Tensor):
        return value
    texts = isinstance(value, list) and value and all(isinstance(v, (str, bytes)) for v in value)
    if as_bytes or texts:
        return Tensor.of(name, np.array(value, dtype=object).reshape(-1), datatypes.BYTES)
    return Tensor.of(name, value)


def _select(tensors: list[Tensor], wanted: tuple[str, ...]) -> list[Tensor]:
    if not wanted:
        return tensors
    by_name = {t.name: t for t in tensors}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        offered = ", ".join(f"'{n}'" for n in by_name)
        raise InvalidInput(f"output '{missing[0]}' is not available; model offers {offered}")
    return [by_name[n] for n in wanted]
