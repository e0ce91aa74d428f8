"""Router.hit keeps the hot path's cache (name -> model, name -> Route to its sole copy) and
counts hits in the engine's buffer: the cache must follow every change, the counts every hit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.control.records import Record
from gateway.control.router import Miss, Route
from gateway.core.errors import ModelNotFound
from gateway.core.route_key import RouteKey
from tests.core.fakes import FakePod, FakePods
from tests.core.harness import Harness, harness, isvc, settle

NAME = RouteKey("sklearn-mnist", grpc=False)


async def test_a_hit_on_one_copy_carries_the_copy_and_counts_each_request(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    record, _ = await h.registry.apply(isvc())
    await settle()
    first, second = h.router.hit(NAME), h.router.hit(NAME)
    assert isinstance(first, Route) and first is second and first.copy is not None
    assert (first.address, first.model_id, first.fallbacks) == (
        "10.0.0.1:9000",
        record.serving.model_id,
        (),
    )
    assert h.placement.model_requests()[record.serving.model_id] == 2
    assert h.placement.hits == 2


async def test_buffered_hits_are_counted_before_anyone_reads_them_each_at_its_time(
    tmp_path: Path,
) -> None:
    clock = [100.0]
    h = await harness(tmp_path, clock=lambda: clock[0])
    record, _ = await h.registry.apply(isvc())
    await settle()
    route = h.router.hit(NAME)  # counted at once: the route is made
    assert isinstance(route, Route) and route.copy is not None
    placement_generation = h.placement.generation
    for _ in range(3):
        clock[0] += 1.0
        assert h.router.hit(NAME) is route  # kept: only recorded in the hit buffer
    assert h.placement.generation == placement_generation  # recording changes no route
    assert route.copy.routed == 1  # buffered, not counted yet
    clock[0] += 10.0
    requests = h.placement.model_requests()[record.serving.model_id]  # a reader: counted first
    (copy,) = h.placement.snapshot()["pods"][0]["models"]
    assert (requests, copy["requests"], route.copy.routed) == (4, 4, 4)
    assert copy["last_used_seconds_ago"] == pytest.approx(
        10.0
    )  # the last hit's own time, not the reading's
    assert h.placement.hits == 4


async def test_a_full_buffer_is_counted_at_the_next_turn_of_the_event_loop(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    await h.registry.apply(isvc())
    await settle()
    route = h.router.hit(NAME)
    assert isinstance(route, Route) and route.copy is not None
    for _ in range(1500):
        h.router.hit(NAME)
    assert route.copy.routed == 1
    await asyncio.sleep(0)  # nobody read the counts: the buffer asked for a drain when it filled
    assert route.copy.routed == 1501
    for _ in range(5000):  # the event loop does not run: the buffer counts what it cannot hold
        h.router.hit(NAME)
    assert 1501 + 5000 - 2048 <= route.copy.routed < 1501 + 5000


async def test_hits_follow_a_rollout_a_delete_and_a_new_record(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    old, _ = await h.registry.apply(isvc())
    await settle()
    assert h.router.hit(NAME).model_id == old.serving.model_id
    new, _ = await h.registry.apply(isvc(path="v2.joblib"))
    await settle()
    assert (
        h.router.hit(NAME).model_id == new.target.model_id
    )  # the name moved: not the cached old model
    await h.registry.delete("sklearn-mnist")
    with pytest.raises(ModelNotFound):
        h.router.hit(NAME)
    again, _ = await h.registry.apply(isvc())
    await settle()
    route = h.router.hit(NAME)
    assert isinstance(route, Route) and route.model_id == again.serving.model_id


async def on_two_pods(tmp_path: Path) -> tuple[Harness, Record]:
    """The seed's model registered (and loaded once) with two pods to hold copies."""
    h = await harness(
        tmp_path, FakePods(**{"10.0.0.1:9000": FakePod(), "10.0.0.2:9000": FakePod()})
    )
    record, _ = await h.registry.apply(isvc())
    await settle()
    return h, record


async def test_a_second_copy_adds_fallbacks_and_losing_it_brings_the_cached_route_back(
    tmp_path: Path,
) -> None:
    h, record = await on_two_pods(tmp_path)
    sole = h.router.hit(NAME)
    assert await h.placement.ensure_copies(record.serving.model_id, 2) == 2
    both = h.router.hit(NAME)
    assert both is not sole and len(both.fallbacks) == 1
    assert {both.address, *both.fallbacks} == {"10.0.0.1:9000", "10.0.0.2:9000"}
    h.pods.pods[both.fallbacks[0]].down = True
    await h.placement.check_pods()
    assert h.router.hit(NAME).copy is not None  # the one copy left is on the fast path again
    assert h.router.hit(NAME).fallbacks == ()


async def test_a_miss_names_the_model_and_load_routes_to_the_loaded_copy(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    record, _ = await h.registry.apply(isvc())
    await settle()
    pod = h.pods.pods["10.0.0.1:9000"]
    pod.down = True  # the pod goes away, and comes back empty
    await h.placement.check_pods()
    pod.down, pod.loaded = False, {}
    await h.placement.check_pods()
    missed = h.router.hit(NAME)
    assert missed == Miss(record.serving.model_id)
    loads = len(h.pods.loads)
    route = await h.router.load(missed)
    assert (route.address, route.model_id) == ("10.0.0.1:9000", record.serving.model_id)
    assert len(h.pods.loads) == loads + 1 and h.placement.misses == 1
    assert h.router.hit(NAME).copy is not None  # loaded: kept for the name again


async def test_routes_that_are_not_kept_are_one_object_per_pod_model_and_fallbacks(
    tmp_path: Path,
) -> None:
    h, record = await on_two_pods(tmp_path)
    assert await h.placement.ensure_copies(record.serving.model_id, 2) == 2
    routes = [h.router.hit(NAME) for _ in range(20)]  # two copies: the least busy each time
    assert all(isinstance(r, Route) and r.copy is None for r in routes)
    # interned: one object per (pod, fallbacks), so an adapter's memo per Route is reused
    choices = {(r.address, r.fallbacks) for r in routes if isinstance(r, Route)}
    assert len({id(r) for r in routes}) == len(choices)
    server = RouteKey(None, grpc=False)
    assert h.router.hit(server) is h.router.hit(server)
