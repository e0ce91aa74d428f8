"""Cache quality: how many requests find their model loaded, against the offline optimum.

One request trace, replayed against several caches of the same total size:

    1,000 registered models of equal size, popularity Zipf(1.0), the popularity
    ranks shuffled so model ids carry no order; 100,000 requests from a seeded
    RNG; 4 pods with room for 25 models each (10% of the models in all).

    belady      offline optimum: on a miss, evict the model whose next request
                is farthest away. The upper bound for any cache of 100 slots.
    static      the 100 most requested models (counted offline over the whole
                trace) and nothing else: what a policy that knew the popularity
                would get; no online policy does better on independent requests.
    lru         one LRU cache of 100 slots.
    lru/pod     4 LRU caches of 25, each model hashed to one pod.
    engine      the real gateway.core.placement.Placement: register every model, then
                per request ``lookup`` and on a miss ``await ensure_loaded``,
                with an in-memory PodClient whose loads finish at once and a
                simulated clock. Eviction by the candidate order below.
    sim lru     the engine's decisions replayed without the engine: the real
                picker.pick_pod and picker.plan_evictions over a table kept
                here, least recently used first (the engine before the
                eviction half-life).
    candidate   ``sim`` with the engine's eviction order: picker.effective_last_use
                over a decayed request count per model (LRFU's recency and
                frequency in one timestamp) both to order a pod's copies and as
                the pods' cache age (picker.cache_age) when every pod is full.
    popularity  ``sim`` ordered by each model's request count over the whole
                trace, known in advance: the most a popularity order can get
                under the engine's guards, which Belady and static ignore.

Time: request i arrives at i * interval simulated seconds (0.1 s by default,
10 requests/s); the churn guard is the engine's default 5 s, so a fresh copy
is safe for the next 50 requests, and a copy routed to in the last second
(recent_use_guard) counts as in flight. What matters is the guard counted in
requests: at 0.01 s per request the same 5 s covers 500 requests, about twice
as many loads as there are slots, and requests fail for want of an evictable
copy (the last table). A request that finds no room fails at once (the
engine's room_wait is 0 here: it waits in real seconds, which would not move
the simulated clock). The candidate's half-life is 600 s (6,000 requests).
Figures are printed, nothing is asserted. Run:
``python -m benchmarks.cache_quality`` (under a minute on two cores;
``--no-sweeps`` for the first table only, a few seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import heapq
import logging
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from gateway.core import picker
from gateway.core.domain import Copy, CopyState, ModelSpec, PodView
from gateway.core.errors import GatewayError
from gateway.core.placement import Placement, PlacementSettings, PodStatus

SIZE = 1  # every model has the same size; capacities count models


@dataclasses.dataclass(frozen=True, slots=True)
class Setup:
    models: int = 1000
    requests: int = 100_000
    alpha: float = 1.0
    seed: int = 1
    pods: int = 4
    slots: int = 25  # models per pod
    interval: float = 0.1  # simulated seconds between requests
    churn_guard: float = PlacementSettings().churn_guard  # the engine's default
    half_life: float = 600.0  # of the candidate's decayed request count
    health_interval: float = 1.0  # the engine's pod checks and rate ticks, simulated
    recent_use_guard: float = 1.0  # a copy routed to this recently counts as in flight

    @property
    def capacity(self) -> int:
        return self.pods * self.slots


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    requests: int
    hits: int
    loads: int
    failed: int = 0  # requests whose model could not be loaded

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


# -- the trace -----------------------------------------------------------------


def zipf_trace(models: int, requests: int, alpha: float = 1.0, seed: int = 1) -> list[int]:
    """Model numbers 0..models-1 requested with Zipf(alpha) popularity, ranks shuffled."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, models + 1, dtype=float) ** alpha
    by_rank = rng.permutation(models)  # by_rank[r] is the model with popularity rank r
    ranks = rng.choice(models, size=requests, p=weights / weights.sum())
    return by_rank[ranks].tolist()


# -- reference caches ----------------------------------------------------------


def lru(trace: Sequence[int], capacity: int) -> Outcome:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for model in trace:
        if model in cache:
            hits += 1
            cache.move_to_end(model)
            continue
        if len(cache) >= capacity:
            cache.popitem(last=False)
        cache[model] = None
    return Outcome(len(trace), hits, len(trace) - hits)


def lru_per_pod(trace: Sequence[int], pods: int, slots: int) -> Outcome:
    """Each model always on the same pod (a hash of its id), an LRU cache per pod."""
    home = {m: zlib.crc32(f"m{m}".encode()) % pods for m in set(trace)}
    parts: list[list[int]] = [[] for _ in range(pods)]
    for model in trace:
        parts[home[model]].append(model)
    outcomes = [lru(part, slots) for part in parts]
    hits = sum(o.hits for o in outcomes)
    return Outcome(len(trace), hits, len(trace) - hits)


