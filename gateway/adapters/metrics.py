"""Prometheus metrics, served on the management API's /metrics.

Events the engine reports as they happen (loads, failures, evictions) update
histograms and counters here. Everything per request (requests per model,
cache hits and misses) is counted by the engine in plain integers on its hot
path and read only when Prometheus scrapes, as are copies and bytes per pod.
What clients were served (per public name, variant, protocol and code, with the
latency; gateway.core.traffic, from Envoy's access log) is read the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.core.placement import Placement
from gateway.core.traffic import Tally

_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """PlacementEvents as Prometheus metrics, plus a collector over the placement table."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._load_seconds = Histogram(
            "mmgw_model_load_seconds",
            "Time a pod took to load a model",
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self._queue_seconds = Histogram(
            "mmgw_model_load_queue_seconds",
            "Time a load waited in its pod's load queue",
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self._failures = Counter(
            "mmgw_model_load_failures",
            "Loads that failed, per pod",
            ["pod"],
            registry=self.registry,
        )
        self._evictions = Counter(
            "mmgw_model_evictions",
            "Copies removed from pods, by reason (room: to make room for a load; pod lost)",
            ["reason"],
            registry=self.registry,
        )

    def watch(self, placement: Placement) -> None:
        self.registry.register(_PlacementCollector(placement))

    def watch_traffic(self, tally: Tally) -> None:
        self.registry.register(_TrafficCollector(tally))

    def loaded(self, model_id: str, pod: str, seconds: float, queued_seconds: float) -> None:
        self._load_seconds.observe(seconds)
        self._queue_seconds.observe(queued_seconds)

    def load_failed(self, model_id: str, pod: str, reason: str) -> None:
        self._failures.labels(pod).inc()

    def evicted(self, model_id: str, pod: str, reason: str) -> None:
        self._evictions.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _PlacementCollector(Collector):
    def __init__(self, placement: Placement) -> None:
        self._placement = placement

    def collect(self) -> Iterator[Metric]:
        placement = self._placement
        requests = CounterMetricFamily(
            "mmgw_requests", "Inference requests routed, per model", labels=["model"]
        )
        copies = GaugeMetricFamily(
            "mmgw_model_copies", "Loaded copies, per model", labels=["model"]
        )
        for model_id, count in sorted(placement.model_requests().items()):
            requests.add_metric([model_id], count)
            copies.add_metric([model_id], placement.status(model_id).copies)
        yield requests
        yield copies
        yield CounterMetricFamily(
            "mmgw_cache_hits", "Requests whose model was loaded", value=placement.hits
        )
        yield CounterMetricFamily(
            "mmgw_cache_misses", "Requests that had to wait for a load", value=placement.misses
        )
        used = GaugeMetricFamily(
            "mmgw_pod_used_bytes", "Bytes of models on each pod", labels=["pod"]
        )
        capacity = GaugeMetricFamily(
            "mmgw_pod_capacity_bytes", "Model memory of each pod", labels=["pod"]
        )
        held = GaugeMetricFamily("mmgw_pod_models", "Copies on each pod", labels=["pod"])
        for pod, (cap, in_use, count) in sorted(placement.pod_usage().items()):
            used.add_metric([pod], in_use)
            capacity.add_metric([pod], cap)
            held.add_metric([pod], count)
        yield used
        yield capacity
        yield held


class _TrafficCollector(Collector):
    """mmgw_api_request_seconds: every request that named a model, as Envoy answered it."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "mmgw_api_request_seconds",
            "Inference requests as Envoy answered them, first byte in to last byte out, per "
            "public name (InferenceService or Experiment), variant (the concrete model that "
            "served it; empty: refused before a pod), protocol (grpc, rest) and code (gRPC "
            "status name, or HTTP status)",
            labels=["name", "variant", "protocol", "code"],
        )
        for labels, series in self._tally.series():
            family.add_metric(
                [labels.name, labels.variant, labels.protocol, labels.code],
                [(_bound(bound), count) for bound, count in series.cumulative()],
                series.seconds,
            )
        yield family


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
