"""An Experiment's mirror copies are sent to the cluster ext_proc names: istio/gateway.yaml
gives the gateway the ingress gateway's names for them, and they must be the clusters the
generated EnvoyFilters route the pods' traffic to (else no copy is ever sent)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gateway.core.protocol import SHADOW_CLUSTERS
from gateway.settings import GatewaySettings
from gateway.tools.envoy_config import PODS_CLUSTER, PODS_REST_CLUSTER, FilterConfig
from gateway.tools.manifests import ISTIO_CLUSTERS

ISTIO_GATEWAY = Path(__file__).resolve().parents[2] / "istio" / "gateway.yaml"


def test_the_default_names_are_envoy_yamls_pod_clusters() -> None:
    assert SHADOW_CLUSTERS == {"grpc": PODS_CLUSTER, "oip": PODS_REST_CLUSTER}
    names = {cluster["name"] for cluster in FilterConfig().clusters}
    assert set(SHADOW_CLUSTERS.values()) <= names
    assert GatewaySettings().shadow_clusters == SHADOW_CLUSTERS


def test_istio_gives_the_gateway_the_ingress_gateways_pod_clusters() -> None:
    documents = [d for d in yaml.safe_load_all(ISTIO_GATEWAY.read_text()) if d]
    (deployment,) = [d for d in documents if d.get("kind") == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    given = json.loads(env["MMGW_SHADOW_CLUSTERS"])
    assert given == {form: ISTIO_CLUSTERS[cluster] for form, cluster in SHADOW_CLUSTERS.items()}
