from __future__ import annotations

import asyncio

import pytest

from gateway.core.domain import ModelState
from gateway.core.errors import (
    LoadFailed,
    ModelFormatError,
    ModelNotFound,
    NoCapacity,
    StoreUnavailable,
    Unavailable,
)
from gateway.core.placement import Placement, PlacementSettings, Solo

from .fakes import FakePod, FakePods, spec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def engine(pods: FakePods, clock: Clock | None = None, **settings: float) -> Placement:
    placement = Placement(pods, PlacementSettings(**settings), clock=clock or Clock())
    for name in pods.pods:
        placement.add_pod(name)
    await placement.check_pods()
    return placement


async def test_lazy_load_then_hit() -> None:
    pods = FakePods(a=FakePod())
    placement = await engine(pods)
    placement.register(spec("m"))
    assert placement.lookup("m") is None
    assert placement.status("m").state is ModelState.PENDING
    assert await placement.ensure_loaded("m") == "a"
    assert placement.lookup("m") == "a"
    assert placement.status("m").state is ModelState.LOADED
    assert pods.loads == [("a", "m")]


async def test_unknown_model() -> None:
    placement = await engine(FakePods(a=FakePod()))
    with pytest.raises(ModelNotFound, match="'nope'"):
        placement.lookup("nope")


