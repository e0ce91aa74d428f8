"""Adapters in the placement engine: ModelMesh's cache one level down. An adapter (a spec
with a ``base``) loads on its first request onto a pod holding its base, each pod keeps an
LRU of adapters under its adapter room, and a base goes only with its adapters."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.core import picker
from gateway.core.domain import Copy, CopyState, ModelState
from gateway.core.errors import LoadFailed, ModelNotFound, NoCapacity
from gateway.core.placement import Placement

from .fakes import FakePod, FakePods, adapter, spec
from .test_placement import Clock, engine


def lm_pod(**fields: Any) -> FakePod:
    """A pod that serves the base (a sklearn stand-in) and lora adapters."""
    return FakePod(model_types=("sklearn", "lora"), **fields)


async def lm_engine(pods: FakePods, clock: Clock) -> Placement:
    """An engine with the base model registered before it first sees the pods (which adopt
    the copies they hold)."""
    placement = Placement(pods, clock=clock)
    placement.register(spec("base", 50))
    for name in pods.pods:
        placement.add_pod(name)
    await placement.check_pods()
    return placement


async def test_an_adapter_loads_on_its_first_request_onto_a_pod_holding_its_base() -> None:
    clock = Clock()
    pods = FakePods(a=lm_pod(max_adapters=4), b=lm_pod(max_adapters=4))
    placement = await engine(pods, clock)
    placement.register(spec("base", 50))
    placement.register(adapter("counting", "base"))
    placement.load_in_background("counting")  # what a registration does: nothing, for adapters
    await asyncio.sleep(0)
    assert pods.loads == [] and placement.status("counting").state is ModelState.STANDBY
    holder = await placement.ensure_loaded("counting")
    # the base first (no pod held it), then the adapter on the same pod
    assert pods.loads == [(holder, "base"), (holder, "counting")]
    assert pods.pods[holder].adapters == {"counting": "base"}
    clock.now += 1
    assert placement.lookup("counting") == holder  # affinity: the holder serves it, no load
    assert len(pods.loads) == 2
    # an adapter does not take the base's model room
    (pod,) = [p for p in placement.snapshot()["pods"] if p["pod"] == holder]  # type: ignore[union-attr]
    assert pod["used_bytes"] == 50 and pod["adapters"]["held"] == 1


async def test_only_pods_holding_the_base_take_its_adapters() -> None:
    clock = Clock()
    pods = FakePods(
        a=lm_pod(max_adapters=4), b=lm_pod(max_adapters=4, loaded={"base": 50}), c=lm_pod()
    )
    placement = await lm_engine(pods, clock)
    for name in ("x", "y", "z"):
        placement.register(adapter(name, "base"))
        assert await placement.ensure_loaded(name) == "b"  # a has more room, but no base
    # a second copy of a hot adapter goes only where the base is: none other here
    assert await placement.ensure_copies("x", 2) == 1
    await placement.ensure_loaded("base")
    placement.register(spec("base2", 50))
    pods.pods["a"].loaded["base"] = 50
    await placement.check_pods()
    placement.observe("a", pods.pods["a"].loaded)
    assert await placement.ensure_copies("x", 2) == 2
    assert {p for p, m in pods.loads if m == "x"} == {"a", "b"}


async def test_the_least_recently_used_adapter_is_evicted_first() -> None:
    clock = Clock()
    pods = FakePods(a=lm_pod(max_adapters=2))
    placement = await lm_engine(pods, clock)
    for name in ("a1", "a2", "a3"):
        placement.register(adapter(name, "base"))
    await placement.ensure_loaded("a1")
    clock.now += 5
    await placement.ensure_loaded("a2")
    clock.now += 5
    placement.lookup("a1")  # a1 is used again: a2 is now the least recently used
    clock.now += 5
    await placement.ensure_loaded("a3")
    assert pods.unloads == [("a", "a2")]
    assert sorted(pods.pods["a"].adapters) == ["a1", "a3"]
    assert placement.status("a2").state is ModelState.STANDBY  # loads again when asked
    assert placement.status("base").state is ModelState.LOADED


async def test_adapter_room_counts_bytes_too() -> None:
    clock = Clock()
    pods = FakePods(a=lm_pod(max_adapters=8, adapter_capacity=10))
    placement = await lm_engine(pods, clock)
    placement.register(adapter("small", "base", 4))
    placement.register(adapter("large", "base", 8))
    await placement.ensure_loaded("small")
    clock.now += 5
    await placement.ensure_loaded("large")  # 4 + 8 > 10: small goes
    assert pods.unloads == [("a", "small")]


async def test_a_base_in_use_by_an_adapter_is_not_evicted_and_goes_with_its_adapters() -> None:
    clock = Clock()
    pods = FakePods(a=lm_pod(capacity=100, max_adapters=2))
    placement = await lm_engine(pods, clock)
    placement.register(adapter("tuned", "base"))
    placement.register(spec("other", 40))
    placement.register(spec("big", 50))
    await placement.ensure_loaded("tuned")  # base (50) and the adapter
    clock.now += 5
    await placement.ensure_loaded("other")  # 90 of 100
    clock.now += 5
    placement.lookup("other")  # the base is now the least recently used model...
    pods.inflight["a"] = {"tuned": 1}  # ...but a request to its adapter is in flight
    await placement.check_pods()
    clock.now += 10
    await placement.ensure_loaded("big")  # room for 50: "other" goes, not the busy base
    assert pods.unloads == [("a", "other")]
    pods.inflight["a"] = {}
    await placement.check_pods()
    clock.now += 10
    placement.lookup("big")
    clock.now += 5
    placement.register(spec("huge", 90))
    await placement.ensure_loaded("huge")  # everything goes; the base's adapter with it
    assert ("a", "base") in pods.unloads and "tuned" not in pods.pods["a"].loaded
    assert placement.status("tuned").state is ModelState.STANDBY
    assert "tuned" not in [c["model_id"] for c in placement.snapshot()["pods"][0]["models"]]  # type: ignore[index]


async def test_concurrent_first_requests_for_an_adapter_load_it_once() -> None:
    pods = FakePods(a=lm_pod(max_adapters=4, loaded={"base": 50}))
    placement = await lm_engine(pods, Clock())
    placement.register(adapter("tuned", "base"))
    pods.gate = asyncio.Event()
    waiters = [asyncio.create_task(placement.ensure_loaded("tuned")) for _ in range(10)]
    await asyncio.sleep(0.01)
    pods.gate.set()
    assert set(await asyncio.gather(*waiters)) == {"a"}
    assert pods.loads == [("a", "tuned")]


async def test_the_pod_is_told_the_base_models_concrete_id() -> None:
    pods = FakePods(a=lm_pod(max_adapters=4))
    sent: list[str] = []
    load = pods.load

    async def spy(address, model, timeout, expected):  # type: ignore[no-untyped-def]
        sent.append(model.key)
        return await load(address, model, timeout, expected)

    pods.load = spy  # type: ignore[method-assign]
    placement = await engine(pods, Clock())
    placement.register(spec("base__isvc-1", 50))
    placement.resolve_base = {"base": "base__isvc-1"}.__getitem__
    placement.register(adapter("tuned", "base"))
    await placement.ensure_loaded("tuned")
    assert json.loads(sent[-1]) == {"base_model_id": "base__isvc-1"}


async def test_an_adapter_whose_base_is_missing_or_broken_fails_clearly() -> None:
    pods = FakePods(a=lm_pod(max_adapters=4, fail_loads="the weights are truncated"))
    placement = await engine(pods, Clock())
    placement.register(adapter("orphan", "nothing"))
    with pytest.raises(ModelNotFound, match="names base model 'nothing', which is not registered"):
        await placement.ensure_loaded("orphan")
    placement.register(spec("base", 50))
    placement.register(adapter("tuned", "base"))
    with pytest.raises(LoadFailed, match="base model 'base' cannot be loaded: .*truncated"):
        await placement.ensure_loaded("tuned")
    assert placement.status("tuned").state is ModelState.FAILED_TO_LOAD


async def test_a_pod_without_adapter_room_takes_none() -> None:
    pods = FakePods(a=lm_pod(loaded={"base": 50}))  # max_adapters 0
    placement = await lm_engine(pods, Clock())
    placement.register(adapter("tuned", "base"))
    with pytest.raises(NoCapacity, match="no pod that holds base model 'base' takes adapters"):
        await placement.ensure_loaded("tuned")
    assert pods.loads == []


def _copy(model_id: str, last_used: float, size: int = 1) -> Copy:
    return Copy(model_id, "a", CopyState.LOADED, size, last_used, 0.0)


def test_the_adapter_plan_takes_the_least_recently_used_until_count_and_bytes_fit() -> None:
    held = [_copy("old", 1), _copy("new", 3), _copy("mid", 2, size=5)]
    plan = picker.plan_adapter_evictions
    common = {"now": 100.0, "churn_guard": 1.0, "inflight": {}}
    assert plan(held, 4, 100, 1, **common) == []  # room already
    assert [c.model_id for c in plan(held, 3, 100, 1, **common) or []] == ["old"]
    assert [c.model_id for c in plan(held, 3, 7, 2, **common) or []] == ["old", "mid"]
    assert [
        c.model_id for c in plan(held, 3, 100, 1, **{**common, "inflight": {"old": 1}}) or []
    ] == ["mid"]
    assert plan(held, 0, 100, 1, **common) is None  # no room for adapters at all
    assert plan(held, 4, 100, 101, **common) is None  # larger than the whole room
    assert plan(held, 1, 100, 1, **{**common, "inflight": {"old": 1, "mid": 1, "new": 1}}) is None


async def test_adapters_that_fill_the_bases_pods_spread_it_to_a_pod_with_room() -> None:
    clock = Clock()
    pods = FakePods(a=lm_pod(max_adapters=1, loaded={"base": 50}), b=lm_pod(max_adapters=1))
    placement = await lm_engine(pods, clock)
    for name in ("x", "y"):
        placement.register(adapter(name, "base"))
    assert await placement.ensure_loaded("x") == "a"
    clock.now += 5
    # a's adapter room is full: the base gets a copy on b (free room, nothing evicted)
    assert await placement.ensure_loaded("y") == "b"
    assert pods.loads == [("a", "x"), ("b", "base"), ("b", "y")] and pods.unloads == []
    placement.register(adapter("z", "base"))
    clock.now += 5
    # every pod holds the base now: the least recently used adapter (x) goes
    assert await placement.ensure_loaded("z") == "a"
    assert pods.unloads == [("a", "x")]


async def test_a_restarted_gateway_adopts_adapters_under_their_base() -> None:
    """Pods report what they hold in any order: an adapter listed before its base is still
    tied to it (a use of the adapter protects the base)."""
    pods = FakePods(a=lm_pod(max_adapters=4, loaded={"tuned": 1, "base": 50}))
    pods.pods["a"].adapters["tuned"] = "base"
    placement = Placement(pods, clock=Clock())
    placement.register(adapter("tuned", "base"))
    placement.register(spec("base", 50))
    placement.add_pod("a")
    await placement.check_pods()
    (pod,) = placement.snapshot()["pods"]  # type: ignore[misc]
    tied = {m["model_id"]: m.get("adapter_of") for m in pod["models"]}
    assert tied == {"tuned": "base", "base": None}


async def test_an_adapter_with_a_queue_gets_a_copy_on_another_pod_with_its_base() -> None:
    """A pod generates one request at a time per base: requests waiting in flight on the
    adapter's only pod call for a copy elsewhere (the base goes there first)."""
    clock = Clock()
    pods = FakePods(a=lm_pod(max_adapters=4), b=lm_pod(max_adapters=4))
    placement = await lm_engine(pods, clock)
    placement.register(adapter("tuned", "base"))
    holder = await placement.ensure_loaded("tuned")
    other = "b" if holder == "a" else "a"
    pods.inflight[holder] = {"tuned": 1}  # one at a time: no queue, no copy
    for _ in range(4):
        clock.now += 1
        await placement.check_pods()
        placement.tick()
    await asyncio.sleep(0)
    assert "tuned" not in pods.pods[other].loaded
    pods.inflight[holder] = {"tuned": 3}  # a queue, for 3 ticks in a row
    for _ in range(3):
        clock.now += 1
        await placement.check_pods()
        placement.tick()
    for _ in range(10):
        await asyncio.sleep(0)
    assert pods.pods[other].adapters == {"tuned": "base"}
    assert (other, "base") in pods.loads  # the base went first
