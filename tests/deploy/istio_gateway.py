"""A stand-in for what Istio gives its ingress gateway, and EnvoyFilter patches applied to it.

Istio builds the gateway's listener, route and clusters from the Gateway,
VirtualService and Services; ``bootstrap`` writes a static equivalent of the
parts our EnvoyFilters touch (the port-8008 listener with a router-only HTTP
filter chain, the VirtualService's route, the outbound cluster of
modelmesh-serving:8033 as Istio shapes it, and those of its REST port 8008 and of the
management API). ``apply`` then applies the
EnvoyFilters' patches with Istio's operations and proto-merge semantics, so
that the real Envoy can validate the result.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway.tools.envoy_config import API_CLUSTER, HCM, PODS_REST_CLUSTER, ROUTER
from gateway.tools.manifests import GATEWAY_PORT, ISTIO_CLUSTERS, ISTIO_PODS_CLUSTER

_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def bootstrap() -> dict[str, Any]:
    hcm = {
        "@type": _HCM_TYPE,
        "stat_prefix": f"outbound_0.0.0.0_{GATEWAY_PORT}",
        "route_config": {
            "name": f"http.{GATEWAY_PORT}",
            "virtual_hosts": [
                {
                    "name": f"*:{GATEWAY_PORT}",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "default",
                            "match": {"prefix": "/"},
                            "route": {"cluster": ISTIO_PODS_CLUSTER, "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": ROUTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": f"0.0.0.0_{GATEWAY_PORT}",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": GATEWAY_PORT}},
        "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}],
    }
    # EDS in Istio; a static endpoint here. Istio's default policy is LEAST_REQUEST.
    clusters = [
        _cluster(ISTIO_PODS_CLUSTER, "10.0.0.5", 8085, http2=True),
        _cluster(ISTIO_CLUSTERS[PODS_REST_CLUSTER], "10.0.0.5", 8008, http2=False),
        _cluster(ISTIO_CLUSTERS[API_CLUSTER], "10.0.0.9", 8080, http2=False),
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def _cluster(name: str, address: str, port: int, *, http2: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": address, "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def merge(into: dict[str, Any], value: dict[str, Any]) -> None:
    """Protobuf merge: messages merge field by field, repeated fields append, scalars replace."""
    for key, item in value.items():
        if isinstance(item, dict) and isinstance(into.get(key), dict):
            merge(into[key], item)
        elif isinstance(item, list) and isinstance(into.get(key), list):
            into[key].extend(copy.deepcopy(item))
        else:
            into[key] = copy.deepcopy(item)


def hcm_of(config: dict[str, Any]) -> dict[str, Any]:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]


def apply(config: dict[str, Any], envoy_filters: list[dict[str, Any]]) -> dict[str, Any]:
    """``config`` with every patch applied, EnvoyFilters in priority order as Istio does."""
    config = copy.deepcopy(config)
    listener = config["static_resources"]["listeners"][0]
    clusters = config["static_resources"]["clusters"]
    hcm = hcm_of(config)
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    for envoy_filter in sorted(envoy_filters, key=lambda f: f["spec"].get("priority", 0)):
        for patch in envoy_filter["spec"]["configPatches"]:
            assert patch["match"]["context"] == "GATEWAY"
            where, operation, value = (
                patch["applyTo"],
                patch["patch"]["operation"],
                patch["patch"]["value"],
            )
            if (where, operation) == ("LISTENER", "MERGE"):
                merge(listener, value)
            elif (where, operation) == ("NETWORK_FILTER", "MERGE"):
                assert patch["match"]["listener"]["filterChain"]["filter"]["name"] == HCM
                assert value["typed_config"]["@type"] == hcm["@type"]
                merge(hcm, value["typed_config"])
            elif (where, operation) == ("HTTP_FILTER", "INSERT_BEFORE"):
                anchor = patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
                index = next(i for i, f in enumerate(hcm["http_filters"]) if f["name"] == anchor)
                hcm["http_filters"].insert(index, copy.deepcopy(value))
            elif (where, operation) == ("HTTP_ROUTE", "INSERT_FIRST"):
                assert patch["match"]["routeConfiguration"]["vhost"]["name"] == f"*:{GATEWAY_PORT}"
                routes.insert(0, copy.deepcopy(value))
            elif (where, operation) == ("CLUSTER", "ADD"):
                clusters.append(copy.deepcopy(value))
            elif (where, operation) == ("CLUSTER", "MERGE"):
                match = patch["match"]["cluster"]
                name = f"outbound|{match['portNumber']}||{match['service']}"
                merge(next(c for c in clusters if c["name"] == name), value)
            else:
                raise AssertionError(f"no stand-in for {where} {operation}")
    return config
