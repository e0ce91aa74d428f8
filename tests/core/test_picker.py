from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from gateway.core.domain import Copy, CopyState, PodView
from gateway.core.picker import (
    cache_age,
    decayed_count,
    effective_last_use,
    pick_pod,
    plan_evictions,
    rank_copies,
)


def copy(
    model: str,
    pod: str,
    *,
    size: int = 10,
    used: float = 0.0,
    loaded: float = 0.0,
    state: CopyState = CopyState.LOADED,
) -> Copy:
    return Copy(model, pod, state, size, used, loaded)


def pod(
    name: str,
    *,
    capacity: int = 100,
    used: int = 0,
    models: int = 0,
    healthy: bool = True,
) -> PodView:
    return PodView(name, capacity, used, models, healthy)


def no_age(pod: PodView) -> float | None:
    """For cases with room: pick_pod asks for a cache age only when every pod is full."""
    raise AssertionError(f"pick_pod asked for the cache age of {pod.pod}")


def test_rank_copies_puts_fewest_inflight_first_then_least_recently_used() -> None:
    a, b, c = copy("m", "a", used=5), copy("m", "b", used=1), copy("m", "c", used=3)
    assert rank_copies([a, b, c], lambda c: 0) == [b, c, a]
    inflight = {"b": 2, "c": 1}
    assert rank_copies([a, b, c], lambda c: inflight.get(c.pod, 0)) == [a, c, b]


def test_pick_pod_prefers_room_then_most_free_then_fewest_models() -> None:
    full = pod("full", used=95, models=1)
    roomy = pod("roomy", used=10, models=5)
    roomier = pod("roomier", used=5, models=9)
    assert pick_pod([full, roomy, roomier], 20, age=no_age).pod == "roomier"
    same_free = [pod("x", used=10, models=3), pod("y", used=10, models=1)]
    assert pick_pod(same_free, 20, age=no_age).pod == "y"


def test_pick_pod_when_all_full_takes_the_oldest_cache() -> None:
    pods = [pod("new", used=100, models=2), pod("old", used=100, models=2)]
    ages = {"new": 50.0, "old": 10.0}
    assert pick_pod(pods, 20, age=lambda p: ages[p.pod]).pod == "old"


def test_pick_pod_skips_unhealthy_excluded_and_too_small() -> None:
    pods = [pod("down", healthy=False), pod("tried"), pod("small", capacity=10), pod("ok", used=50)]
    assert pick_pod(pods, 20, exclude={"tried"}, age=no_age).pod == "ok"
    assert pick_pod(pods, 200, age=no_age) is None


def test_plan_evictions_lru_first_until_it_fits() -> None:
    view = pod("p", capacity=100, used=90, models=3)
    copies = [
        copy("new", "p", size=30, used=9),
        copy("old", "p", size=30, used=1),
        copy("mid", "p", size=30, used=5),
    ]
    evicted = plan_evictions(view, copies, 50, now=100, churn_guard=5, inflight={})
    assert [c.model_id for c in evicted] == ["old", "mid"]


def test_plan_evictions_nothing_when_it_fits() -> None:
    assert plan_evictions(pod("p", used=10), [], 50, now=0, churn_guard=5, inflight={}) == []


def test_plan_evictions_never_busy_loading_or_fresh_copies() -> None:
    view = pod("p", capacity=100, used=90, models=3)
    copies = [
        copy("busy", "p", size=30, used=1),
        copy("fresh", "p", size=30, used=2, loaded=98),
        copy("loading", "p", size=30, used=0, state=CopyState.LOADING),
    ]
    assert plan_evictions(view, copies, 40, now=100, churn_guard=5, inflight={"busy": 1}) is None
    assert [
        c.model_id for c in plan_evictions(view, copies, 40, now=100, churn_guard=5, inflight={})
    ] == ["busy"]


# -- eviction order other than LRU (the key parameter) ---------------------------------


def test_decayed_count_halves_every_half_life() -> None:
    assert decayed_count(8.0, 10.0, 10.0, 60.0) == 8.0
    assert decayed_count(8.0, 10.0, 70.0, 60.0) == pytest.approx(4.0)
    assert decayed_count(8.0, 10.0, 190.0, 60.0) == pytest.approx(1.0)
    assert decayed_count(0.0, 0.0, 5.0, 60.0) + 1 == 1.0  # a first request counts one