async def test_concurrent_first_requests_cause_one_load() -> None:
    pods = FakePods(a=FakePod(), b=FakePod())
    pods.gate = asyncio.Event()
    placement = await engine(pods)
    placement.register(spec("m"))
    waiters = [asyncio.create_task(placement.ensure_loaded("m")) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert placement.status("m").state is ModelState.LOADING
    pods.gate.set()
    addresses = await asyncio.gather(*waiters)
    assert len(set(addresses)) == 1
    assert len(pods.loads) == 1


async def test_a_cancelled_waiter_does_not_cancel_the_load() -> None:
    pods = FakePods(a=FakePod())
    pods.gate = asyncio.Event()
    placement = await engine(pods)
    placement.register(spec("m"))
    first = asyncio.create_task(placement.ensure_loaded("m"))
    await asyncio.sleep(0.01)
    first.cancel()
    second = asyncio.create_task(placement.ensure_loaded("m"))
    pods.gate.set()
    assert await second == "a"
    assert len(pods.loads) == 1


async def test_miss_goes_to_the_pod_with_most_free_space() -> None:
    pods = FakePods(a=FakePod(loaded={"x": 50}), b=FakePod(loaded={"y": 20}))
    placement = await engine(pods)
    for m in ("x", "y", "new"):
        placement.register(spec(m, 50 if m == "x" else 20 if m == "y" else 10))
    await placement.check_pods()
    assert await placement.ensure_loaded("new") == "b"


async def test_failed_load_is_retried_on_other_pods_and_remembered() -> None:
    pods = FakePods(a=FakePod(fail_loads="out of file handles"), b=FakePod(capacity=90))
    placement = await engine(pods)
    placement.register(spec("m"))
    assert await placement.ensure_loaded("m") == "b"  # a has more room, failed, then b
    assert pods.loads == [("a", "m"), ("b", "m")]


async def test_load_fails_after_three_pods_with_every_reason() -> None:
    pods = FakePods(**{n: FakePod(fail_loads=f"broken {n}") for n in "abcd"})
    placement = await engine(pods)
    placement.register(spec("m"))
    with pytest.raises(LoadFailed, match="failed on 3 pod") as info:
        await placement.ensure_loaded("m")
    assert info.value.message.count("broken") == 3
    status = placement.status("m")
    assert status.state is ModelState.FAILED_TO_LOAD and "broken" in status.message
    assert not status.ready


async def test_failure_records_expire() -> None:
    clock = Clock()
    pods = FakePods(a=FakePod(fail_loads="flaky"))
    placement = await engine(pods, clock, failure_expiry=60)
    placement.register(spec("m"))
    with pytest.raises(LoadFailed):
        await placement.ensure_loaded("m")
    with pytest.raises(
        LoadFailed, match="flaky"
    ):  # the only pod is still marked failed, and says why
        await placement.ensure_loaded("m")
    assert len(pods.loads) == 1  # without trying it again
    pods.pods["a"].fail_loads = None
    clock.now += 61
    assert await placement.ensure_loaded("m") == "a"


async def test_unreadable_model_is_a_format_error() -> None:
    placement = await engine(FakePods(a=FakePod(bad_format=True), b=FakePod(bad_format=True)))
    placement.register(spec("m"))
    with pytest.raises(ModelFormatError, match="not a model file"):
        await placement.ensure_loaded("m")


async def test_model_larger_than_every_pod() -> None:
    placement = await engine(FakePods(a=FakePod(capacity=100), b=FakePod(capacity=80)))
    placement.register(spec("huge", 500))
    with pytest.raises(NoCapacity, match="needs 500 bytes; the largest pod holds 100 bytes"):
        await placement.ensure_loaded("huge")


async def test_eviction_of_the_least_recently_used_when_full() -> None:
    clock = Clock()
    pods = FakePods(a=FakePod(capacity=30))
    placement = await engine(pods, clock, churn_guard=5)
    for m in ("m1", "m2", "m3", "m4"):
        placement.register(spec(m))
    for m in ("m1", "m2", "m3"):
        await placement.ensure_loaded(m)
        clock.now += 10
    placement.lookup("m1")  # m1 is now the most recently used
    await placement.ensure_loaded("m4")
    assert pods.unloads == [("a", "m2")]
    assert placement.status("m2").state is ModelState.STANDBY and placement.status("m2").ready


@pytest.mark.parametrize(("half_life", "evicted"), [(600.0, "once"), (0.0, "busy")])
async def test_eviction_keeps_a_much_used_model_over_a_newer_once_used_one(
    half_life: float, evicted: str
) -> None:
    clock = Clock()
    pods = FakePods(a=FakePod(capacity=20))
    placement = await engine(pods, clock, churn_guard=5, eviction_half_life=half_life)
    for m in ("busy", "once", "new"):
        placement.register(spec(m))
    await placement.ensure_loaded("busy")
    for _ in range(7):
        clock.now += 2
        placement.lookup("busy")
    clock.now += 10
    await placement.ensure_loaded("once")
    clock.now += 10
    await placement.ensure_loaded("new")
    assert pods.unloads == [("a", evicted)]  # half-life 0 is plain LRU


async def test_fresh_copies_are_not_evicted() -> None:
    clock = Clock()
    pods = FakePods(a=FakePod(capacity=20))
    placement = await engine(pods, clock, churn_guard=5, room_wait=0)
    for m in ("m1", "m2", "m3"):
        placement.register(spec(m))
    await placement.ensure_loaded("m1")
    await placement.ensure_loaded("m2")
    with pytest.raises(Unavailable, match="no pod can make room"):
        await placement.ensure_loaded("m3")
    assert pods.unloads == []


async def test_dead_pod_loses_its_copies_and_the_model_loads_elsewhere() -> None:
    pods = FakePods(a=FakePod(), b=FakePod(capacity=50))
    placement = await engine(pods)
    placement.register(spec("m"))
    assert await placement.ensure_loaded("m") == "a"
    pods.pods["a"].down = True
    await placement.check_pods()
    assert placement.lookup("m") is None
    assert await placement.ensure_loaded("m") == "b"


async def test_a_pod_that_stops_answering_is_tried_last_then_taken_for_dead() -> None:
    """Busy is not dead: a pod connected but silent keeps its copies for
    ``unresponsive_checks`` checks, ranked after the copies that answer; a refused
    connection loses them at once."""
    pods = FakePods(a=FakePod(), b=FakePod())
    placement = await engine(pods)
    placement.register(spec("m"))
    assert await placement.ensure_copies("m", 2) == 2
    routed = placement.route("m")
    assert routed is not None
    first, (second,) = routed
    pods.inflight[second] = {"m": 5}  # busier: without a hung pod, the first copy serves
    pods.pods[first].hung = True
    for _ in range(PlacementSettings().unresponsive_checks - 1):
        await placement.check_pods()
        assert placement.route("m") == (second, (first,))  # kept, but tried last
    pods.pods[first].hung = False
    await placement.check_pods()  # it answers again: ranked by its load as before
    assert placement.route("m") == (first, (second,))
    pods.pods[first].hung = True
    for _ in range(PlacementSettings().unresponsive_checks):
        await placement.check_pods()
    assert placement.route("m") == (second, ())  # dead: its copy is gone
    pods.pods[second].down = True
    await placement.check_pods()  # refused: gone at the first check
    assert placement.route("m") is None


async def test_a_broken_connection_is_checked_at_once_not_at_the_interval() -> None:
    pods = FakePods(a=FakePod(), b=FakePod())
    placement = await engine(pods, health_interval=3600.0)
    placement.register(spec("m"))
    holder = await placement.ensure_loaded("m")
    watching = asyncio.create_task(placement.watch_pods())
    try:
        await asyncio.sleep(0)  # the first round of checks
        pods.pods[holder].down = True
        for callback in pods.disconnect_callbacks:  # as the pod client does on a broken channel
            callback(holder)
        for _ in range(100):  # an hour's interval: only the wake-up can find it (bounded)
            if placement.lookup("m") is None:
                break
            await asyncio.sleep(0.01)
        assert placement.lookup("m") is None
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


async def test_a_restarted_gateway_adopts_what_pods_hold_and_unloads_strays() -> None:
    pods = FakePods(a=FakePod(loaded={"m": 10, "stray": 10}))
    clock = Clock()
    placement = Placement(pods, PlacementSettings(stranger_grace=5), clock=clock)
    placement.register(spec("m"))
    placement.add_pod("a")
    await placement.check_pods()
    assert placement.lookup("m") == "a"
    clock.now += 1
    placement.tick()  # first seen unregistered
    clock.now += 4
    placement.tick()
    await asyncio.sleep(0.01)
    assert pods.unloads == []  # a model registered a moment later on another replica is not a stray
    clock.now += 2
    placement.tick()
    await asyncio.sleep(0.01)
    assert pods.unloads == [("a", "stray")]
    assert pods.loads == []


async def test_a_replica_that_is_not_the_leader_leaves_strays_and_scaling_to_the_leader() -> None:
    class Follower(Solo):
        def leader(self) -> bool:
            return False

    pods = FakePods(a=FakePod(loaded={"stray": 10}))
    clock = Clock()
    placement = Placement(
        pods, PlacementSettings(stranger_grace=0), clock=clock, coordinator=Follower()
    )
    placement.add_pod("a")
    await placement.check_pods()
    clock.now += 1
    placement.tick()
    await asyncio.sleep(0)
    assert pods.unloads == []


async def test_a_load_fails_with_unavailable_naming_the_store_when_it_cannot_be_claimed() -> None:
    class StoreDown(Solo):
        async def claim(self, model_id: str) -> bool:
            raise StoreUnavailable("etcd at 127.0.0.1:2379 is unavailable: UNAVAILABLE")

    pods = FakePods(a=FakePod())
    placement = Placement(pods, coordinator=StoreDown())
    placement.register(spec("m"))
    placement.add_pod("a")
    await placement.check_pods()
    with pytest.raises(Unavailable, match="etcd at 127.0.0.1:2379 is unavailable"):
        await placement.ensure_loaded("m")
    assert pods.loads == []
    await asyncio.sleep(0)  # the load task's done callback
    assert placement.status("m").state is ModelState.PENDING  # not a failure of the model


async def test_a_load_another_replica_claimed_waits_for_its_copy_instead_of_loading() -> None:
    class Claimed(Solo):
        async def claim(self, model_id: str) -> bool:
            return False

    pods = FakePods(a=FakePod())
    placement = Placement(pods, coordinator=Claimed())
    placement.register(spec("m"))
    placement.add_pod("a")
    await placement.check_pods()
    waiting = asyncio.create_task(placement.ensure_loaded("m"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    placement.observe("a", {"m": 10})  # the other replica's load shows up in the pod's registration
    assert await asyncio.wait_for(waiting, 2) == "a"
    assert pods.loads == []


async def test_room_two_replicas_planned_at_once_goes_to_one_and_the_other_loads_elsewhere() -> (
    None
):
    # Replicas a and b share the pods but learn of each other's loads only when they finish.
    pods = FakePods(p=FakePod(capacity=100), q=FakePod(capacity=80))
    pods.gate = asyncio.Event()
    a, b = await engine(pods), await engine(pods)
    a.register(spec("m1", 60))
    b.register(spec("m2", 60))
    first = asyncio.create_task(a.ensure_loaded("m1"))
    await asyncio.sleep(0.01)  # m1 is loading on p, the emptiest pod
    second = asyncio.create_task(b.ensure_loaded("m2"))  # b also sees p empty
    await asyncio.sleep(0.01)
    pods.gate.set()
    assert await first == "p" and await second == "q"
    assert pods.loads == [("p", "m1"), ("p", "m2"), ("q", "m2")]  # p refused m2: 60 + 60 > 100
    assert pods.pods["p"].loaded == {"m1": 60} and pods.pods["q"].loaded == {"m2": 60}
    assert (
        b.status("m2").state is ModelState.LOADED and not b.status("m2").message
    )  # no failure recorded


async def test_unregister_unloads_every_copy() -> None:
    pods = FakePods(a=FakePod())
    placement = await engine(pods)
    placement.register(spec("m"))
    await placement.ensure_loaded("m")
    await placement.unregister("m")
    assert pods.unloads == [("a", "m")]
    with pytest.raises(ModelNotFound):
        placement.lookup("m")


async def test_no_pods() -> None:
    placement = await engine(FakePods(a=FakePod(down=True)))
    placement.register(spec("m"))
    with pytest.raises(Unavailable, match="no runtime pod"):
        await placement.ensure_loaded("m")
    with pytest.raises(Unavailable):
        placement.any_healthy_pod()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def loaded(
        self, model_id: str, pod: str, seconds: float, queued_seconds: float, size: int
    ) -> None:
        self.events.append(("loaded", model_id, pod))

    def load_failed(self, model_id: str, pod: str, reason: str) -> None:
        self.events.append(("failed", model_id, pod))

    def evicted(self, model_id: str, pod: str, reason: str, idle_seconds: float) -> None:
        self.events.append(("evicted", model_id, pod, reason))

    def waited(self, model_id: str, seconds: float) -> None:
        self.events.append(("waited", model_id))


async def test_a_load_a_request_waits_for_goes_before_proactive_ones() -> None:
    pods = FakePods(a=FakePod(capacity=1000))
    pods.gate = asyncio.Event()
    placement = await engine(pods)
    for m in ("first", "proactive-1", "proactive-2", "needed"):
        placement.register(spec(m))
    placement.load_in_background("first")
    await asyncio.sleep(0.01)  # "first" holds the pod's only load slot
    placement.load_in_background("proactive-1")
    placement.load_in_background("proactive-2")
    await asyncio.sleep(0.01)
    needed = asyncio.create_task(placement.ensure_loaded("needed"))
    await asyncio.sleep(0.01)
    pods.gate.set()
    await needed
    for _ in range(5):
        await asyncio.sleep(0.01)
    assert [m for _, m in pods.loads] == ["first", "needed", "proactive-1", "proactive-2"]


async def test_a_request_promotes_a_queued_proactive_load() -> None:
    pods = FakePods(a=FakePod(capacity=1000))
    pods.gate = asyncio.Event()
    placement = await engine(pods)
    for m in ("first", "p1", "p2"):
        placement.register(spec(m))
        placement.load_in_background(m)
        await asyncio.sleep(0.01)
    waiter = asyncio.create_task(placement.ensure_loaded("p2"))  # a request now needs p2
    await asyncio.sleep(0.01)
    pods.gate.set()
    await waiter
    for _ in range(5):
        await asyncio.sleep(0.01)
    assert [m for _, m in pods.loads] == ["first", "p2", "p1"]


async def test_the_table_shows_requests_in_flight_as_the_pod_reports_them() -> None:
    pods = FakePods(a=FakePod(loaded={"m": 10}))
    placement = Placement(pods)
    placement.register(spec("m"))
    placement.add_pod("a")
    await placement.check_pods()

    def shown() -> int:
        (copy,) = placement.snapshot()["pods"][0]["models"]
        return copy["in_flight"]

    placement.route("m")  # answered at once: the pod never counts it in flight
    assert shown() == 0
    pods.inflight = {"a": {"m": 3}}
    await placement.check_pods()
    assert shown() == 3


async def test_hits_go_to_the_copy_with_fewest_requests_in_flight() -> None:
    pods = FakePods(a=FakePod(loaded={"m": 10}), b=FakePod(loaded={"m": 10}))
    pods.inflight = {"a": {"m": 5}, "b": {"m": 1}}
    placement = Placement(pods)
    placement.register(spec("m"))
    for p in ("a", "b"):
        placement.add_pod(p)
    await placement.check_pods()
    assert placement.lookup("m") == "b"


async def test_hits_spread_over_copies_between_status_reports() -> None:
    pods = FakePods(a=FakePod(loaded={"m": 10}), b=FakePod(loaded={"m": 10}))
    placement = Placement(pods)
    placement.register(spec("m"))
    for p in ("a", "b"):
        placement.add_pod(p)
    await placement.check_pods()
    chosen = [placement.lookup("m") for _ in range(10)]
    assert chosen.count("a") == chosen.count("b") == 5


async def test_a_copy_with_requests_in_flight_is_never_evicted() -> None:
    clock = Clock()
    pods = FakePods(a=FakePod(capacity=20))
    placement = await engine(pods, clock, churn_guard=5)
    for m in ("busy", "idle", "new"):
        placement.register(spec(m))
    await placement.ensure_loaded("busy")
    clock.now += 1
    await placement.ensure_loaded("idle")
    clock.now += 10
    pods.inflight = {"a": {"busy": 2}}
    await placement.check_pods()
    await placement.ensure_loaded("new")
    assert pods.unloads == [("a", "idle")]  # "busy" was older, but serving


async def test_a_copy_just_routed_to_is_not_evicted_either() -> None:
    clock = Clock()
    pods = FakePods(a=FakePod(capacity=20))
    placement = await engine(pods, clock, churn_guard=5, recent_use_guard=1, room_wait=0)
    for m in ("m1", "m2", "m3"):
        placement.register(spec(m))
    await placement.ensure_loaded("m1")
    await placement.ensure_loaded("m2")
    clock.now += 10
    placement.lookup("m1")
    placement.lookup("m2")  # both requests may still be on their way to the pod
    with pytest.raises(Unavailable, match="no pod can make room"):
        await placement.ensure_loaded("m3")
    clock.now += 2
    await placement.ensure_loaded("m3")
    assert pods.unloads == [("a", "m1")]


async def test_traffic_above_the_threshold_adds_a_copy_on_another_pod() -> None:
    clock = Clock()
    pods = FakePods(a=FakePod(), b=FakePod(), c=FakePod())
    placement = await engine(pods, clock, copy_rate_threshold=50, scale_ticks=2)
    placement.register(spec("hot"))
    placement.register(spec("cold"))
    first = await placement.ensure_loaded("hot")
    await placement.ensure_loaded("cold")
    for _ in range(3):
        for _ in range(200):  # 200 requests per second
            placement.lookup("hot")
        placement.lookup("cold")
        clock.now += 1
        placement.tick()
        await asyncio.sleep(0.01)
    assert placement.status("hot").copies == 2
    assert placement.status("cold").copies == 1
    second = [p for p, m in pods.loads if m == "hot" and p != first]
    assert second and placement.snapshot()["models"]["hot"]["copies"] == sorted([first, second[0]])


async def test_a_pod_with_a_long_load_queue_is_skipped() -> None:
    pods = FakePods(a=FakePod(capacity=1000), b=FakePod(capacity=100))
    pods.gate = asyncio.Event()
    placement = await engine(pods, max_queue_gap=2)
    # "a" has the most free space, so loads go there until its queue is more
    # than 2 longer than b's: q0-q2 to a, q3 to b, q4 to a, then "next" to b.
    for m in ("q0", "q1", "q2", "q3", "q4", "next"):
        placement.register(spec(m))
        placement.load_in_background(m)
        await asyncio.sleep(0.01)
    queues = {p["pod"]: p["load_queue"] for p in placement.snapshot()["pods"]}
    assert queues == {"a": {"running": 1, "waiting": 3}, "b": {"running": 1, "waiting": 1}}
    assert [m for p, m in pods.loads if p == "b"] == ["q3"]  # "next" waits behind it on b
    pods.gate.set()
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert sorted(m for p, m in pods.loads if p == "b") == ["next", "q3"]


async def test_ensure_copies_loads_as_many_as_asked_and_pods_allow() -> None:
    pods = FakePods(a=FakePod(), b=FakePod(), c=FakePod())
    placement = await engine(pods)
    placement.register(spec("m"))
    assert await placement.ensure_copies("m", 2) == 2
    assert await placement.ensure_copies("m", 5) == 3  # one per pod at most


async def test_events_report_loads_failures_and_evictions() -> None:
    clock = Clock()
    recorder = Recorder()
    pods = FakePods(a=FakePod(capacity=10), b=FakePod(capacity=10, fail_loads="broken"))
    placement = Placement(
        pods, PlacementSettings(churn_guard=0, recent_use_guard=0), clock=clock, events=recorder
    )
    for p in ("a", "b"):
        placement.add_pod(p)
    await placement.check_pods()
    for m in ("m1", "m2"):
        placement.register(spec(m))
    await placement.ensure_loaded("m1")
    clock.now += 1
    await placement.ensure_loaded("m2")
    assert ("loaded", "m1", "a") in recorder.events
    assert ("failed", "m2", "b") in recorder.events
    assert ("evicted", "m1", "a", "room") in recorder.events
    assert placement.hits == 0 and placement.misses == 2


async def test_a_request_waits_for_a_fresh_copy_to_age_out_instead_of_failing() -> None:
    clock = Clock()
    pods = FakePods(a=FakePod(capacity=20))
    placement = await engine(pods, clock, churn_guard=5, recent_use_guard=0, room_wait=30)
    for m in ("m1", "m2", "m3"):
        placement.register(spec(m))
    await placement.ensure_loaded("m1")
    await placement.ensure_loaded("m2")
    waiting = asyncio.create_task(placement.ensure_loaded("m3"))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # both copies are fresh: it waits
    clock.now += 6  # the churn guard passes
    assert await asyncio.wait_for(waiting, 5) == "a"
    assert pods.unloads == [("a", "m1")]


async def test_a_proactive_load_without_room_defers_and_the_model_stays_ready() -> None:
    pods = FakePods(a=FakePod(capacity=10))
    placement = await engine(pods, churn_guard=5)
    placement.register(spec("m1"))
    placement.register(spec("m2"))
    await placement.ensure_loaded("m1")
    placement.load_in_background("m2")
    for _ in range(5):
        await asyncio.sleep(0.01)
    status = placement.status("m2")
    assert status.state is ModelState.STANDBY and status.ready and status.message == ""


async def test_a_fresh_registration_loads_into_free_space_only() -> None:
    clock = Clock()
    pods = FakePods(a=FakePod(capacity=20))
    placement = await engine(pods, clock, churn_guard=0, recent_use_guard=0)
    for m in ("m1", "m2", "m3"):
        placement.register(spec(m))
        placement.load_in_background(m)
        for _ in range(5):
            await asyncio.sleep(0.01)
        clock.now += 10
    assert [m for _, m in pods.loads] == ["m1", "m2"] and pods.unloads == []
    assert placement.status("m3").ready  # deferred, not failed
    await placement.ensure_loaded("m3")  # a request may evict
    assert pods.unloads == [("a", "m1")]


async def test_an_extra_copy_of_a_model_gone_quiet_is_the_first_to_go() -> None:
    clock = Clock()
    pods = FakePods(a=FakePod(capacity=20), b=FakePod(capacity=20))
    placement = await engine(
        pods, clock, churn_guard=0, recent_use_guard=0, quiet_rate=1, eviction_half_life=0
    )
    for m in ("was-hot", "steady", "other", "new"):
        placement.register(spec(m))
    assert await placement.ensure_copies("was-hot", 2) == 2  # a copy on a and on b
    await placement.ensure_loaded("steady")
    await placement.ensure_loaded("other")  # both pods are full now
    clock.now += 100
    placement.tick()  # every rate is ~0 now
    placement.lookup("was-hot")
    placement.lookup("was-hot")  # both its copies were used last: plain LRU would keep them
    await placement.ensure_loaded("new")
    assert [m for _, m in pods.unloads] == ["was-hot"]  # the quiet model's extra copy went first
    assert placement.status("was-hot").copies == 1 and placement.status("steady").copies == 1


async def test_failure_records_are_shared_with_other_replicas_and_expired_by_the_leader() -> None:
    class Recording(Solo):
        def __init__(self) -> None:
            self.told: list[tuple[str, str, str]] = []

        async def failed(self, model_id: str, pod: str, error: LoadFailed) -> None:
            self.told.append(("failed", model_id, pod))

        async def forgive(self, model_id: str, pod: str) -> None:
            self.told.append(("forgive", model_id, pod))

    # This replica learns that "a" failed the model on another replica: it loads on "b" only.
    pods = FakePods(a=FakePod(), b=FakePod())
    clock = Clock()
    coordinator = Recording()
    placement = Placement(
        pods, PlacementSettings(failure_expiry=60), clock=clock, coordinator=coordinator
    )
    placement.register(spec("m"))
    placement.add_pod("a")
    placement.add_pod("b")
    await placement.check_pods()
    placement.note_failure("m", "a", 5.0, LoadFailed("bad file on a"))
    assert await placement.ensure_loaded("m") == "b"
    assert pods.loads == [("b", "m")]

    # Its own failure is told to the others; the leader forgives it once expired.
    pods.pods["a"].fail_loads = pods.pods["b"].fail_loads = "disk full"
    placement.register(spec("n"))
    with pytest.raises(LoadFailed):
        await placement.ensure_loaded("n")
    await asyncio.sleep(0)
    assert {("failed", "n", "a"), ("failed", "n", "b")} <= set(coordinator.told)
    clock.now += 61
    placement.tick()
    await asyncio.sleep(0)
    assert {("forgive", "m", "a"), ("forgive", "n", "b")} <= set(coordinator.told)
    assert [m["state"] for pod in placement.snapshot()["pods"] for m in pod["models"]] == ["LOADED"]


async def test_a_pod_that_registers_it_cannot_serve_leaves_the_pool_at_once() -> None:
    """An MLServer pod whose MLServer died says so in its registration: its copies are dropped
    and the next load goes to another pod, before any health check; a check that finds it
    ready again brings it back."""
    pods = FakePods(a=FakePod(), b=FakePod())
    placement = Placement(pods)
    placement.register(spec("m"))
    placement.add_pod("a")
    placement.add_pod("b")
    await placement.check_pods()
    first = await placement.ensure_loaded("m")
    await asyncio.sleep(0)  # the load's done callback
    other = "b" if first == "a" else "a"
    pods.pods[first].loaded.clear()  # its MLServer died with the model
    placement.observe(first, {}, serving=False)
    assert placement.route("m") is None
    assert await placement.ensure_loaded("m") == other
    await placement.check_pods()  # it answers ready again (restarted, empty)
    assert next(p for p in placement.snapshot()["pods"] if p["pod"] == first)["healthy"]


async def test_a_model_that_fails_for_itself_is_not_tried_on_other_pods() -> None:
    """A file no runtime can read fails alike on every pod (they read the same storage): one
    attempt, not one per pod, each evicting copies to make room for it first."""
    pods = FakePods(a=FakePod(bad_format=True), b=FakePod(bad_format=True))
    placement = Placement(pods)
    placement.register(spec("m"))
    placement.add_pod("a")
    placement.add_pod("b")
    await placement.check_pods()
    with pytest.raises(ModelFormatError, match="failed on 1 pod"):
        await placement.ensure_loaded("m")
    assert len(pods.loads) == 1
