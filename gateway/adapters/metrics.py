"""Prometheus metrics, served on the management API's /metrics.

Events the engine reports as they happen (loads, failures, evictions, a request's
wait for a load) update histograms and counters here. Everything per request
(requests per model, cache hits and misses) is counted by the engine in plain
integers on its hot path and read only when Prometheus scrapes, as are copies,
bytes, the LRU age and the load queues per pod. What clients were served (per
public name, variant, protocol and code, with the latency, and the time at the
pod; gateway.core.traffic, from Envoy's access log) is read the same way.

ModelMesh's metrics and ours (the README has the table):
modelmesh_api_request_milliseconds -> mmgw_api_request_seconds,
modelmesh_invoke_model_milliseconds -> mmgw_invoke_model_seconds,
modelmesh_cache_miss_milliseconds -> mmgw_cache_miss_seconds,
modelmesh_loadmodel_milliseconds -> mmgw_model_load_seconds,
modelmesh_req_queue_delay_milliseconds -> mmgw_model_load_queue_seconds,
modelmesh_instance_lru_age_seconds -> mmgw_pod_lru_age_seconds,
modelmesh_models_loaded_total / _managed_total -> mmgw_models_loaded / _managed,
modelmesh_loaded_model_size_bytes -> mmgw_loaded_model_size_bytes,
modelmesh_age_at_eviction_milliseconds -> mmgw_age_at_eviction_seconds.
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
# idle time of a copy when it is evicted: a second to a day
_AGE_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400)
# model sizes: 4 KiB to 64 GiB, by powers of 4
_SIZE_BUCKETS = tuple(float(4**i * 1024) for i in range(1, 13))


class Metrics:
    """PlacementEvents as Prometheus metrics, plus collectors over the placement table and
    the served-request tallies."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._load_seconds = Histogram(
            "mmgw_model_load_seconds",
            "Time a pod took to load a model, per pod",
            ["pod"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self._queue_seconds = Histogram(
            "mmgw_model_load_queue_seconds",
            "Time a load waited in its pod's load queue, per pod",
            ["pod"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self._failures = Counter(
            "mmgw_model_load_failures",
            "Loads that failed, per pod and model",
            ["pod", "model"],
            registry=self.registry,
        )
        self._evictions = Counter(
            "mmgw_model_evictions",
            "Copies removed from pods, by reason (room: to make room for a load; pod lost)",
            ["reason"],
            registry=self.registry,
        )
        self._age_at_eviction = Histogram(
            "mmgw_age_at_eviction_seconds",
            "How long an evicted copy had gone without a request",
            buckets=_AGE_BUCKETS,
            registry=self.registry,
        )
        self._miss_seconds = Histogram(
            "mmgw_cache_miss_seconds",
            "Time a request waited for its model to load (a cache miss)",
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self._model_size = Histogram(
            "mmgw_loaded_model_size_bytes",
            "Size of each model copy loaded, as its pod reported it",
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )

    def watch(self, placement: Placement) -> None:
        self.registry.register(_PlacementCollector(placement))

    def watch_traffic(self, requests: Tally, at_pods: Tally | None = None) -> None:
        """``requests``: by (name, variant, protocol, code); ``at_pods``: by pod."""
        self.registry.register(_TrafficCollector(requests, at_pods))

    # -- PlacementEvents --------------------------------------------------------

    def loaded(
        self, model_id: str, pod: str, seconds: float, queued_seconds: float, size: int
    ) -> None:
        self._load_seconds.labels(pod).observe(seconds)
        self._queue_seconds.labels(pod).observe(queued_seconds)
        self._model_size.observe(size)

    def load_failed(self, model_id: str, pod: str, reason: str) -> None:
        self._failures.labels(pod, model_id).inc()

    def evicted(self, model_id: str, pod: str, reason: str, idle_seconds: float) -> None:
        self._evictions.labels(reason).inc()
        self._age_at_eviction.observe(idle_seconds)

    def waited(self, model_id: str, seconds: float) -> None:
        self._miss_seconds.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _PlacementCollector(Collector):
    def __init__(self, placement: Placement) -> None:
        self._placement = placement

    def collect(self) -> Iterator[Metric]:
        placement = self._placement
        requests = CounterMetricFamily(
            "mmgw_requests", "Inference requests routed, per concrete model", labels=["model"]
        )
        copies = GaugeMetricFamily(
            "mmgw_model_copies", "Loaded copies, per concrete model", labels=["model"]
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
        loaded, managed = placement.model_counts()
        yield GaugeMetricFamily(
            "mmgw_models_loaded", "Models with at least one loaded copy", value=loaded
        )
        yield GaugeMetricFamily(
            "mmgw_models_managed", "Models registered (concrete ids)", value=managed
        )
        pods = sorted(placement.pod_gauges().items())
        for name, documentation, read in (
            ("mmgw_pod_used_bytes", "Bytes of models on each pod", lambda g: g.used),
            ("mmgw_pod_capacity_bytes", "Model memory of each pod", lambda g: g.capacity),
            ("mmgw_pod_models", "Copies on each pod", lambda g: g.copies),
            (
                "mmgw_pod_lru_age_seconds",
                "Seconds since each pod's least recently used copy served a request "
                "(its cache age; 0: no copies)",
                lambda g: g.lru_age,
            ),
            ("mmgw_pod_loads_running", "Loads under way on each pod", lambda g: g.loads_running),
            (
                "mmgw_pod_load_queue_depth",
                "Loads waiting in each pod's load queue",
                lambda g: g.loads_waiting,
            ),
        ):
            family = GaugeMetricFamily(name, documentation, labels=["pod"])
            for pod, gauges in pods:
                family.add_metric([pod], read(gauges))
            yield family


class _TrafficCollector(Collector):
    """Every request that named a model, as Envoy answered it, and its time at the pod."""

    def __init__(self, requests: Tally, at_pods: Tally | None) -> None:
        self._requests = requests
        self._at_pods = at_pods

    def collect(self) -> Iterator[Metric]:
        yield _histogram(
            self._requests,
            "mmgw_api_request_seconds",
            "Inference requests as Envoy answered them, first byte in to last byte out, per "
            "public name (InferenceService or Experiment), variant (the concrete model that "
            "served it; empty: refused before a pod), protocol (grpc, rest) and code (gRPC "
            "status name, or HTTP status)",
            ["name", "variant", "protocol", "code"],
        )
        if self._at_pods is not None:
            yield _histogram(
                self._at_pods,
                "mmgw_invoke_model_seconds",
                "Time at the pod, first byte sent to it to last byte back, as Envoy measured "
                "it, per pod",
                ["pod"],
            )


def _histogram(tally: Tally, name: str, documentation: str, labels: list[str]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, series in tally.series():
        family.add_metric(
            list(values),
            [(_bound(bound), count) for bound, count in series.cumulative()],
            series.seconds,
        )
    return family


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
