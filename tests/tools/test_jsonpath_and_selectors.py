"""kubectl's JSONPath templates and label selectors, as `mmgw get` applies them."""

from __future__ import annotations

import pytest

from gateway.tools import jsonpath, selectors
from gateway.tools.jsonpath import JsonPathError
from gateway.tools.selectors import SelectorError

LIST = {
    "kind": "List",
    "items": [
        {
            "metadata": {"name": "a", "labels": {"app": "mnist", "tier": "prod"}},
            "status": {"url": "http://x/a", "ready": True, "copies": 2},
        },
        {
            "metadata": {"name": "b", "labels": {"app": "mnist"}},
            "status": {"url": "http://x/b", "ready": False},
        },
        {"metadata": {"name": "c"}, "status": {}},
    ],
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{.items[*].metadata.name}", "a b c"),
        ("{.items[0].status.url}", "http://x/a"),
        ("{.items[-1].metadata.name}", "c"),
        ("{.items[0].status.ready} {.items[1].status.ready}", "true false"),
        ("{.items[0].status.copies}", "2"),
        (
            '{range .items[*]}{.metadata.name}{"\\t"}{.status.url}{"\\n"}{end}',
            "a\thttp://x/a\nb\thttp://x/b\nc\t\n",
        ),
        ("name: {.items[0].metadata.name}!", "name: a!"),
        ("{.items[0].metadata.labels}", '{"app": "mnist", "tier": "prod"}'),
        ("{.items[0].metadata['labels'].app}", "mnist"),
        ("{.missing.field}", ""),
        ("{$.kind}", "List"),
    ],
)
def test_templates(template: str, expected: str) -> None:
    assert jsonpath.render(template, LIST) == expected


@pytest.mark.parametrize(
    "template", ["{.items[0", "{range .items[*]}{.a}", "{end}", "{..name}", "{items}", "{.a b}"]
)
def test_malformed_templates_are_refused(template: str) -> None:
    with pytest.raises(JsonPathError):
        jsonpath.render(template, LIST)


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("app=mnist", ["a", "b"]),
        ("app==mnist,tier=prod", ["a"]),
        ("tier!=prod", ["b", "c"]),
        ("tier", ["a"]),
        ("!tier", ["b", "c"]),
        ("tier in (prod, staging)", ["a"]),
        ("tier notin (prod)", ["b", "c"]),
        ("app=mnist, !tier", ["b"]),
    ],
)
def test_selectors(selector: str, names: list[str]) -> None:
    match = selectors.parse(selector)
    chosen = [i["metadata"]["name"] for i in LIST["items"] if match(selectors.labels_of(i))]
    assert chosen == names


@pytest.mark.parametrize(
    "selector", ["", "app=", "=x", "a in prod", "a in (b", "a,,b", "a=b=c", "@x"]
)
def test_malformed_selectors_are_refused(selector: str) -> None:
    if selector == "app=":  # an empty value is valid: the label is present and empty
        assert selectors.parse(selector)({"app": ""})
        return
    with pytest.raises(SelectorError):
        selectors.parse(selector)