def belady(trace: Sequence[int], capacity: int) -> Outcome:
    """Belady's MIN: on a miss with the cache full, evict the model used again farthest ahead."""
    n = len(trace)
    next_use = [0] * n
    seen: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        next_use[i] = seen.get(trace[i], n + i)  # never again: beyond the end, all distinct
        seen[trace[i]] = i
    cached: dict[int, int] = {}  # model -> its next use
    farthest: list[tuple[int, int]] = []  # (-next use, model); stale entries skipped
    hits = 0
    for i, model in enumerate(trace):
        if model in cached:
            hits += 1
        elif len(cached) >= capacity:
            while True:
                use, victim = heapq.heappop(farthest)
                if cached.get(victim) == -use:
                    del cached[victim]
                    break
        cached[model] = next_use[i]
        heapq.heappush(farthest, (-next_use[i], model))
    return Outcome(n, hits, n - hits)


def static_top(trace: Sequence[int], capacity: int) -> Outcome:
    """Hits of a cache that holds the ``capacity`` most requested models and nothing else."""
    counts = np.bincount(np.asarray(trace))
    hits = int(np.sort(counts)[::-1][:capacity].sum())
    return Outcome(len(trace), hits, len(trace) - hits)


# -- the real engine -----------------------------------------------------------


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class InstantPods:
    """A PodClient whose pods are dicts and whose loads finish at once (``max_adapters``:
    each pod's room for adapters, as it reports it)."""

    def __init__(
        self,
        capacity: int,
        model_types: tuple[str, ...] = ("sklearn",),
        max_adapters: int = 0,
    ) -> None:
        self.capacity = capacity
        self.model_types = model_types
        self.max_adapters = max_adapters
        self.loaded: dict[str, dict[str, int]] = {}
        self.loads = 0

    async def load(self, address: str, spec: ModelSpec, timeout: float, expected: int) -> int:
        self.loads += 1
        self.loaded.setdefault(address, {})[spec.model_id] = spec.predicted_size
        return spec.predicted_size

    async def unload(self, address: str, model_id: str) -> None:
        self.loaded.get(address, {}).pop(model_id, None)

    def on_disconnect(self, callback: Callable[[str], None]) -> None:
        """Simulated pods never disconnect."""

    async def status(self, address: str, timeout: float) -> PodStatus:
        loaded = dict(self.loaded.get(address, {}))
        return PodStatus(
            capacity=self.capacity,
            model_types=self.model_types,
            loaded=loaded,
            max_adapters=self.max_adapters,
            adapter_capacity=self.capacity,
        )


def _model_id(model: int) -> str:
    return f"m{model:04d}"


async def run_engine(trace: Sequence[int], setup: Setup) -> Outcome:
    clock = SimulatedClock()
    pods = InstantPods(setup.slots * SIZE)
    settings = PlacementSettings(
        churn_guard=setup.churn_guard,
        health_interval=setup.health_interval,
        recent_use_guard=setup.recent_use_guard,
        eviction_half_life=setup.half_life,
        # A request that finds no evictable copy fails at once: its wait for one
        # to age out is in real seconds and would not advance the simulated clock.
        room_wait=0.0,
    )
    placement = Placement(pods, settings, clock=clock)
    for p in range(setup.pods):
        placement.add_pod(f"pod-{p}")
    await placement.check_pods()
    ids = [_model_id(m) for m in range(setup.models)]
    for model_id in ids:
        placement.register(ModelSpec(model_id, "sklearn", f"/models/{model_id}", SIZE))
    hits, failed = await replay(placement, clock, [ids[m] for m in trace], setup)
    return Outcome(len(trace), hits, pods.loads, failed)


async def replay(
    placement: Placement, clock: SimulatedClock, requests: Sequence[str], setup: Setup
) -> tuple[int, int]:
    """Send ``requests`` (model ids) to ``placement`` ``setup.interval`` simulated seconds
    apart, checking pods and ticking every ``setup.health_interval`` as watch_pods does:
    ``lookup``, and on a miss ``await ensure_loaded``. (hits, requests that failed)"""
    next_check = setup.health_interval
    hits = failed = 0
    for i, model_id in enumerate(requests):
        clock.now = i * setup.interval
        while clock.now >= next_check:  # what watch_pods does every health_interval
            await placement.check_pods()
            placement.tick()
            next_check += setup.health_interval
        if placement.lookup(model_id) is not None:
            hits += 1
            continue
        try:
            await placement.ensure_loaded(model_id)
        except GatewayError:
            failed += 1
    return hits, failed


