"""Placement decisions as plain functions over a snapshot of the table.

No I/O and no clock here: the engine (gateway.placement) gathers the snapshot,
calls these, and carries out what they return. They follow ModelMesh's rules:

- hit: among loaded copies, fewest requests in flight, ties to least recently used;
- miss: pods with room before full ones, then most free space and fewest
  models; when every pod is full, the pod whose least recently used entry is
  oldest (its cache age), since evicting there costs the least;
- eviction: least recently used first, never a copy with requests in flight,
  never one loaded less than the churn guard ago.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from gateway.domain import Copy, CopyState, PodView


def pick_copy(copies: Sequence[Copy], inflight: Mapping[str, int]) -> Copy:
    """The loaded copy to send a request to. ``copies`` must not be empty."""
    return min(copies, key=lambda c: (inflight.get(c.pod, 0), c.last_used))


def pick_pod(pods: Sequence[PodView], size: int, exclude: Collection[str] = ()) -> PodView | None:
    """The pod to load a model of ``size`` bytes on, or None if no pod can ever hold it."""
    candidates = [p for p in pods if p.healthy and p.pod not in exclude and p.capacity >= size]
    if not candidates:
        return None
    with_room = [p for p in candidates if p.free >= size]
    if with_room:
        return max(with_room, key=lambda p: (p.free, -p.model_count, p.pod))
    return min(candidates, key=lambda p: (_cache_age_key(p), p.pod))


def _cache_age_key(pod: PodView) -> float:
    return pod.oldest_use if pod.oldest_use is not None else float("-inf")


def plan_evictions(
    pod: PodView,
    copies: Sequence[Copy],
    size: int,
    *,
    now: float,
    churn_guard: float,
    inflight: Mapping[str, int],
) -> list[Copy] | None:
    """The copies on ``pod`` to unload so that ``size`` bytes fit, LRU first.

    Returns [] when the model fits already, None when it cannot be made to fit
    without evicting a protected copy (busy, loading, or too recently loaded).
    """
    needed = size - pod.free
    if needed <= 0:
        return []
    evictable = sorted(
        (
            c
            for c in copies
            if c.state is CopyState.LOADED
            and inflight.get(c.model_id, 0) == 0
            and now - c.loaded_at >= churn_guard
        ),
        key=lambda c: c.last_used,
    )
    chosen: list[Copy] = []
    for copy in evictable:
        chosen.append(copy)
        needed -= copy.size
        if needed <= 0:
            return chosen
    return None
