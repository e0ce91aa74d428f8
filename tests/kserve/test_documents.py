"""YAML documents with their aliases bounded (gateway.kserve.documents)."""

from __future__ import annotations

import time

import pytest

from gateway.kserve import documents


def bomb(levels: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\nkind: InferenceService\n"


def test_aliases_that_expand_past_the_limit_are_refused_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(documents.TooManyNodes, match="document 1 expands to more than 100,000"):
        documents.load_all(bomb(9))  # 10^9 nodes once expanded
    assert time.monotonic() - started < 5  # the count stops at the limit


def test_ordinary_aliases_and_several_documents_load() -> None:
    text = "a: &x {k: v}\nb: *x\n---\nkind: List\nitems: []\n---\n"
    assert documents.load_all(text) == [
        {"a": {"k": "v"}, "b": {"k": "v"}},
        {"kind": "List", "items": []},
        None,
    ]
    with pytest.raises(documents.TooManyNodes, match="document 2"):
        documents.load_all("a: 1\n---\n" + bomb(7), max_nodes=1000)
