"""envoy/envoy.yaml as data: its shared parts, and the bootstrap rendered for one deployment.

envoy/envoy.yaml is the one readable source of the front proxy's
configuration. This module is the one reader of it. ``FilterConfig`` names
the parts every deployment shares (the HTTP filters, ext_proc and transcoder
settings, local_reply_config, the routes with their retry policy, the pods
cluster's override_host policy); ``render`` builds a local Envoy's bootstrap
from them with the values that differ between deployments (the demo, each
test, the benchmark, docker-compose), and gateway.tools.manifests builds Istio's
EnvoyFilters from the same parts.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.adapters.eds import load_assignment
from gateway.core import protocol

ENVOY_DIR = Path(__file__).resolve().parents[2] / "envoy"
TEMPLATE = ENVOY_DIR / "envoy.yaml"
DESCRIPTOR = ENVOY_DIR / "kserve_v2.pb"

EXT_PROC = "envoy.filters.http.ext_proc"
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
BUFFER = "envoy.filters.http.buffer"
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"
LUA = "envoy.filters.http.lua"
PODS_CLUSTER = "pods"
PODS_REST_CLUSTER = "pods_rest"
API_CLUSTER = "api"
EXT_PROC_CLUSTER = "ext_proc"


@dataclass(frozen=True, slots=True)
class EnvoyPorts:
    """Where a local Envoy listens and what it talks to. Host names (not IP
    literals) make the cluster STRICT_DNS, as in docker-compose."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 8008
    admin_port: int = 9901
    extproc_host: str = "127.0.0.1"
    extproc_port: int = 9000
    max_request_bytes: int = 16 * 1024 * 1024
    pods: tuple[str, ...] = ("127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103")
    # the same pods' OIP REST listeners (gateway.pod.rest), and the management API
    rest_pods: tuple[str, ...] = ("127.0.0.1:9111", "127.0.0.1:9112", "127.0.0.1:9113")
    api: str = "127.0.0.1:8080"
    # The folder of the pods' EDS files (gateway.adapters.eds): the two pod clusters read
    # their endpoints there, kept current by the gateway; None: ``pods``/``rest_pods`` fixed.
    eds_dir: Path | None = None
    # Envoy's own access log, a JSON line per request (ACCESS_LOG_FORMAT): "-" for
    # stdout, else a file's path; None: none (the gateway still gets every request's entry).
    access_log: str | None = None
    # HOST:PORT of an OTLP gRPC collector: Envoy traces every request (OpenTelemetry, the
    # client's W3C traceparent continued or a trace started) and sends the pod its
    # traceparent; None: no tracing.
    otlp: str | None = None


# The fields of Envoy's JSON access log (mmgw envoy --access-log): one line per request.
ACCESS_LOG_FORMAT: dict[str, str] = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "vmodel": "%REQ(MM-VMODEL-ID)%",
    "variant": "%REQ(MM-MODEL-ID)%",
    "pod": "%UPSTREAM_HOST%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "pod_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_agent": "%REQ(USER-AGENT)%",
    "traceparent": "%REQ(TRACEPARENT)%",
}