# -- the engine's decisions without the engine ---------------------------------


POLICIES = ("lru", "candidate", "popularity")


def simulate(trace: Sequence[int], setup: Setup, policy: str = "lru") -> Outcome:
    """The engine's miss path over the real picker functions, with a pluggable eviction order.

    ``lru``: today's engine (picker.by_last_use; a pod's cache age is the oldest
    last use among its loaded copies). ``candidate``: a decayed request count
    per model (half-life ``setup.half_life``), bumped on every request; copies
    are ordered by picker.effective_last_use over it, and the pods' cache age is
    picker.cache_age under the same key. ``popularity``: ordered by each model's
    request count over the whole trace, known in advance (ties least recently
    used first): what a popularity order gets under the same guards. As in the
    engine, loads are instant, a copy routed to within ``recent_use_guard``
    counts as in flight, a pod that cannot make room is skipped, and a request
    whose model no pod can take fails.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy is one of {POLICIES}, not {policy!r}")
    names = [f"pod-{p}" for p in range(setup.pods)]
    capacity = setup.slots * SIZE
    table: dict[str, dict[str, Copy]] = {name: {} for name in names}
    where: dict[str, str] = {}
    # The model's decayed count as of its last request, which is also its copy's
    # last use: every request updates both (what Copy.hits would carry).
    count: dict[str, float] = {}
    count_at: dict[str, float] = {}
    ids = [_model_id(m) for m in range(setup.models)]
    half_life = setup.half_life

    key: Callable[[Copy], float]
    if policy == "popularity":
        total = dict(
            zip(ids, np.bincount(np.asarray(trace), minlength=setup.models).tolist(), strict=True)
        )
        horizon = len(trace) * setup.interval + 1.0

        def key(copy: Copy) -> float:
            return total[copy.model_id] + copy.last_used / horizon
    elif policy == "candidate":

        def key(copy: Copy) -> float:
            return picker.effective_last_use(copy.last_used, count[copy.model_id], half_life)
    else:
        key = picker.by_last_use

    def inflight(pod: str, now: float) -> dict[str, int]:
        recent = now - setup.recent_use_guard
        return {m: 1 for m, c in table[pod].items() if c.last_used > recent}

    def age(view: PodView, now: float) -> float | None:
        copies = list(table[view.pod].values())
        if policy == "lru":  # a pod's least recently used copy, as plain LRU orders
            return min((c.last_used for c in copies if c.state is CopyState.LOADED), default=None)
        return picker.cache_age(
            copies,
            now=now,
            churn_guard=setup.churn_guard,
            inflight=inflight(view.pod, now),
            key=key,
        )

    hits = loads = failed = 0
    for i, model in enumerate(trace):
        now = i * setup.interval
        model_id = ids[model]
        previous = count.get(model_id, 0.0), count_at.get(model_id, now)
        if policy == "candidate":
            count[model_id] = picker.decayed_count(*previous, now, half_life) + 1
            count_at[model_id] = now
        pod = where.get(model_id)
        if pod is not None:
            hits += 1
            old = table[pod][model_id]
            table[pod][model_id] = Copy(model_id, pod, CopyState.LOADED, SIZE, now, old.loaded_at)
            continue
        full: set[str] = set()
        while True:
            views = [PodView(n, capacity, len(table[n]) * SIZE, len(table[n])) for n in names]
            target = picker.pick_pod(views, SIZE, exclude=full, age=functools.partial(age, now=now))
            if target is None:  # a failed request is not counted (never routed)
                count[model_id], count_at[model_id] = previous
                failed += 1
                break
            evict = picker.plan_evictions(
                target,
                list(table[target.pod].values()),
                SIZE,
                now=now,
                churn_guard=setup.churn_guard,
                inflight=inflight(target.pod, now),
                key=key,
            )
            if evict is None:
                full.add(target.pod)
                continue
            for victim in evict:
                del table[target.pod][victim.model_id]
                del where[victim.model_id]
            fresh = Copy(model_id, target.pod, CopyState.LOADED, SIZE, now, now)
            table[target.pod][model_id] = fresh
            where[model_id] = target.pod
            loads += 1
            break
    return Outcome(len(trace), hits, loads, failed)


# -- the report ----------------------------------------------------------------


def _row(name: str, outcome: Outcome, best: Outcome, seconds: float) -> str:
    share = outcome.hit_ratio / best.hit_ratio if best.hit_ratio else 0.0
    return (
        f"{name:<38} {outcome.hit_ratio:>9.4f} {outcome.loads:>8,} {outcome.failed:>7,} "
        f"{share:>10.1%} {seconds:>7.1f}"
    )


def _header(title: str) -> str:
    head = (
        f"{'policy':<38} {'hit ratio':>9} {'loads':>8} {'failed':>7} {'of Belady':>10} {'secs':>7}"
    )
    return f"\n{title}\n{head}\n{'-' * len(head)}"


def _timed(fn: Callable[..., Outcome], *args: object, **kwargs: object) -> tuple[Outcome, float]:
    started = time.perf_counter()
    outcome = fn(*args, **kwargs)
    return outcome, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    default = Setup()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=default.requests)
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument(
        "--interval",
        type=float,
        default=default.interval,
        help="simulated seconds between requests",
    )
    parser.add_argument("--churn-guard", type=float, default=default.churn_guard)
    parser.add_argument("--half-life", type=float, default=default.half_life)
    parser.add_argument("--no-sweeps", action="store_true", help="only the main table")
    args = parser.parse_args(argv)
    setup = Setup(
        requests=args.requests,
        seed=args.seed,
        interval=args.interval,
        churn_guard=args.churn_guard,
        half_life=args.half_life,
    )
    logging.getLogger("gateway").setLevel(logging.CRITICAL)  # "no room" warnings would flood
    started = time.perf_counter()
    trace = zipf_trace(setup.models, setup.requests, setup.alpha, setup.seed)
    print(
        f"{setup.requests:,} requests over {setup.models:,} models, Zipf({setup.alpha}), "
        f"seed {setup.seed}; {setup.pods} pods x {setup.slots} models = {setup.capacity} slots; "
        f"a request every {setup.interval} s; churn guard {setup.churn_guard} s "
        f"({setup.churn_guard / setup.interval:,.0f} requests), recent-use guard "
        f"{setup.recent_use_guard} s; candidate half-life {setup.half_life} s "
        f"({setup.half_life / setup.interval:,.0f} requests)"
    )
    best, secs = _timed(belady, trace, setup.capacity)
    rows = [("belady (offline optimum)", best, secs)]
    rows.append(("static top 100 (offline counts)", *_timed(static_top, trace, setup.capacity)))
    rows.append(("lru, one cache of 100", *_timed(lru, trace, setup.capacity)))
    per_pod = _timed(lru_per_pod, trace, setup.pods, setup.slots)
    rows.append((f"lru per pod, {setup.pods} x {setup.slots}, hashed", *per_pod))
    engine, secs = _timed(lambda: asyncio.run(run_engine(trace, setup)))
    rows.append(("engine (Placement)", engine, secs))
    rows.append(("sim lru (engine's decisions)", *_timed(simulate, trace, setup, "lru")))
    candidate, secs = _timed(simulate, trace, setup, "candidate")
    rows.append((f"candidate, half-life {setup.half_life:g} s", candidate, secs))
    rows.append(("sim, popularity known in advance", *_timed(simulate, trace, setup, "popularity")))
    print(_header("same trace, same 100 slots"))
    for name, outcome, secs in rows:
        print(_row(name, outcome, best, secs))
    print(
        f"\nengine / belady = {engine.hit_ratio / best.hit_ratio:.1%}   "
        f"candidate (sim) / belady = {candidate.hit_ratio / best.hit_ratio:.1%}   (target: 90%)"
    )
    if args.no_sweeps:
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        return
    print(_header(f"candidate half-life (sim; churn guard {setup.churn_guard:g} s)"))
    for half_life in (60.0, 300.0, 600.0, 1800.0):
        swept = dataclasses.replace(setup, half_life=half_life)
        outcome, secs = _timed(simulate, trace, swept, "candidate")
        name = f"half-life {half_life:g} s ({half_life / setup.interval:,.0f} requests)"
        print(_row(name, outcome, best, secs))
    print(_header("churn guard, in the requests it covers (sim)"))
    for guard in (0, 20, 50, 500):
        swept = dataclasses.replace(setup, churn_guard=guard * setup.interval)
        for policy in POLICIES:
            outcome, secs = _timed(simulate, trace, swept, policy)
            print(_row(f"guard {guard:>3} requests, {policy}", outcome, best, secs))
    # 500 requests is 5 s at 100 requests/s: more loads than slots within one
    # guard, so requests fail for want of an evictable copy, in the real engine
    # as in the simulation.
    swept = dataclasses.replace(setup, churn_guard=500 * setup.interval)
    outcome, secs = _timed(lambda: asyncio.run(run_engine(trace, swept)))
    print(_row("guard 500 requests, engine", outcome, best, secs))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
