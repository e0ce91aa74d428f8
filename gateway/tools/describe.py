"""`mmgw describe`: one resource as `kubectl describe` prints it, with its events.

Name, namespace, labels and annotations; the spec and the status as indented
fields (the Ready condition and ModelMesh's model status first, for an
InferenceService); then the events: type, reason, age, source and message.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from gateway.tools.printers import age, table

_INDENT = "  "


def render(item: dict[str, Any], events: list[dict[str, Any]]) -> str:
    metadata = item.get("metadata", {})
    lines = [
        f"Name:         {metadata.get('name', '')}",
        f"Namespace:    {metadata.get('namespace', '') or '<none>'}",
        f"Labels:       {_pairs(metadata.get('labels'))}",
        f"Annotations:  {_pairs(metadata.get('annotations'))}",
        f"API Version:  {item.get('apiVersion', '')}",
        f"Kind:         {item.get('kind', '')}",
        f"Created:      {metadata.get('creationTimestamp', '<unknown>')}",
        "Spec:",
        *_fields(item.get("spec", {}), 1),
        "Status:",
        *_fields(item.get("status", {}), 1),
        "Events:" + ("" if events else "  <none>"),
    ]
    if events:
        now = time.time()
        rows = [
            ["Type", "Reason", "Age", "From", "Message"],
            ["----", "------", "----", "----", "-------"],
        ]
        for event in events:
            last = event.get("lastTimestamp")
            when = age(now - datetime.fromisoformat(last).timestamp()) if last else "<unknown>"
            count = event.get("count", 1)
            rows.append(
                [
                    event.get("type", ""),
                    event.get("reason", ""),
                    when if count == 1 else f"{when} (x{count})",
                    event.get("source", {}).get("component", ""),
                    event.get("message", ""),
                ]
            )
        lines += [_INDENT + line for line in table(rows).splitlines()]
    return "\n".join(lines)


def _pairs(mapping: dict[str, str] | None) -> str:
    if not mapping:
        return "<none>"
    return ("\n" + " " * 14).join(f"{k}={v}" for k, v in sorted(mapping.items()))


def _fields(value: Any, depth: int) -> list[str]:
    """kubectl's nested "Key:  value" layout, keys capitalized as it does."""
    pad = _INDENT * depth
    lines: list[str] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            title = key[:1].upper() + key[1:]
            if isinstance(inner, dict | list) and inner:
                lines.append(f"{pad}{title}:")
                lines += _fields(inner, depth + 1)
            else:
                lines.append(f"{pad}{title}:  {_scalar(inner)}")
    elif isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict) and entry:
                inner = _fields(entry, depth + 1)
                lines.append(pad + "- " + inner[0].lstrip())
                lines += inner[1:]
            else:
                lines.append(f"{pad}- {_scalar(entry)}")
    return lines


def _scalar(value: Any) -> str:
    if value is None or value == {} or value == []:
        return "<none>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
