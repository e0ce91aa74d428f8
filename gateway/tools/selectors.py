"""Kubernetes label selectors (``-l`` / ``--selector``), applied to metadata.labels.

The equality and set forms kubectl takes, comma-separated and all required:
``app=mnist``, ``app==mnist``, ``tier!=canary``, ``team``, ``!team``,
``env in (prod,staging)``, ``env notin (dev)``. Anything else raises SelectorError
naming the requirement, as kubectl's "unable to parse requirement".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# Label keys and values as Kubernetes allows them (an optional DNS prefix on keys).
_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_EQUALITY = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*")
_SET = re.compile(rf"\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*")
_EXISTS = re.compile(rf"\s*(!?)\s*({_KEY})\s*")

Labels = Mapping[str, str]


class SelectorError(ValueError):
    pass


def parse(selector: str) -> Callable[[Labels], bool]:
    """A predicate over a resource's labels; SelectorError for a malformed selector."""
    tests = [_requirement(part) for part in _split(selector)]
    return lambda labels: all(test(labels) for test in tests)


def labels_of(item: Mapping[str, Any]) -> Labels:
    metadata = item.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    if any(not part.strip() for part in parts) or depth != 0:
        raise SelectorError(f"unable to parse requirement: {selector!r}")
    return parts


def _requirement(text: str) -> Callable[[Labels], bool]:
    if match := _SET.fullmatch(text):
        key, operator, listed = match.groups()
        values = {v.strip() for v in listed.split(",")}
        if not all(re.fullmatch(_VALUE, v) for v in values):
            raise SelectorError(f"unable to parse requirement: {text.strip()!r}: invalid value")
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQUALITY.fullmatch(text):
        key, operator, value = match.groups()
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.fullmatch(text):
        negated, key = match.groups()
        return (lambda labels: key not in labels) if negated else (lambda labels: key in labels)
    raise SelectorError(f"unable to parse requirement: {text.strip()!r}")