def _find(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(item for item in items if item.get("name") == name)


def _socket(address: dict[str, Any]) -> dict[str, Any]:
    return address["socket_address"]


class FilterConfig:
    """One copy of envoy.yaml, with accessors for the parts deployments share.

    Accessors return the live objects of this copy: ``render`` edits them in
    place, gateway.tools.manifests copies them into EnvoyFilter patches.
    """

    def __init__(self, bootstrap: dict[str, Any] | None = None) -> None:
        """envoy.yaml, or a copy of ``bootstrap``."""
        self.bootstrap: dict[str, Any] = (
            yaml.safe_load(TEMPLATE.read_text()) if bootstrap is None else copy.deepcopy(bootstrap)
        )
        override = self.override_host_policy["typed_config"]
        assert override["override_host_sources"] == [{"header": protocol.UPSTREAM_HEADER}]

    @property
    def listener(self) -> dict[str, Any]:
        return _find(self.bootstrap["static_resources"]["listeners"], "ingress")

    @property
    def hcm(self) -> dict[str, Any]:
        """The HttpConnectionManager's typed_config."""
        return _find(self.listener["filter_chains"][0]["filters"], HCM)["typed_config"]

    @property
    def http_filters(self) -> list[dict[str, Any]]:
        """Every HTTP filter in order, the router last."""
        return self.hcm["http_filters"]

    def http_filter(self, name: str) -> dict[str, Any]:
        return _find(self.http_filters, name)

    @property
    def transcoder(self) -> dict[str, Any]:
        """The GrpcJsonTranscoder's typed_config (inside its match_delegate wrapper)."""
        return self.transcoder_of(self.http_filter(TRANSCODER))

    @staticmethod
    def transcoder_of(http_filter: dict[str, Any]) -> dict[str, Any]:
        typed: dict[str, Any] = http_filter["typed_config"]["extension_config"]["typed_config"]
        return typed

    @property
    def routes(self) -> list[dict[str, Any]]:
        return self.hcm["route_config"]["virtual_hosts"][0]["routes"]

    @property
    def clusters(self) -> list[dict[str, Any]]:
        return self.bootstrap["static_resources"]["clusters"]

    def cluster(self, name: str) -> dict[str, Any]:
        return _find(self.clusters, name)

    @property
    def override_host_policy(self) -> dict[str, Any]:
        """The pods cluster's load-balancing extension: the pod ext_proc names in x-mmgw-upstream."""
        return self.cluster(PODS_CLUSTER)["load_balancing_policy"]["policies"][0][
            "typed_extension_config"
        ]

    def embed_descriptor(self, descriptor: bytes) -> None:
        """The transcoder carries the descriptor set itself (proto_descriptor_bin), no file needed."""
        transcoder = self.transcoder
        transcoder.pop("proto_descriptor", None)
        transcoder["proto_descriptor_bin"] = base64.b64encode(descriptor).decode("ascii")


def render(
    ports: EnvoyPorts,
    *,
    descriptor: Path | bytes = DESCRIPTOR,
    static_upstream: str | None = None,
    static_rest_upstream: str | None = None,
) -> dict[str, Any]:
    """The Envoy bootstrap for ``ports``.

    ``descriptor`` is the descriptor set's path, or its bytes to embed.
    ``static_upstream`` ("host:port") builds the benchmark's baseline instead:
    the same listener and transcoder with no ext_proc, every request sent to
    that one pod (``static_rest_upstream``: its REST listener).
    """
    source = FilterConfig()
    config = source.bootstrap
    _socket(config["admin"]["address"])["port_value"] = ports.admin_port
    listener = source.listener
    _socket(listener["address"]).update(address=ports.listen_host, port_value=ports.listen_port)
    listener["per_connection_buffer_limit_bytes"] = ports.max_request_bytes

    transcoder = source.transcoder
    if isinstance(descriptor, bytes):
        source.embed_descriptor(descriptor)
    else:
        transcoder["proto_descriptor"] = str(descriptor)
    transcoder["max_request_body_size"] = ports.max_request_bytes
    source.http_filter(BUFFER)["typed_config"]["max_request_bytes"] = ports.max_request_bytes

    extproc_cluster = source.cluster(EXT_PROC_CLUSTER)
    extproc_cluster.update(
        _members(EXT_PROC_CLUSTER, (f"{ports.extproc_host}:{ports.extproc_port}",))
    )
    for name, addresses in ((PODS_CLUSTER, ports.pods), (PODS_REST_CLUSTER, ports.rest_pods)):
        cluster = source.cluster(name)
        cluster["per_connection_buffer_limit_bytes"] = ports.max_request_bytes
        if ports.eds_dir is None or static_upstream is not None:
            cluster.update(_members(name, addresses))
        else:
            _watch_endpoints(cluster, name, ports.eds_dir)
            config["node"] = {"id": "mmgw-envoy", "cluster": "mmgw"}  # xDS, files too, need one
    source.cluster(API_CLUSTER).update(_members(API_CLUSTER, (ports.api,)))
    if ports.access_log is not None:
        source.hcm.setdefault("access_log", []).append(_json_access_log(ports.access_log))
    if ports.otlp is not None:
        _trace_to(source, ports.otlp)

    if static_upstream is not None:
        _make_static(source, static_upstream, static_rest_upstream)
    return config


OTLP_CLUSTER = "otel_collector"


def _trace_to(source: FilterConfig, collector: str) -> None:
    """Envoy's OpenTelemetry tracer, every request sampled, spans to ``collector``."""
    source.hcm["tracing"] = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": "mmgw-envoy",
            },
        },
        "random_sampling": {"value": 100},
        "spawn_upstream_span": True,
    }
    source.clusters.append(
        {
            "name": OTLP_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            **_members(OTLP_CLUSTER, (collector,)),
        }
    )