def test_effective_last_use_is_last_use_plus_a_half_life_per_doubling() -> None:
    assert effective_last_use(100.0, 1.0, 60.0) == 100.0  # used once: plain LRU
    assert effective_last_use(100.0, 0.0, 60.0) == 100.0  # adopted, never counted: as once
    assert effective_last_use(100.0, 4.0, 60.0) == pytest.approx(220.0)


def test_effective_last_use_orders_as_the_decayed_counts_do_at_any_later_time() -> None:
    half_life = 30.0
    copies = [(10.0, 6.0), (40.0, 1.5), (55.0, 1.0), (25.0, 3.0)]  # (last use, count then)
    by_key = sorted(copies, key=lambda c: effective_last_use(c[0], c[1], half_life))
    for now in (55.0, 100.0, 1000.0):
        by_count_now = sorted(copies, key=lambda c: decayed_count(c[1], c[0], now, half_life))
        assert by_key == by_count_now


def lrfu(counts: dict[str, float], half_life: float = 60.0) -> Callable[[Copy], float]:
    return lambda c: effective_last_use(c.last_used, counts[c.model_id], half_life)


def test_plan_evictions_in_key_order_keeps_a_popular_copy_over_a_newer_one_off() -> None:
    view = pod("p", capacity=100, used=90, models=3)
    copies = [
        copy("popular", "p", size=30, used=50),
        copy("once", "p", size=30, used=80),
        copy("twice", "p", size=30, used=70),
    ]
    counts = {"popular": 16.0, "once": 1.0, "twice": 2.0}  # keys 290, 80, 130
    lru_first = plan_evictions(view, copies, 20, now=100, churn_guard=5, inflight={})
    assert [c.model_id for c in lru_first] == ["popular"]  # the default, LRU
    evicted = plan_evictions(
        view, copies, 50, now=100, churn_guard=5, inflight={}, key=lrfu(counts)
    )
    assert [c.model_id for c in evicted] == ["once", "twice"]


def test_plan_evictions_never_busy_loading_or_fresh_copies_whatever_the_key() -> None:
    view = pod("p", capacity=100, used=100, models=4)
    copies = [
        copy("busy", "p", size=25, used=1),
        copy("fresh", "p", size=25, used=2, loaded=98),
        copy("loading", "p", size=25, used=0, state=CopyState.LOADING),
        copy("popular", "p", size=25, used=3),
    ]
    # A key that ranks the protected copies first: they are still never chosen.
    counts = {"busy": 1.0, "fresh": 1.0, "loading": 1.0, "popular": 1000.0}
    evicted = plan_evictions(
        view, copies, 25, now=100, churn_guard=5, inflight={"busy": 1}, key=lrfu(counts)
    )
    assert [c.model_id for c in evicted] == ["popular"]
    assert (
        plan_evictions(
            view, copies, 50, now=100, churn_guard=5, inflight={"busy": 1}, key=lrfu(counts)
        )
        is None
    )


def test_cache_age_is_the_lowest_key_among_evictable_copies() -> None:
    copies = [
        copy("busy", "p", used=1),
        copy("fresh", "p", used=2, loaded=98),
        copy("loading", "p", used=0, state=CopyState.LOADING),
        copy("old", "p", used=10),
        copy("popular", "p", used=5),
    ]
    args = {"now": 100.0, "churn_guard": 5.0, "inflight": {"busy": 1}}
    assert cache_age(copies, **args) == 5.0  # LRU by default: the protected ones do not count
    assert cache_age(copies, **args, key=lrfu({"old": 1.0, "popular": 4.0})) == 10.0
    assert cache_age([], **args) is None  # empty pod: pick_pod treats it as oldest
    assert cache_age(copies[:3], **args) == math.inf  # full of protected copies: chosen last


def test_pick_pod_with_cache_age_avoids_a_pod_whose_copies_cannot_go() -> None:
    protected = [copy("fresh", "a", size=50, used=1, loaded=99), copy("busy", "a", size=50, used=2)]
    evictable_copies = [copy("x", "b", size=50, used=50), copy("y", "b", size=50, used=60)]
    args = {"now": 100.0, "churn_guard": 5.0, "inflight": {"busy": 1}}
    views = [pod("a", used=100, models=2), pod("b", used=100, models=2)]
    ages = {"a": cache_age(protected, **args), "b": cache_age(evictable_copies, **args)}
    assert pick_pod(views, 50, age=lambda p: ages[p.pod]).pod == "b"
