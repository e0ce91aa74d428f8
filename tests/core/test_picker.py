from __future__ import annotations

from gateway.domain import Copy, CopyState, PodView
from gateway.picker import pick_copy, pick_pod, plan_evictions


def copy(model: str, pod: str, *, size: int = 10, used: float = 0.0, loaded: float = 0.0,
         state: CopyState = CopyState.LOADED) -> Copy:
    return Copy(model, pod, state, size, used, loaded)


def pod(name: str, *, capacity: int = 100, used: int = 0, models: int = 0, healthy: bool = True,
        oldest: float | None = None) -> PodView:
    return PodView(name, capacity, used, models, healthy, oldest)


def test_pick_copy_prefers_fewest_inflight_then_least_recently_used() -> None:
    a, b, c = copy("m", "a", used=5), copy("m", "b", used=1), copy("m", "c", used=3)
    assert pick_copy([a, b, c], {}) is b
    assert pick_copy([a, b, c], {"b": 2, "c": 1}) is a


def test_pick_pod_prefers_room_then_most_free_then_fewest_models() -> None:
    full = pod("full", used=95, models=1)
    roomy = pod("roomy", used=10, models=5)
    roomier = pod("roomier", used=5, models=9)
    assert pick_pod([full, roomy, roomier], 20).pod == "roomier"
    same_free = [pod("x", used=10, models=3), pod("y", used=10, models=1)]
    assert pick_pod(same_free, 20).pod == "y"


def test_pick_pod_when_all_full_takes_the_oldest_cache() -> None:
    pods = [pod("new", used=100, models=2, oldest=50.0), pod("old", used=100, models=2, oldest=10.0)]
    assert pick_pod(pods, 20).pod == "old"


def test_pick_pod_skips_unhealthy_excluded_and_too_small() -> None:
    pods = [pod("down", healthy=False), pod("tried"), pod("small", capacity=10), pod("ok", used=50)]
    assert pick_pod(pods, 20, exclude={"tried"}).pod == "ok"
    assert pick_pod(pods, 200) is None


def test_plan_evictions_lru_first_until_it_fits() -> None:
    view = pod("p", capacity=100, used=90, models=3)
    copies = [copy("new", "p", size=30, used=9), copy("old", "p", size=30, used=1), copy("mid", "p", size=30, used=5)]
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
    assert [c.model_id for c in plan_evictions(view, copies, 40, now=100, churn_guard=5, inflight={})] == ["busy"]
