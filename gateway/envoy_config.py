"""Render envoy/envoy.yaml with this deployment's ports, addresses and limits.

envoy/envoy.yaml stays the one readable source of the filter configuration;
this module changes only the values that differ between deployments (the
demo, each test, the benchmark) and writes the result where Envoy can read it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway import protocol

ENVOY_DIR = Path(__file__).resolve().parent.parent / "envoy"
TEMPLATE = ENVOY_DIR / "envoy.yaml"
DESCRIPTOR = ENVOY_DIR / "kserve_v2.pb"

_EXT_PROC = "envoy.filters.http.ext_proc"
_TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
_BUFFER = "envoy.filters.http.buffer"


@dataclass(frozen=True, slots=True)
class EnvoyPorts:
    listen_host: str = "0.0.0.0"
    listen_port: int = 8008
    admin_port: int = 9901
    extproc_host: str = "127.0.0.1"
    extproc_port: int = 9000
    max_request_bytes: int = 16 * 1024 * 1024
    pods: tuple[str, ...] = ("127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103")


def _socket(address: dict[str, Any]) -> dict[str, Any]:
    return address["socket_address"]


def _find(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(item for item in items if item.get("name") == name)


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = _find(config["static_resources"]["listeners"], "ingress")
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def render(
    ports: EnvoyPorts,
    *,
    descriptor: Path = DESCRIPTOR,
    static_upstream: str | None = None,
) -> dict[str, Any]:
    """The Envoy bootstrap for ``ports``.

    ``static_upstream`` ("host:port") builds the benchmark's baseline instead:
    the same listener and transcoder with no ext_proc, every request sent to
    that one pod.
    """
    config = copy.deepcopy(yaml.safe_load(TEMPLATE.read_text()))
    _socket(config["admin"]["address"])["port_value"] = ports.admin_port
    resources = config["static_resources"]
    listener = _find(resources["listeners"], "ingress")
    _socket(listener["address"]).update(address=ports.listen_host, port_value=ports.listen_port)
    listener["per_connection_buffer_limit_bytes"] = ports.max_request_bytes

    hcm = _hcm(config)
    transcoder = _find(hcm["http_filters"], _TRANSCODER)["typed_config"]
    transcoder["proto_descriptor"] = str(descriptor)
    transcoder["max_request_body_size"] = ports.max_request_bytes
    _find(hcm["http_filters"], _BUFFER)["typed_config"]["max_request_bytes"] = ports.max_request_bytes

    clusters = resources["clusters"]
    extproc_cluster = _find(clusters, "ext_proc")
    endpoint = extproc_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    _socket(endpoint["address"]).update(address=ports.extproc_host, port_value=ports.extproc_port)
    pods = _find(clusters, "pods")
    pods["per_connection_buffer_limit_bytes"] = ports.max_request_bytes
    pods["load_assignment"] = _endpoints(ports.pods)
    override = pods["load_balancing_policy"]["policies"][0]["typed_extension_config"]["typed_config"]
    assert override["override_host_sources"] == [{"header": protocol.UPSTREAM_HEADER}]

    if static_upstream is not None:
        _make_static(config, static_upstream)
    return config


def _endpoints(addresses: tuple[str, ...]) -> dict[str, Any]:
    def endpoint(address: str) -> dict[str, Any]:
        host, port = address.rsplit(":", 1)
        return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}

    return {"cluster_name": "pods", "endpoints": [{"lb_endpoints": [endpoint(a) for a in addresses]}]}


def _make_static(config: dict[str, Any], upstream: str) -> None:
    hcm = _hcm(config)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != _EXT_PROC]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        route.get("typed_per_filter_config", {}).pop(_EXT_PROC, None)
    clusters = config["static_resources"]["clusters"]
    clusters[:] = [c for c in clusters if c["name"] != "ext_proc"]
    pods = _find(clusters, "pods")
    pods.pop("load_balancing_policy")
    pods.update(lb_policy="ROUND_ROBIN", load_assignment=_endpoints((upstream,)))


def write(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
