"""The building blocks of benchmarks.cache_quality (the benchmark itself asserts nothing)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random

import numpy as np
import pytest

from benchmarks.cache_quality import (
    Setup,
    belady,
    lru,
    lru_per_pod,
    run_engine,
    simulate,
    static_top,
    zipf_trace,
)

# The textbook reference string: with 3 frames OPT takes 7 faults and LRU 10,
# with 4 frames OPT 6 and LRU 8.
TEXTBOOK = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]


def fewest_misses(trace: list[int], capacity: int) -> int:
    """The optimum by trying every eviction (demand paging: a miss always loads)."""

    @functools.cache
    def go(i: int, cached: frozenset[int]) -> int:
        if i == len(trace):
            return 0
        model = trace[i]
        if model in cached:
            return go(i + 1, cached)
        if len(cached) < capacity:
            return 1 + go(i + 1, cached | {model})
        return 1 + min(go(i + 1, (cached - {victim}) | {model}) for victim in cached)

    return go(0, frozenset())


@pytest.mark.parametrize(("capacity", "misses"), [(3, 7), (4, 6)])
def test_belady_on_the_textbook_trace(capacity: int, misses: int) -> None:
    outcome = belady(TEXTBOOK, capacity)
    assert (outcome.loads, outcome.hits) == (misses, len(TEXTBOOK) - misses)


@pytest.mark.parametrize("capacity", [2, 3])
def test_belady_matches_an_exhaustive_search(capacity: int) -> None:
    rng = random.Random(7)
    for _ in range(20):
        trace = [rng.randrange(5) for _ in range(14)]
        assert belady(trace, capacity).loads == fewest_misses(trace, capacity)


@pytest.mark.parametrize(("capacity", "misses"), [(3, 10), (4, 8)])
def test_lru_on_the_textbook_trace(capacity: int, misses: int) -> None:
    outcome = lru(TEXTBOOK, capacity)
    assert (outcome.loads, outcome.hits) == (misses, len(TEXTBOOK) - misses)


def test_lru_keeps_what_was_used_last() -> None:
    # 1 is used again before 3 arrives, so 2 is the one evicted, and 2 misses again.
    assert lru([1, 2, 1, 3, 1, 2], 2).hits == 2


def test_lru_per_pod_with_one_pod_is_lru() -> None:
    trace = zipf_trace(50, 2_000, seed=3)
    assert lru_per_pod(trace, 1, 10) == lru(trace, 10)


def test_static_top_counts_the_requests_of_the_most_requested() -> None:
    assert static_top([1, 1, 1, 2, 2, 3], 1).hits == 3
    assert static_top([1, 1, 1, 2, 2, 3], 2).hits == 5


def test_zipf_trace_is_seeded_and_deterministic() -> None:
    first = zipf_trace(100, 5_000, 1.0, seed=1)
    assert first == zipf_trace(100, 5_000, 1.0, seed=1)
    assert first != zipf_trace(100, 5_000, 1.0, seed=2)
    assert len(first) == 5_000 and min(first) >= 0 and max(first) < 100


def test_zipf_trace_has_zipf_popularity_under_shuffled_ids() -> None:
    trace = zipf_trace(100, 20_000, 1.0, seed=1)
    counts = np.bincount(trace, minlength=100)
    harmonic = sum(1 / r for r in range(1, 101))
    ranked = np.sort(counts)[::-1]
    assert ranked[0] / len(trace) == pytest.approx(1 / harmonic, rel=0.1)  # rank 1
    assert ranked[9] / len(trace) == pytest.approx(1 / (10 * harmonic), rel=0.25)  # rank 10
    assert abs(np.corrcoef(np.arange(100), counts)[0, 1]) < 0.3  # ids carry no order


SMALL = Setup(models=60, requests=3_000, pods=2, slots=5, interval=0.1, churn_guard=0.5)


async def test_the_simulation_makes_the_engines_decisions() -> None:
    trace = zipf_trace(SMALL.models, SMALL.requests, seed=5)
    engine = await run_engine(trace, SMALL)
    assert simulate(trace, SMALL, "candidate") == engine
    assert engine.failed == 0 and engine.hits + engine.loads == len(trace)


async def test_engine_and_simulation_fail_alike_when_the_churn_guard_protects_everything() -> None:
    trace = zipf_trace(SMALL.models, SMALL.requests, seed=5)
    guarded = dataclasses.replace(SMALL, churn_guard=1e9)
    outcome = simulate(trace, guarded, "lru")
    assert outcome.loads == SMALL.pods * SMALL.slots  # the first ten loads fill the pods for good
    assert outcome.failed == len(trace) - outcome.hits - outcome.loads > 0
    assert await run_engine(trace, guarded) == simulate(trace, guarded, "candidate") == outcome


def test_the_candidate_keeps_a_popular_model_that_lru_evicts() -> None:
    two_slots = Setup(
        models=10,
        requests=0,
        pods=1,
        slots=2,
        interval=1.0,
        churn_guard=0.0,
        recent_use_guard=0.0,
        half_life=100.0,
    )
    # Model 0 is requested often; 1..6 once each, two of them between its uses.
    trace = [0, 0, 0, 0, 1, 2, 0, 3, 4, 0, 5, 6, 0]
    assert simulate(trace, two_slots, "lru").hits == 3  # the first three repeats only
    assert simulate(trace, two_slots, "candidate").hits == 6  # and every later use


def test_the_popularity_reference_orders_by_counts_known_in_advance() -> None:
    setup = Setup(
        models=10, requests=0, pods=1, slots=2, interval=1.0, churn_guard=0.0, recent_use_guard=0.0
    )
    trace = [0, 0, 1, 2, 0]
    assert simulate(trace, setup, "lru").hits == 1  # LRU evicts 0 for 2
    assert simulate(trace, setup, "popularity").hits == 2  # 0 is requested most


def test_the_adapter_cache_beats_lru_and_stays_under_belady() -> None:
    """benchmarks.llm_serving's simulation: the engine's adapter eviction (LRFU, as for
    models) against plain LRU and Belady's optimum, on a short Zipf trace."""
    from benchmarks.llm_serving import adapter_engine

    trace = zipf_trace(100, 3000, alpha=1.0, seed=3)
    best = belady(trace, 16).hit_ratio
    engine = asyncio.run(adapter_engine(trace, 100, 2, 8, 0.1, 600.0))
    plain = asyncio.run(adapter_engine(trace, 100, 2, 8, 0.1, 0.0))
    assert engine.failed == plain.failed == 0
    assert plain.hit_ratio == pytest.approx(lru(trace, 16).hit_ratio, abs=0.02)
    assert plain.hit_ratio < engine.hit_ratio <= best
