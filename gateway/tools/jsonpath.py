"""kubectl's JSONPath templates (``-o jsonpath=...``), the part people use.

A template is text with ``{...}`` expressions: ``{.metadata.name}``, ``{.items[0].status.url}``,
``{.items[*].metadata.name}`` (every match, joined by a space), ``{..name}`` is not
supported, ``{range .items[*]}...{end}`` repeats its body for each match, and
``{"\\n"}`` or ``{'\\t'}`` are literal strings. Outside braces, text is printed as it is.
A field that is absent prints nothing, as kubectl does for a missing leaf (kubectl
errors on some of them; printing nothing is the forgiving half). A malformed template
raises JsonPathError, which the CLI turns into exit status 1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_STEP = re.compile(r"\.([A-Za-z0-9_\-/]+)|\[(\*|-?\d+)\]|\['([^']*)'\]")


class JsonPathError(ValueError):
    pass


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Path:
    steps: tuple[str | int, ...]  # field names, indices; "*" for every element


@dataclass(frozen=True)
class _Range:
    path: _Path
    body: tuple[_Text | _Path | _Range, ...]


def render(template: str, data: Any) -> str:
    nodes, rest = _parse(template, 0, top=True)
    assert rest == len(template)
    return "".join(_run(node, data) for node in nodes)


def _run(node: _Text | _Path | _Range, data: Any) -> str:
    if isinstance(node, _Text):
        return node.text
    if isinstance(node, _Path):
        return " ".join(_show(value) for value in _select(node.steps, data))
    return "".join(
        _run(inner, item) for item in _select(node.path.steps, data) for inner in node.body
    )


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else str(value)


def _select(steps: tuple[str | int, ...], data: Any) -> list[Any]:
    found = [data]
    for step in steps:
        nxt: list[Any] = []
        for value in found:
            if step == "*":
                if isinstance(value, list):
                    nxt.extend(value)
                elif isinstance(value, dict):
                    nxt.extend(value.values())
            elif isinstance(step, int):
                if isinstance(value, list) and -len(value) <= step < len(value):
                    nxt.append(value[step])
            elif isinstance(value, dict) and step in value:
                nxt.append(value[step])
        found = nxt
    return found


def _parse(template: str, at: int, *, top: bool) -> tuple[tuple[_Text | _Path | _Range, ...], int]:
    """Nodes from ``at`` to the template's end (top) or to its ``{end}``; the index after."""
    nodes: list[_Text | _Path | _Range] = []
    while at < len(template):
        brace = template.find("{", at)
        if brace == -1:
            nodes.append(_Text(template[at:]))
            at = len(template)
            break
        if brace > at:
            nodes.append(_Text(template[at:brace]))
        close = template.find("}", brace)
        if close == -1:
            raise JsonPathError(f"unclosed '{{' at {brace} in {template!r}")
        expr = template[brace + 1 : close].strip()
        at = close + 1
        if expr == "end":
            if top:
                raise JsonPathError(f"'{{end}}' without '{{range}}' in {template!r}")
            return tuple(nodes), at
        if expr.startswith("range "):
            body, at = _parse(template, at, top=False)
            nodes.append(_Range(_path(expr[len("range ") :].strip()), body))
        elif len(expr) >= 2 and expr[0] == expr[-1] and expr[0] in "\"'":
            nodes.append(_Text(_unescape(expr[1:-1])))
        else:
            nodes.append(_path(expr))
    if not top:
        raise JsonPathError(f"'{{range}}' without '{{end}}' in {template!r}")
    return tuple(nodes), at


def _path(expr: str) -> _Path:
    if expr in ("", "."):
        return _Path(())
    if expr.startswith("$"):
        expr = expr[1:]
    if not expr.startswith((".", "[")) or ".." in expr:
        raise JsonPathError(f"unsupported expression {{{expr}}}: use {{.field.sub[0]}}")
    steps: list[str | int] = []
    at = 0
    while at < len(expr):
        match = _STEP.match(expr, at)
        if match is None:
            raise JsonPathError(f"cannot parse {{{expr}}} at {expr[at:]!r}")
        name, index, quoted = match.groups()
        if name is not None:
            steps.append(name)
        elif quoted is not None:
            steps.append(quoted)
        else:
            steps.append("*" if index == "*" else int(index))
        at = match.end()
    return _Path(tuple(steps))


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")
