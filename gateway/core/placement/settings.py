"""The placement engine's settings, each default declared here once."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.domain import LOAD_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True)
class PlacementSettings:
    max_load_attempts: int = 3  # distinct pods tried before a load fails
    failure_expiry: float = 15 * 60.0  # seconds a failed load keeps a pod out
    # Seconds a fresh copy is safe from eviction. Short on purpose: the request
    # that caused a load is routed to it at once (recent_use_guard) and counted
    # in flight; a longer guard blocks evictions when requests come fast
    # (benchmarks/cache_quality: 5 s at 100 req/s failed 27% of requests).
    churn_guard: float = 1.0
    # seconds after a request is routed to a copy it may still be on its way
    recent_use_guard: float = 1.0
    room_wait: float = 5.0  # seconds a request's load waits for a copy to become evictable
    load_timeout: float = LOAD_TIMEOUT_SECONDS
    loads_per_pod: int = 1  # loads at once per pod; more wait in its queue
    health_interval: float = 1.0  # seconds between pod checks (and rate ticks)
    health_timeout: float = 1.0
    # Health checks in a row a pod may leave unanswered (busy, or hung) before it is taken
    # for dead and loses its copies; after the first, its copies are tried last. A pod whose
    # connection is refused is dead at once.
    unresponsive_checks: int = 3
    copy_rate_threshold: float = 200.0  # requests/s per copy that call for another copy
    # requests in flight per copy of an adapter that call for another copy: a pod generates
    # one request at a time per base model, so a queue is what a copy elsewhere relieves
    # (an adapter's few requests a second never reach copy_rate_threshold)
    adapter_busy_threshold: float = 2.0
    scale_ticks: int = 3  # consecutive ticks above the threshold before adding one
    quiet_rate: float = 0.1  # requests/s under which an extra copy is idle
    # a pod whose load queue is this much longer than the shortest is skipped
    max_queue_gap: int = 4
    rate_skew: float = 4.0  # a pod serving this many times the mean request rate is skipped
    eviction_half_life: float = 600.0  # seconds for a model's request count to halve; 0: plain LRU
    # A pod's own list of its models may lag a load that just finished: a copy
    # younger than this is not dropped for missing from it.
    report_grace: float = 2.0
    # seconds a model nobody registered may stay on a pod before it is unloaded
    stranger_grace: float = 5.0
