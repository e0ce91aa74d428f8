from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.adapters.metrics import Metrics
from gateway.core.placement import Placement, PlacementSettings

from ..core.fakes import FakePod, FakePods, spec


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_exposition_tells_requests_hits_misses_loads_evictions_and_pods() -> None:
    metrics = Metrics()
    pods = FakePods(a=FakePod(capacity=10), b=FakePod(capacity=10, fail_loads="broken"))
    placement = Placement(
        pods, PlacementSettings(churn_guard=0, recent_use_guard=0), events=metrics
    )
    metrics.watch(placement)
    for p in ("a", "b"):
        placement.add_pod(p)
    await placement.check_pods()
    for m in ("m1", "m2"):
        placement.register(spec(m))
    await placement.ensure_loaded("m1")  # a miss, loaded on a (b fails)
    placement.lookup("m1")  # a hit
    await placement.ensure_loaded("m2")  # a miss: fails on b, evicts m1 on a

    got = samples(metrics)
    assert got[("mmgw_requests_total", (("model", "m1"),))] == 2
    assert got[("mmgw_requests_total", (("model", "m2"),))] == 1
    assert got[("mmgw_cache_hits_total", ())] == 1
    assert got[("mmgw_cache_misses_total", ())] == 2
    assert got[("mmgw_model_load_seconds_count", ())] == 2
    assert got[("mmgw_model_load_queue_seconds_count", ())] == 2
    assert got[("mmgw_model_load_failures_total", (("pod", "b"),))] == 2
    assert got[("mmgw_model_evictions_total", (("reason", "room"),))] == 1
    assert got[("mmgw_model_copies", (("model", "m2"),))] == 1
    assert got[("mmgw_model_copies", (("model", "m1"),))] == 0
    assert got[("mmgw_pod_used_bytes", (("pod", "a"),))] == 10
    assert got[("mmgw_pod_capacity_bytes", (("pod", "b"),))] == 10
