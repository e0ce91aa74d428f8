"""The pods' endpoint files (gateway.adapters.eds): written from the placement table, whole,
only when the pods change, in the form Envoy's path-based EDS reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.adapters import eds

from ..core.fakes import FakePod, FakePods
from ..core.harness import harness


def endpoints(folder: Path, cluster: str) -> list[str]:
    document = yaml.safe_load(eds.file_of(folder, cluster).read_text())
    (assignment,) = document["resources"]
    assert assignment["@type"].endswith("envoy.config.endpoint.v3.ClusterLoadAssignment")
    assert assignment["cluster_name"] == cluster
    return [
        "{address}:{port_value}".format(**e["endpoint"]["address"]["socket_address"])
        for e in assignment["endpoints"][0]["lb_endpoints"]
    ]


async def test_the_files_follow_the_pods_that_join_and_leave(tmp_path: Path) -> None:
    pods = FakePods(**{"10.0.0.1:9101": FakePod(rest_port=9111), "10.0.0.2:9101": FakePod()})
    h = await harness(tmp_path, pods)
    files = eds.EndpointFiles(h.placement, tmp_path / "eds")
    assert files.sync()
    assert endpoints(tmp_path / "eds", "pods") == ["10.0.0.1:9101", "10.0.0.2:9101"]
    assert endpoints(tmp_path / "eds", "pods_rest") == ["10.0.0.1:9111"]  # the other has none
    assert not files.sync()  # nothing changed: nothing written
    h.placement.add_pod("10.0.0.3:9101")
    assert files.sync()
    assert endpoints(tmp_path / "eds", "pods")[-1] == "10.0.0.3:9101"
    h.placement.remove_pod("10.0.0.1:9101")
    assert files.sync()
    assert endpoints(tmp_path / "eds", "pods") == ["10.0.0.2:9101", "10.0.0.3:9101"]
    assert endpoints(tmp_path / "eds", "pods_rest") == []
    assert sorted(p.name for p in (tmp_path / "eds").iterdir()) == ["pods.yaml", "pods_rest.yaml"]