def _json_access_log(where: str) -> dict[str, Any]:
    """Envoy's access logger writing ACCESS_LOG_FORMAT to stdout ("-") or a file."""
    log_format = {"json_format": ACCESS_LOG_FORMAT}
    if where == "-":
        return {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": log_format,
            },
        }
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(Path(where).resolve()),
            "log_format": log_format,
        },
    }


def _watch_endpoints(cluster: dict[str, Any], name: str, folder: Path) -> None:
    """Make ``cluster`` read its endpoints from ``folder/<name>.yaml``, reloaded on each move
    into the folder (gateway.adapters.eds writes them)."""
    cluster.pop("load_assignment", None)
    cluster["type"] = "EDS"
    cluster["eds_cluster_config"] = {
        "service_name": name,
        "eds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": str(folder.resolve() / f"{name}.yaml"),
                "watched_directory": {"path": str(folder.resolve())},
            },
        },
    }


def _members(cluster: str, addresses: tuple[str, ...]) -> dict[str, Any]:
    """A cluster's type and load_assignment: STATIC for IP literals, STRICT_DNS for host names."""

    members: dict[str, Any] = {
        "type": "STATIC",
        "load_assignment": load_assignment(cluster, addresses),
    }
    if not all(_is_ip(a.rsplit(":", 1)[0].strip("[]")) for a in addresses):
        # Pods advertise their IPv4 address; override_host compares it with the resolved one.
        members.update(type="STRICT_DNS", dns_lookup_family="V4_ONLY")
    return members


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _make_static(source: FilterConfig, upstream: str, rest_upstream: str | None) -> None:
    """No ext_proc and no Lua form check: the seed's REST form transcoded, as before the OIP
    form existed (the benchmark's floor); ``rest_upstream`` for a request that names the OIP
    form in x-mmgw-form itself."""
    dropped = (EXT_PROC, LUA)
    source.hcm["http_filters"] = [f for f in source.http_filters if f["name"] not in dropped]
    source.hcm.pop("access_log", None)  # it reports to the gateway, which is not there
    for route in source.routes:
        for name in dropped:
            route.get("typed_per_filter_config", {}).pop(name, None)
    source.clusters[:] = [c for c in source.clusters if c["name"] != EXT_PROC_CLUSTER]
    pods = source.cluster(PODS_CLUSTER)
    pods.pop("load_balancing_policy")
    pods.update(lb_policy="ROUND_ROBIN", **_members(PODS_CLUSTER, (upstream,)))
    rest_pods = source.cluster(PODS_REST_CLUSTER)
    rest_pods.pop("load_balancing_policy")
    rest_pods["lb_policy"] = "ROUND_ROBIN"
    if rest_upstream is not None:
        rest_pods.update(_members(PODS_REST_CLUSTER, (rest_upstream,)))


def write(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
