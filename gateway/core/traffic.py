"""What clients were served: requests per public name, variant, protocol and code, with
their latency, as plain counters and histogram buckets.

Envoy reports every finished request after the fact (its gRPC access log service,
gateway.adapters.extproc.accesslog), off the request path; gateway.control.traffic
decides the labels (only registered names and the versions that really served) and
adds each request here. The Prometheus exposition and the management API's statuses
read it when asked. The number of label sets is bounded: past ``max_series`` every new
one is counted under OTHER, so no client can grow it without end.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

# Request latency buckets, in seconds: from a fast hit (1 ms) to a load waited for (30 s);
# few, since each label set exposes one line per bucket.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
    30.0,
)
# The label value of requests past the series bound, and of names that are not registered.
OTHER = "(other)"
UNREGISTERED = "(unregistered)"
# No variant served the request (refused before it reached a pod).
NO_VARIANT = ""

GRPC = "grpc"
REST = "rest"


@dataclass(frozen=True, slots=True)
class Served:
    """One finished request as Envoy saw it, before its labels are decided."""

    name: str | None  # the public name the client asked for, as sent; None: none
    variant: str | None  # the concrete id that served it; None: no pod was reached
    protocol: str  # GRPC or REST
    code: str  # gRPC status name (gRPC) or HTTP status (REST)
    seconds: float  # first byte in to last byte out
    ok: bool  # the code is a success (gRPC OK, HTTP 2xx)
    pod: str | None = None  # the pod's address as Envoy reached it; None: no pod answered
    pod_seconds: float | None = None  # first byte to the pod to last byte from it


class Labels(NamedTuple):
    """A served request's labels (mmgw_api_request_seconds)."""

    name: str
    variant: str
    protocol: str
    code: str


class PodLabels(NamedTuple):
    """The labels of a request's time at its pod (mmgw_invoke_model_seconds): the pod only,
    so that it is bounded by the pool, whatever the number of models."""

    pod: str


@dataclass(slots=True)
class Series:
    """One label set's requests: how many, their summed latency, and how many fell in
    each latency bucket (not cumulative; the last one is over the largest bound)."""

    count: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    ok: bool = True

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, requests at or under it) for each bucket, +Inf last."""
        total, out = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            total += count
            out.append((bound, total))
        return out


@dataclass(frozen=True, slots=True)
class VariantTotals:
    """A variant's requests, failed ones, and mean latency, for statuses and `mmgw get`."""

    requests: int
    errors: int
    seconds: float

    @property
    def mean_ms(self) -> float:
        return 1000 * self.seconds / self.requests if self.requests else 0.0


class Tally:
    """Series by label tuple. Past ``max_series`` label sets, a new one is counted with its
    first ``folded`` labels (the ones a client's traffic can vary) as OTHER."""

    def __init__(self, max_series: int = 2_000, *, folded: int = 2) -> None:
        self._max_series = max_series
        self._folded = folded
        self._series: dict[tuple[str, ...], Series] = {}

    def add(self, labels: tuple[str, ...], seconds: float, ok: bool = True) -> None:
        series = self._series.get(labels)
        if series is None:
            if len(self._series) >= self._max_series:
                labels = (OTHER,) * self._folded + labels[self._folded :]
                series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = Series(ok=ok)
        series.count += 1
        series.seconds += seconds
        series.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def __len__(self) -> int:
        return len(self._series)

    def series(self) -> Iterator[tuple[tuple[str, ...], Series]]:
        return iter(sorted(self._series.items()))

    def variants(self, name: str) -> Mapping[str, VariantTotals]:
        """For a tally of Labels: the requests for ``name`` by the variant that served them (NO_VARIANT: refused
        before a pod was reached), over every protocol and code."""
        totals: dict[str, list[float]] = {}
        for labels, series in self._series.items():
            if labels[0] != name:
                continue
            row = totals.setdefault(labels[1], [0, 0, 0.0])
            row[0] += series.count
            row[1] += 0 if series.ok else series.count
            row[2] += series.seconds
        return {
            variant: VariantTotals(int(requests), int(errors), seconds)
            for variant, (requests, errors, seconds) in sorted(totals.items())
        }
