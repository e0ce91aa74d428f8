"""The monitoring files: the Grafana dashboard's shape and the queries it makes, and the
ServiceMonitor's aim at the gateway Service. (That every metric the dashboard names exists
in a real /metrics is tests/e2e/test_monitoring.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "istio" / "monitoring"
DASHBOARD = MONITORING / "mmgw-dashboard.json"
METRIC = re.compile(r"\b(mmgw_[a-z_]+)")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
MATCHERS = re.compile(r"\{([^}]*)\}")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def metric_names() -> set[str]:
    """The metrics the dashboard's queries read, as exposed (a histogram's _bucket, ...)."""
    return {name for expr in expressions() for name in METRIC.findall(expr)}


def labels_used(expr: str) -> set[str]:
    """Label names a query groups by or matches on (not `le`, every histogram's)."""
    names = {n.strip() for group in GROUPING.findall(expr) for n in group.split(",")}
    for matchers in MATCHERS.findall(expr):
        names |= {m.split("=")[0].rstrip("!~").strip() for m in matchers.split(",") if "=" in m}
    return names - {"le", ""}


def test_every_panel_queries_prometheus_through_the_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == "modelmesh-gateway"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) >= 12
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_the_dashboard_covers_requests_latency_cache_loads_and_pod_memory() -> None:
    names = metric_names()
    for needed in (
        "mmgw_api_request_seconds_count",  # requests and failures by code
        "mmgw_api_request_seconds_bucket",  # latency
        "mmgw_cache_hits_total",
        "mmgw_cache_misses_total",
        "mmgw_model_load_seconds_count",
        "mmgw_pod_used_bytes",
        "mmgw_pod_capacity_bytes",
    ):
        assert needed in names, needed
    assert labels_used(expressions()[0]) == {"name"}


def test_parentheses_and_braces_balance_in_every_query() -> None:
    for expr in expressions():
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_the_service_monitor_scrapes_the_gateway_services_api_port() -> None:
    [monitor] = list(yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text()))
    gateway = [
        doc
        for doc in yaml.safe_load_all((ROOT / "istio" / "gateway.yaml").read_text())
        if doc and doc["kind"] == "Service" and doc["metadata"]["name"] == "mmgw-gateway"
    ][0]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= gateway["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in gateway["spec"]["ports"]}
    assert endpoint["path"] == gateway["metadata"]["annotations"]["prometheus.io/path"]
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    [generated] = kustomization["configMapGenerator"]
    assert generated["files"] == [DASHBOARD.name]
    assert generated["options"]["labels"]["grafana_dashboard"] == "1"
