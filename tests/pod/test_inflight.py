"""Requests counted per model, and the graceful unload that waits for them: no sockets.

Requests are held in flight by the fake runtime's ``block`` option and released
by its ``gate``: handshakes, not timing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from gateway.core.errors import InvalidInput, ModelNotFound
from gateway.pod.model import InferenceRequest, ModelConfig, Tensor
from gateway.pod.repository import LoadedModel, ModelRepository
from gateway.pod.runtimes import RuntimeRegistry

from .fakes import FakeModel, fake_runtime, key, until

REQUEST = InferenceRequest((Tensor.of("x", np.array([1.0, 2.0], np.float32)),))
BAD = InferenceRequest((Tensor.of("x", np.array([1], np.int32)),))


def _repo(fake: type[FakeModel], **kwargs: float) -> ModelRepository:
    return ModelRepository(RuntimeRegistry({"fake": fake}), **kwargs)  # type: ignore[arg-type]


def _config(model_id: str, model_key: str = "") -> ModelConfig:
    return ModelConfig(model_id, "fake", Path("/nowhere"), model_key)


async def _serve(
    repo: ModelRepository, model_id: str, request: InferenceRequest = REQUEST
) -> list[float]:
    with repo.serving(model_id) as model:
        (y,) = await repo.predict(model, request)
    return y.array.tolist()


def _counts(repo: ModelRepository) -> dict[str, tuple[int, int]]:
    return {m.model_id: (m.in_flight, m.requests) for m in repo.loaded()}


async def test_requests_are_counted_while_in_flight_and_since_loaded() -> None:
    fake = fake_runtime()
    repo = _repo(fake)
    await repo.load(_config("a", key(block=True)))
    await repo.load(_config("b"))
    assert _counts(repo) == {"a": (0, 0), "b": (0, 0)}
    held = [asyncio.create_task(_serve(repo, "a")) for _ in range(3)]
    await until(lambda: fake.blocked == 3, "three requests in flight")
    assert await _serve(repo, "b") == [2.0, 4.0]
    assert _counts(repo) == {"a": (3, 3), "b": (0, 1)}
    fake.gate.set()
    assert await asyncio.gather(*held) == [[2.0, 4.0]] * 3
    assert _counts(repo) == {"a": (0, 3), "b": (0, 1)}
    assert LoadedModel("b", 1000, 0, 1) in repo.loaded()


async def test_a_request_that_fails_or_is_cancelled_is_no_longer_in_flight() -> None:
    fake = fake_runtime()
    repo = _repo(fake)
    await repo.load(_config("ok"))
    with pytest.raises(InvalidInput):
        await _serve(repo, "ok", BAD)
    assert _counts(repo) == {"ok": (0, 1)}
    await repo.load(_config("slow", key(block=True)))
    task = asyncio.create_task(_serve(repo, "slow"))
    await until(lambda: fake.blocked == 1, "a request in flight")
    assert _counts(repo)["slow"] == (1, 1)
    task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _counts(repo)["slow"] == (0, 1)
    with pytest.raises(ModelNotFound, match="^model 'nope' is not loaded on this pod$"):
        with repo.serving("nope"):
            pass


async def test_counts_start_again_when_a_model_is_loaded_again() -> None:
    repo = _repo(fake_runtime())
    await repo.load(_config("a"))
    await _serve(repo, "a")
    await _serve(repo, "a")
    assert _counts(repo) == {"a": (0, 2)}
    await repo.unload("a")
    await repo.load(_config("a"))
    assert _counts(repo) == {"a": (0, 0)}


async def test_unload_waits_for_requests_in_flight_and_refuses_new_ones() -> None:
    fake = fake_runtime()
    repo = _repo(fake)
    await repo.load(_config("a", key(block=True)))
    await repo.load(_config("b"))
    request = asyncio.create_task(_serve(repo, "a"))
    await until(lambda: fake.blocked == 1, "a request in flight")
    unload = asyncio.create_task(repo.unload("a"))
    await until(lambda: "a" not in _counts(repo), "the unload began")
    with pytest.raises(ModelNotFound, match="^model 'a' is being unloaded$"):
        with repo.serving("a"):
            pass
    with pytest.raises(ModelNotFound, match="^model 'a' is being unloaded$"):
        repo.get("a")
    await asyncio.sleep(0)
    assert not unload.done() and fake.unloads["a"] == 0
    assert _counts(repo) == {"b": (0, 0)}  # no longer listed; the other model serves on
    assert await _serve(repo, "b") == [2.0, 4.0]
    fake.gate.set()
    assert await request == [2.0, 4.0]  # the request in flight completes
    await unload
    assert fake.unloads["a"] == 1
    with pytest.raises(ModelNotFound, match="^model 'a' is not loaded on this pod$"):
        repo.get("a")


async def test_the_wait_is_bounded_by_unload_drain_s() -> None:
    fake = fake_runtime()
    repo = _repo(fake, unload_drain_s=0.01)
    await repo.load(_config("a", key(block=True)))
    request = asyncio.create_task(_serve(repo, "a"))
    await until(lambda: fake.blocked == 1, "a request in flight")
    await asyncio.wait_for(repo.unload("a"), 30)  # returns although the request is still there
    assert fake.unloads["a"] == 1 and repo.loaded() == [] and not request.done()
    fake.gate.set()
    await request  # the fake does not mind; a real runtime's request might fail here


async def test_concurrent_unloads_share_one_and_a_caller_going_away_does_not_stop_it() -> None:
    fake = fake_runtime()
    repo = _repo(fake)
    await repo.load(_config("a", key(block=True)))
    request = asyncio.create_task(_serve(repo, "a"))
    await until(lambda: fake.blocked == 1, "a request in flight")
    first = asyncio.create_task(repo.unload("a"))
    second = asyncio.create_task(repo.unload("a"))
    await until(lambda: repo.loaded() == [], "the unload began")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    fake.gate.set()
    await request
    await second
    assert fake.unloads["a"] == 1


async def test_a_load_during_an_unload_waits_for_it_then_loads_again() -> None:
    fake = fake_runtime()
    repo = _repo(fake)
    await repo.load(_config("a", key(block=True)))
    request = asyncio.create_task(_serve(repo, "a"))
    await until(lambda: fake.blocked == 1, "a request in flight")
    unload = asyncio.create_task(repo.unload("a"))
    await until(lambda: repo.loaded() == [], "the unload began")
    load = asyncio.create_task(repo.load(_config("a")))
    await asyncio.sleep(0)
    assert not load.done() and fake.loads["a"] == 1
    fake.gate.set()
    assert await load == 1000
    await unload
    assert await request == [2.0, 4.0]
    assert (fake.loads["a"], fake.unloads["a"]) == (2, 1)
    assert await _serve(repo, "a") == [2.0, 4.0]  # the new copy, which does not block
    assert _counts(repo) == {"a": (0, 1)}


async def test_close_does_not_wait_for_requests_in_flight() -> None:
    fake = fake_runtime()
    repo = _repo(fake)  # drains for 30 s
    await repo.load(_config("a", key(block=True)))
    await repo.load(_config("b", key(block=True)))
    requests = [asyncio.create_task(_serve(repo, m)) for m in ("a", "b")]
    await until(lambda: fake.blocked == 2, "two requests in flight")
    unload = asyncio.create_task(repo.unload("a"))
    await until(lambda: [m.model_id for m in repo.loaded()] == ["b"], "the unload began")
    await asyncio.wait_for(repo.close(), 10)
    await asyncio.wait_for(unload, 10)
    assert fake.unloads == {"a": 1, "b": 1} and repo.loaded() == []
    for task in requests:
        task.cancel()
    await asyncio.gather(*requests, return_exceptions=True)


def test_drain_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="unload_drain_s"):
        _repo(fake_runtime(), unload_drain_s=-1)
