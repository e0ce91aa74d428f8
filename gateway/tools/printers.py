"""What `mmgw get` prints: kubectl's tables and output formats for our resources.

``-o`` takes table (the default), wide, name, json, yaml and jsonpath=TEMPLATE, as
kubectl does; ``--no-headers`` leaves a table's header out. The InferenceService table
has KServe's columns (`kubectl get isvc`); wide adds ModelMesh's (the active model,
the transition, copies) and the Ready condition's reason.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import yaml

from gateway.core.protocol import CONCRETE_ID_SEPARATOR
from gateway.tools import jsonpath
from gateway.tools.client import KINDS, CliError

OUTPUTS = ("table", "wide", "name", "json", "yaml", "jsonpath=TEMPLATE")


def check_output(output: str) -> str:
    """``output`` if it is a format `get` prints, else CliError naming the ones it does."""
    if output in OUTPUTS[:-1] or output.startswith("jsonpath="):
        return output
    raise CliError(
        f"unable to match a printer suitable for the output format {output!r}, "
        f"allowed formats are: {','.join(OUTPUTS)}"
    )


def render(
    kind: str, items: list[dict[str, Any]], *, single: bool, output: str, headers: bool = True
) -> str:
    """``items`` of ``kind`` in ``output``; ``single``: one object asked for by name."""
    data: Any = items[0] if single else {"apiVersion": "v1", "kind": "List", "items": items}
    if output == "json":
        return json.dumps(data, indent=2)
    if output == "yaml":
        return yaml.safe_dump(data, sort_keys=False).rstrip("\n")
    if output.startswith("jsonpath="):
        try:
            return jsonpath.render(output.removeprefix("jsonpath="), data)
        except jsonpath.JsonPathError as exc:
            raise CliError(f"error parsing jsonpath: {exc}") from None
    if output == "name":
        return "\n".join(f"{KINDS[kind][0]}/{item['metadata']['name']}" for item in items)
    if kind == "Experiment":
        return experiment_table(items, headers=headers)
    if kind != "InferenceService":
        return runtime_table(items, headers=headers)
    return isvc_table(items, wide=output == "wide", headers=headers)


def isvc_table(items: list[dict[str, Any]], *, wide: bool, headers: bool = True) -> str:
    """`kubectl get isvc`'s columns; wide: also REASON, ACTIVEMODEL, TRANSITION, COPIES."""
    rows = [
        [
            "NAME",
            "URL",
            "READY",
            "PREV",
            "LATEST",
            "PREVROLLEDOUTREVISION",
            "LATESTREADYREVISION",
            "AGE",
        ]
    ]
    if wide:
        rows[0] += ["REASON", "ACTIVEMODEL", "TRANSITION", "COPIES"]
    for item in items:
        status = item.get("status", {})
        ready, reason = _ready(item)
        prev, latest = _traffic_percents(item)
        predictor = status.get("components", {}).get("predictor", {})
        rolled_out = predictor.get("latestRolledoutRevision", "") if prev else ""
        row = [
            item["metadata"]["name"],
            status.get("url", ""),
            ready,
            prev,
            latest,
            rolled_out,
            predictor.get("latestReadyRevision", ""),
            _age_of(item),
        ]
        if wide:
            model = status.get("modelStatus", {})
            row += [
                reason,
                model.get("states", {}).get("activeModelState", ""),
                model.get("transitionStatus", ""),
                str(model.get("copies", {}).get("totalCopies", "")),
            ]
        rows.append(row)
    return table(rows, headers=headers)


def _ready(item: dict[str, Any]) -> tuple[str, str]:
    return ready_of(item.get("status", {}))


def ready_of(status: dict[str, Any]) -> tuple[str, str]:
    """The Ready condition's status and reason."""
    for condition in status.get("conditions", []):
        if condition.get("type") == "Ready":
            return condition.get("status", "Unknown"), condition.get("reason", "")
    return "Unknown", ""


