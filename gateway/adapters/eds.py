"""Envoy's pod endpoints as files (EDS over a watched directory): pods that join or leave a
running Envoy.

A local Envoy's clusters "pods" and "pods_rest" are EDS clusters reading
``<folder>/pods.yaml`` and ``<folder>/pods_rest.yaml`` (gateway.tools.envoy_config,
``eds_dir``). ``EndpointFiles`` writes them from the placement table: every pod the
gateway knows (registered in the store), at its data plane's gRPC address (its own, or
the MLServer's beside it) and, once its status
reported one, its REST listener's. Each file is written beside, then moved into the
folder, the move Envoy's ``watched_directory`` reloads on; a pod that registers after
Envoy started is one of its hosts within a tick, and a pod that left is gone as fast.

Istio has the runtime Service's EDS and compose a fixed set of pods: neither uses this.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from gateway.core.placement import Placement

log = logging.getLogger(__name__)

CLUSTERS = ("pods", "pods_rest")  # envoy.yaml's names; the file of each is <name>.yaml
_ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def file_of(folder: Path, cluster: str) -> Path:
    return folder / f"{cluster}.yaml"


def write(folder: Path, cluster: str, addresses: Iterable[str], version: int) -> None:
    """``cluster``'s endpoints, as Envoy's path-based EDS reads them; written whole, then moved."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "version_info": str(version),
        "resources": [{"@type": _ASSIGNMENT, **load_assignment(cluster, sorted(addresses))}],
    }
    target = file_of(folder, cluster)
    scratch = folder / f".{cluster}.yaml.writing"
    scratch.write_text(yaml.safe_dump(document, sort_keys=False))
    os.replace(scratch, target)


def load_assignment(cluster: str, addresses: Iterable[str]) -> dict[str, Any]:
    """Envoy's ClusterLoadAssignment of ``cluster``: one endpoint per "host:port", in order
    (a static cluster's load_assignment, or an EDS file's resource)."""

    def endpoint(address: str) -> dict[str, Any]:
        host, port = address.rsplit(":", 1)
        socket = {"address": host.strip("[]"), "port_value": int(port)}
        return {"endpoint": {"address": {"socket_address": socket}}}

    return {
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [endpoint(a) for a in addresses]}],
    }


class EndpointFiles:
    """Keeps the endpoint files equal to the pods the placement table holds."""

    def __init__(self, placement: Placement, folder: Path, *, interval: float = 0.2) -> None:
        self._placement = placement
        self._folder = folder
        self._interval = interval
        self._written: tuple[frozenset[str], frozenset[str]] | None = None
        self._version = 0

    def sync(self) -> bool:
        """Write the files if the pods changed since the last write; whether it wrote."""
        endpoints = self._placement.endpoints()
        grpc = frozenset(data for _, data, _ in endpoints)
        rest = frozenset(rest for _, _, rest in endpoints if rest)
        if (grpc, rest) == self._written:
            return False
        self._version += 1
        for cluster, addresses in zip(CLUSTERS, (grpc, rest), strict=True):
            write(self._folder, cluster, addresses, self._version)
        if self._written is not None:
            log.info("Envoy's pods are now %s (REST %s)", sorted(grpc) or "none", sorted(rest))
        self._written = (grpc, rest)
        return True

    async def run(self) -> None:
        """Sync every ``interval`` until cancelled; a write that fails is retried next tick."""
        while True:
            try:
                self.sync()
            except OSError as exc:
                log.warning("cannot write Envoy's endpoint files in %s: %s", self._folder, exc)
            await asyncio.sleep(self._interval)
