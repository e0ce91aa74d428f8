"""The README's settings table names every gateway setting, as its variable, with its default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]


def settings_with_defaults() -> dict[str, object]:
    """MMGW_* variable -> default, nested settings flattened with a double underscore."""
    found: dict[str, object] = {}
    for name, field in GatewaySettings.model_fields.items():
        default = field.default if field.default_factory is None else None
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            for nested in dataclasses.fields(default):
                found[f"MMGW_{name.upper()}__{nested.name.upper()}"] = getattr(default, nested.name)
        else:
            found[f"MMGW_{name.upper()}"] = default
    return found


def documented() -> dict[str, str]:
    """variable -> the default column, from the README's table (a row may name two)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The gateway's settings") :]
    section = section[: section.index("\n## ")]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`MMGW_"):
            continue
        names = re.findall(r"`(MMGW_\w+)`", cells[0])
        defaults = (
            [d.strip().strip("`") for d in cells[1].split(",")] if len(names) > 1 else [cells[1]]
        )
        rows.update(zip(names, defaults, strict=True))
    return rows


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    table = documented()
    settings = settings_with_defaults()
    assert sorted(settings) == sorted(table), (
        "the README's settings table and GatewaySettings differ"
    )
    for name, default in settings.items():
        shown = table[name].strip("`")
        if default is None or isinstance(default, dict):
            continue  # "none", or a mapping the table describes in words
        if isinstance(default, float):
            assert float(shown) == default, name
        else:
            assert shown == str(default), name


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMGW_PLACEMENT__CHURN_GUARD", "2.5")
    monkeypatch.setenv("MMGW_REGISTRY__ROLLOUT_GRACE", "7")
    settings = GatewaySettings()
    assert (settings.placement.churn_guard, settings.registry.rollout_grace) == (2.5, 7.0)
    assert settings.placement.load_timeout == 90.0  # the others keep their defaults
