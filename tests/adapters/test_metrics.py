from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.adapters.metrics import Metrics
from gateway.core.placement import Placement, PlacementSettings
from gateway.core.traffic import Labels, Tally

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
    assert got[("mmgw_model_load_seconds_count", (("pod", "a"),))] == 2
    assert got[("mmgw_model_load_queue_seconds_count", (("pod", "a"),))] == 2
    assert got[("mmgw_model_load_failures_total", (("model", "m1"), ("pod", "b")))] == 1
    assert got[("mmgw_model_load_failures_total", (("model", "m2"), ("pod", "b")))] == 1
    assert got[("mmgw_model_evictions_total", (("reason", "room"),))] == 1
    assert got[("mmgw_model_copies", (("model", "m2"),))] == 1
    assert got[("mmgw_model_copies", (("model", "m1"),))] == 0
    assert got[("mmgw_pod_used_bytes", (("pod", "a"),))] == 10
    assert got[("mmgw_pod_capacity_bytes", (("pod", "b"),))] == 10


def test_served_requests_are_a_histogram_per_name_variant_protocol_and_code() -> None:
    metrics = Metrics()
    tally = Tally()
    metrics.watch_traffic(tally)
    tally.add(Labels("mnist", "mnist__isvc-1", "rest", "200"), 0.002, ok=True)
    tally.add(Labels("mnist", "mnist__isvc-1", "rest", "200"), 0.3, ok=True)
    tally.add(Labels("mnist", "", "grpc", "NOT_FOUND"), 0.0001, ok=False)
    got = samples(metrics)
    ok = (("code", "200"), ("name", "mnist"), ("protocol", "rest"), ("variant", "mnist__isvc-1"))
    assert got[("mmgw_api_request_seconds_count", ok)] == 2
    assert abs(got[("mmgw_api_request_seconds_sum", ok)] - 0.302) < 1e-9
    for le, count in (("0.001", 0), ("0.0025", 1), ("0.25", 1), ("0.5", 2), ("+Inf", 2)):
        bucket = tuple(sorted((*ok, ("le", le))))
        assert got[("mmgw_api_request_seconds_bucket", bucket)] == count, le
    refused = (("code", "NOT_FOUND"), ("name", "mnist"), ("protocol", "grpc"), ("variant", ""))
    assert got[("mmgw_api_request_seconds_count", refused)] == 1


async def test_modelmesh_s_cache_metrics_have_their_counterparts() -> None:
    """Miss delay, model size, age at eviction, loaded and managed models, LRU age and
    load queue per pod, time at the pod (ModelMesh's names in the module's docstring)."""
    metrics = Metrics()
    clock = [1000.0]
    pods = FakePods(a=FakePod(capacity=10))
    placement = Placement(
        pods,
        PlacementSettings(churn_guard=0, recent_use_guard=0),
        events=metrics,
        clock=lambda: clock[0],
    )
    metrics.watch(placement)
    at_pods = Tally(folded=1)
    metrics.watch_traffic(Tally(), at_pods)
    placement.add_pod("a")
    await placement.check_pods()
    for m in ("m1", "m2", "m3"):
        placement.register(spec(m))
    await placement.ensure_loaded("m1")  # a miss
    clock[0] += 30
    await placement.ensure_loaded("m2")  # evicts m1, idle for 30 s
    at_pods.add(("a",), 0.004)
    got = samples(metrics)
    assert got[("mmgw_cache_miss_seconds_count", ())] == 2
    assert got[("mmgw_loaded_model_size_bytes_count", ())] == 2
    assert got[("mmgw_age_at_eviction_seconds_count", ())] == 1
    assert got[("mmgw_age_at_eviction_seconds_bucket", (("le", "15.0"),))] == 0
    assert got[("mmgw_age_at_eviction_seconds_bucket", (("le", "60.0"),))] == 1
    assert got[("mmgw_models_loaded", ())] == 1
    assert got[("mmgw_models_managed", ())] == 3
    clock[0] += 7
    got = samples(metrics)
    assert got[("mmgw_pod_lru_age_seconds", (("pod", "a"),))] == 7
    assert got[("mmgw_pod_load_queue_depth", (("pod", "a"),))] == 0
    assert got[("mmgw_model_load_seconds_count", (("pod", "a"),))] == 2
    assert got[("mmgw_invoke_model_seconds_count", (("pod", "a"),))] == 1
