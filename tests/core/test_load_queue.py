from __future__ import annotations

import asyncio

from gateway.core.load_queue import LoadQueue


async def hold(
    queue: LoadQueue, model: str, urgent: bool, order: list[str], release: asyncio.Event
) -> None:
    async with queue.slot(model, urgent=urgent):
        order.append(model)
        await release.wait()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_at_most_limit_run_and_urgent_loads_go_first() -> None:
    queue, order, release = LoadQueue(1), [], asyncio.Event()
    tasks = [asyncio.create_task(hold(queue, "running", False, order, release))]
    await settle()
    for name, urgent in (("proactive-1", False), ("needed", True), ("proactive-2", False)):
        tasks.append(asyncio.create_task(hold(queue, name, urgent, order, release)))
        await settle()
    assert order == ["running"] and (queue.running, queue.waiting) == (1, 3)
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["running", "needed", "proactive-1", "proactive-2"]
    assert len(queue) == 0


async def test_a_queued_proactive_load_is_promoted_when_a_request_needs_it() -> None:
    queue, order, release = LoadQueue(1), [], asyncio.Event()
    tasks = [asyncio.create_task(hold(queue, "running", False, order, release))]
    await settle()
    for name in ("a", "b", "c"):
        tasks.append(asyncio.create_task(hold(queue, name, False, order, release)))
        await settle()
    queue.promote("c")
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["running", "c", "a", "b"]


async def test_limit_two_runs_two_at_once() -> None:
    queue, order, release = LoadQueue(2), [], asyncio.Event()
    tasks = [asyncio.create_task(hold(queue, m, False, order, release)) for m in "abc"]
    await settle()
    assert order == ["a", "b"]
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c"]


async def test_a_cancelled_waiter_gives_up_its_place_and_never_leaks_a_slot() -> None:
    queue, order, release = LoadQueue(1), [], asyncio.Event()
    first = asyncio.create_task(hold(queue, "first", False, order, release))
    await settle()
    gone = asyncio.create_task(hold(queue, "gone", True, order, release))
    later = asyncio.create_task(hold(queue, "later", False, order, release))
    await settle()
    gone.cancel()
    release.set()
    await asyncio.gather(first, later)
    assert order == ["first", "later"] and len(queue) == 0


async def test_cancelled_just_after_being_granted_passes_the_slot_on() -> None:
    queue, order, release = LoadQueue(1), [], asyncio.Event()
    first = asyncio.create_task(hold(queue, "first", False, order, release))
    await settle()
    unlucky = asyncio.create_task(hold(queue, "unlucky", False, order, release))
    after = asyncio.create_task(hold(queue, "after", False, order, release))
    await settle()
    release.set()
    await asyncio.sleep(0)  # first leaves and grants unlucky's future ...
    unlucky.cancel()  # ... which is cancelled before it runs
    await asyncio.gather(first, after, unlucky, return_exceptions=True)
    assert "after" in order and len(queue) == 0
