"""Placement decisions as plain functions over a snapshot of the table.

No I/O and no clock here: the engine (gateway.core.placement) gathers the snapshot,
calls these, and carries out what they return. They follow ModelMesh's rules:

- hit: among loaded copies, fewest requests in flight, ties to least recently used;
- miss: pods with room before full ones, then most free space and fewest
  models; when every pod is full, the pod whose least recently used entry is
  oldest (its cache age), since evicting there costs the least;
- eviction: least recently used first (or in the order of another ``key``, see
  ``effective_last_use``), never a copy with requests in flight, never one
  loading, never one loaded less than the churn guard ago.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from gateway.core.domain import Copy, CopyState, PodView


class _Ranked(Protocol):
    @property
    def last_used(self) -> float: ...


_C = TypeVar("_C", bound=_Ranked)


def rank_copies(copies: Iterable[_C], busy: Callable[[_C], int]) -> list[_C]:
    """Loaded copies best first for a request: fewest requests in flight (``busy``),
    ties to the least recently used. The first serves; the rest are its fallbacks."""
    return sorted(copies, key=lambda c: (busy(c), c.last_used))


def pick_pod(
    pods: Sequence[PodView],
    size: int,
    exclude: Collection[str] = (),
    *,
    age: Callable[[PodView], float | None],
) -> PodView | None:
    """The pod to load a model of ``size`` bytes on, or None if no pod can ever hold it.

    A pod's cache age (``age(pod)``: its cheapest evictable copy's key, None
    when it holds nothing) is asked for only when every candidate is full, so a
    costly one (a scan of the pod's copies) is paid only then.
    """
    candidates = [p for p in pods if p.healthy and p.pod not in exclude and p.capacity >= size]
    if not candidates:
        return None
    with_room = [p for p in candidates if p.free >= size]
    if with_room:
        return max(with_room, key=lambda p: (p.free, -p.model_count, p.pod))
    ages = {p.pod: age(p) for p in candidates}
    return min(candidates, key=lambda p: (_cache_age_key(ages[p.pod]), p.pod))


def _cache_age_key(oldest_use: float | None) -> float:
    return oldest_use if oldest_use is not None else float("-inf")


def by_last_use(copy: Copy) -> float:
    """The default eviction order: least recently used first (ModelMesh's)."""
    return copy.last_used


def decayed_count(count: float, since: float, now: float, half_life: float) -> float:
    """A request count as of ``since``, decayed to ``now``: it halves every ``half_life`` s.

    Counting one request at ``now`` is ``decayed_count(count, since, now, half_life) + 1``.
    """
    return count * math.exp2(-(now - since) / half_life)


def effective_last_use(last_used: float, count: float, half_life: float) -> float:
    """Recency and frequency as one timestamp (LRFU's combined recency-frequency order).

    ``count`` is a decayed request count (the copy's, or its model's) as of
    ``last_used``. Each doubling of the count makes the copy look ``half_life``
    seconds more recently used; a copy used once is ordered by its last use
    alone, as in LRU. Ordering copies by this value is ordering them by their
    decayed count now, whatever now is, so it is a valid eviction ``key``
    (lowest first) and, per pod, a cache age.
    """
    return last_used + half_life * math.log2(max(count, 1.0))


def evictable(
    copies: Sequence[Copy], *, now: float, churn_guard: float, inflight: Mapping[str, int]
) -> list[Copy]:
    """The copies that may be unloaded: loaded, none in flight, older than the churn guard."""
    return [
        c
        for c in copies
        if c.state is CopyState.LOADED
        and inflight.get(c.model_id, 0) == 0
        and now - c.loaded_at >= churn_guard
    ]


def cache_age(
    copies: Sequence[Copy],
    *,
    now: float,
    churn_guard: float,
    inflight: Mapping[str, int],
    key: Callable[[Copy], float] = by_last_use,
) -> float | None:
    """A pod's cache age under ``key``: the lowest key among its evictable copies.

    What ``pick_pod``'s ``age`` gives, so that it sends a load to
    the pod whose next victim is cheapest. None when the pod holds nothing,
    +inf when it holds copies but none can go yet.
    """
    if not copies:
        return None
    candidates = evictable(copies, now=now, churn_guard=churn_guard, inflight=inflight)
    return min(map(key, candidates), default=math.inf)


def plan_evictions(
    pod: PodView,
    copies: Sequence[Copy],
    size: int,
    *,
    now: float,
    churn_guard: float,
    inflight: Mapping[str, int],
    key: Callable[[Copy], float] = by_last_use,
) -> list[Copy] | None:
    """The copies on ``pod`` to unload so that ``size`` bytes fit, lowest ``key`` first.

    The default key is LRU. Whatever the key, only ``evictable`` copies are
    candidates. Returns [] when the model fits already, None when it cannot be
    made to fit without evicting a protected copy (busy, loading, or too
    recently loaded).
    """
    needed = size - pod.free
    if needed <= 0:
        return []
    chosen: list[Copy] = []
    candidates = evictable(copies, now=now, churn_guard=churn_guard, inflight=inflight)
    for copy in sorted(candidates, key=key):
        chosen.append(copy)
        needed -= copy.size
        if needed <= 0:
            return chosen
    return None


def plan_adapter_evictions(
    adapters: Sequence[Copy],
    slots: int,
    capacity: int,
    size: int,
    *,
    now: float,
    churn_guard: float,
    inflight: Mapping[str, int],
    key: Callable[[Copy], float] = by_last_use,
) -> list[Copy] | None:
    """The adapters on a pod to unload so that one more, of ``size`` bytes, fits its adapter
    room (``slots`` adapters of ``capacity`` bytes together), lowest ``key`` first (by
    default least recently used, as vLLM's LoRA cache evicts). [] when it fits already;
    None when it cannot be made to fit without evicting a protected adapter (busy, loading,
    or too recently loaded)."""
    if slots <= 0 or size > capacity:
        return None
    extra = len(adapters) + 1 - slots
    over = sum(a.size for a in adapters) + size - capacity
    if extra <= 0 and over <= 0:
        return []
    chosen: list[Copy] = []
    candidates = evictable(adapters, now=now, churn_guard=churn_guard, inflight=inflight)
    for adapter in sorted(candidates, key=key):
        chosen.append(adapter)
        extra, over = extra - 1, over - adapter.size
        if extra <= 0 and over <= 0:
            return chosen
    return None