def age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: list[list[str]], *, headers: bool = True) -> str:
    """Columns padded to their widest cell, three spaces apart; ``headers``: keep row 0."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (rows if headers else rows[1:])
    )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}Mi"


def placement_table(data: dict[str, Any]) -> str:
    """The placement table as people read it: a line per pod, then a line per copy on it."""
    rows = [["POD", "MODEL", "STATE", "SIZE", "LAST USE", "IN FLIGHT", "REQ/S"]]
    for pod in data["pods"]:
        health = "healthy" if pod["healthy"] else "UNREACHABLE"
        queue = pod["load_queue"]
        rows.append(
            [
                pod["pod"],
                f"({health}, {_mib(pod['used_bytes'])} of {_mib(pod['capacity_bytes'])}, "
                f"loading {queue['running']}, queued {queue['waiting']})",
                "",
                "",
                "",
                "",
                "",
            ]
        )
        for m in pod["models"]:
            if m["state"] == "FAILED":
                rows.append(
                    [
                        "",
                        m["model_id"],
                        "FAILED",
                        "",
                        f"{m['failed_seconds_ago']:.0f}s ago",
                        "",
                        m["reason"],
                    ]
                )
            else:
                rows.append(
                    [
                        "",
                        m["model_id"],
                        m["state"],
                        _mib(m["size_bytes"]),
                        f"{m['last_used_seconds_ago']:.0f}s ago",
                        str(m["in_flight"]),
                        f"{m['requests_per_second']:.1f}",
                    ]
                )
    return table(rows)


def _traffic_percents(item: dict[str, Any]) -> tuple[str, str]:
    """The PREV and LATEST columns, as `kubectl get isvc` shows KServe's traffic split:
    the rolled-out and the latest revision's percent (PREV empty when there is one)."""
    traffic = item.get("status", {}).get("components", {}).get("predictor", {}).get("traffic")
    if not traffic:
        return "", ""
    by_tag = {t.get("tag"): str(t.get("percent", "")) for t in traffic}
    if "prev" in by_tag:
        return by_tag["prev"], by_tag.get("latest", "")
    return "", str(traffic[0].get("percent", ""))


def _age_of(item: dict[str, Any]) -> str:
    created = item.get("metadata", {}).get("creationTimestamp")
    return age(time.time() - datetime.fromisoformat(created).timestamp()) if created else "-"


def experiment_table(items: list[dict[str, Any]], *, headers: bool = True) -> str:
    """Experiments: their candidates with weights (ready ones marked), default, what each
    candidate served (requests, and failed ones) and age."""
    rows = [["NAME", "READY", "CANDIDATES", "DEFAULT", "SERVED", "AGE"]]
    for item in items:
        status = item.get("status", {})
        candidates = ",".join(
            f"{c['name']}={c['weight']}{'' if c.get('ready') else '(not ready)'}"
            for c in status.get("candidates", [])
        )
        ready = status.get("conditions", [{}])[0].get("status", "")
        default = item.get("spec", {}).get("default") or "-"
        rows.append(
            [
                item["metadata"]["name"],
                ready,
                candidates,
                default,
                served_summary(status.get("served", [])),
                _age_of(item),
            ]
        )
    return table(rows, headers=headers)


def served_summary(served: list[dict[str, Any]]) -> str:
    """``status.served`` in a table cell: requests per InferenceService (a variant's name
    without its hash), failed ones in brackets; "refused" for those no pod was asked."""
    totals: dict[str, list[int]] = {}
    for row in served:
        variant = row.get("variant") or "refused"
        owner = variant.rpartition(CONCRETE_ID_SEPARATOR)[0] or variant
        total = totals.setdefault(owner, [0, 0])
        total[0] += int(row.get("requests", 0))
        total[1] += int(row.get("errors", 0))
    return (
        ",".join(
            f"{owner}={requests}" + (f"({errors} failed)" if errors else "")
            for owner, (requests, errors) in totals.items()
        )
        or "-"
    )


def runtime_table(items: list[dict[str, Any]], *, headers: bool = True) -> str:
    """(Cluster)ServingRuntimes as `kubectl get servingruntimes` prints them."""
    rows = [["NAME", "DISABLED", "MODELTYPE", "CONTAINERS", "AGE"]]
    for item in items:
        spec = item.get("spec", {})
        formats = spec.get("supportedModelFormats") or [{}]
        rows.append(
            [
                item["metadata"]["name"],
                "true" if spec.get("disabled") else "",
                formats[0].get("name", ""),
                ",".join(c.get("name", "") for c in spec.get("containers", [])),
                _age_of(item),
            ]
        )
    return table(rows, headers=headers)
