"""The placement engine: which pod holds which model, and getting it there.

The pods form one distributed cache, as in KServe ModelMesh. The engine keeps
the placement table (copies per pod, with sizes, last use, requests in flight
and request rates), loads a model on the best pod when a request needs it (one
load however many requests wait), evicts the copies least worth keeping when a
load needs room (least recently used, weighed by the model's decayed request
count: LRFU), retries a failed load on other pods, adds copies of models
whose traffic per copy runs high, and watches the pods' health. The decisions
themselves are the plain functions of gateway.core.picker; this module gathers
their inputs and carries them out. It talks to pods only through the PodClient
protocol and reports what happens through PlacementEvents (gateway.adapters.metrics).

The hot path is ``HitBuffer.add``: the transport (gateway.adapters.extproc.processor) keeps the
answer for a model with one loaded copy and only records the name each request
came for. Like the read buffer of ModelMesh's cache (a ConcurrentLinkedHashMap),
those hits are counted in a batch by ``settle``, off the request path; every
decision and view that reads the counts (last use, requests, demand, rates)
settles first, so none sees them stale. ``route_sole`` and ``route`` decide
the other cases and count at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import operator
import time
from array import array
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.core import picker
from gateway.core.domain import Copy, CopyState, ModelSpec, ModelState, ModelStatus, PodView
from gateway.core.errors import (
    LoadFailed,
    ModelFormatError,
    ModelNotFound,
    NoCapacity,
    PodFull,
    StoreUnavailable,
    Unavailable,
)
from gateway.core.load_queue import LoadQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PodStatus:
    capacity: int
    model_types: tuple[str, ...]
    loaded: Mapping[str, int]  # model id -> size in bytes
    inflight: Mapping[str, int] = field(
        default_factory=dict
    )  # model id -> requests being served now
    requests: Mapping[str, int] = field(
        default_factory=dict
    )  # model id -> requests served since loaded


class PodClient(Protocol):
    """How the engine reaches pods (gateway.adapters.podclient implements it over gRPC).

    ``load`` raises LoadFailed (or ModelFormatError) with the pod's reason, or
    PodFull when the pod has no room for ``expected`` bytes.
    """

    async def load(self, address: str, spec: ModelSpec, timeout: float, expected: int) -> int: ...

    async def unload(self, address: str, model_id: str) -> None: ...

    async def status(self, address: str, timeout: float) -> PodStatus: ...


class _NoRoom(Exception):
    """The pod cannot make room now (its copies are busy or fresh): not a failure of the model."""


class _NoRoomNow(Unavailable):
    """No pod can make room now; a later request may succeed."""


class _NoPods(Unavailable):
    """No pod is healthy (yet)."""


class Coordinator(Protocol):
    """What the engine must agree on with other gateway replicas (gateway.control.replicas does it in the store).

    ``claim`` takes the right to load a model (False: another replica is
    loading it); ``leader`` says whether this replica makes the decisions that
    must be made once: adding copies, fitting over-full pods, unloading what
    nobody registered.
    """

    async def claim(self, model_id: str) -> bool: ...

    async def release(self, model_id: str) -> None: ...

    def leader(self) -> bool: ...

    async def failed(self, model_id: str, pod: str, error: LoadFailed) -> None:
        """Tell the other replicas: loading ``model_id`` on ``pod`` failed (they keep that pod out too)."""

    async def forgive(self, model_id: str, pod: str) -> None:
        """The leader's: a failure record expired."""


class Solo:
    """One gateway alone: every claim is won, and it is the leader."""

    async def claim(self, model_id: str) -> bool:
        return True

    async def release(self, model_id: str) -> None: ...

    def leader(self) -> bool:
        return True

    async def failed(self, model_id: str, pod: str, error: LoadFailed) -> None: ...

    async def forgive(self, model_id: str, pod: str) -> None: ...


# Buffered hits that ask for a drain at the next turn of the event loop, and the
# buffer's room: it is allocated once, so the hot path never waits for it to grow.
_DRAIN_AT = 1024
_ROOM = 2 * _DRAIN_AT


class HitBuffer:
    """Requests served on a fast path, recorded by key and counted later.

    A key is what the fast path kept (gateway.adapters.extproc.processor: the answer it sends); an
    object that lives on, so that a buffer of them allocates nothing per request.
    ``resolve(key)`` names the copy (an _Entry from ``Placement.route_sole``)
    that served a key's requests. It must not change while hits are buffered:
    the owner calls ``drain`` before it changes what a key resolves to.
    """

    def __init__(self, placement: Placement, resolve: Callable[[Any], Any]) -> None:
        self._placement = placement
        self._clock = placement._clock
        self._resolve = resolve
        self._keys: list[object] = [None] * _ROOM
        self._times = array("d", bytes(8 * _ROOM))  # the clock at each hit
        self._filled = 0

    def add(self, key: object) -> None:
        """The hot path: one more request for ``key``."""
        n = self._filled
        if n == _ROOM:  # the event loop has not run the drain it was asked for
            self.drain()
            n = 0
        self._keys[n] = key
        self._times[n] = self._clock()
        self._filled = n = n + 1
        if n == _DRAIN_AT:
            self._placement.drain_soon()

    def drain(self) -> None:
        """Count the buffered hits, in order, each at its own time."""
        n = self._filled
        if n:
            keys, times = self._keys[:n], self._times[:n]
            self._keys[:n] = [None] * n  # hold nothing once counted
            self._filled = 0
            self._placement.count_hits(map(self._resolve, keys), times)


class PlacementEvents(Protocol):
    """What the engine reports as it happens (gateway.adapters.metrics turns it into Prometheus)."""

    def loaded(self, model_id: str, pod: str, seconds: float, queued_seconds: float) -> None: ...

    def load_failed(self, model_id: str, pod: str, reason: str) -> None: ...

    def evicted(self, model_id: str, pod: str, reason: str) -> None: ...


class _NoEvents:
    def loaded(self, model_id: str, pod: str, seconds: float, queued_seconds: float) -> None: ...

    def load_failed(self, model_id: str, pod: str, reason: str) -> None: ...

    def evicted(self, model_id: str, pod: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class PlacementSettings:
    max_load_attempts: int = 3  # distinct pods tried before a load fails
    failure_expiry: float = 15 * 60.0  # seconds a failed load keeps a pod out
    # Seconds a fresh copy is safe from eviction. Short on purpose: the request
    # that caused a load is routed to it at once (recent_use_guard) and counted
    # in flight; a longer guard blocks evictions when requests come fast
    # (benchmarks/cache_quality: 5 s at 100 req/s failed 27% of requests).
    churn_guard: float = 1.0
    recent_use_guard: float = (
        1.0  # seconds after a request is routed to a copy it may still be on its way
    )
    room_wait: float = 5.0  # seconds a request's load waits for a copy to become evictable
    load_timeout: float = 90.0
    loads_per_pod: int = 1  # loads at once per pod; more wait in its queue
    health_interval: float = 1.0  # seconds between pod checks (and rate ticks)
    health_timeout: float = 1.0
    copy_rate_threshold: float = 200.0  # requests/s per copy that call for another copy
    scale_ticks: int = 3  # consecutive ticks above the threshold before adding one
    quiet_rate: float = 0.1  # requests/s under which an extra copy is idle
    max_queue_gap: int = (
        4  # a pod whose load queue is this much longer than the shortest is skipped
    )
    rate_skew: float = 4.0  # a pod serving this many times the mean request rate is skipped
    eviction_half_life: float = 600.0  # seconds for a model's request count to halve; 0: plain LRU
    # A pod's own list of its models may lag a load that just finished: a copy
    # younger than this is not dropped for missing from it.
    report_grace: float = 2.0
    stranger_grace: float = (
        5.0  # seconds a model nobody registered may stay on a pod before it is unloaded
    )


@dataclass(slots=True)
class _Entry:
    model_id: str
    pod: str
    state: CopyState
    size: int
    last_used: float
    loaded_at: float
    inflight: int = 0  # as the pod last reported
    routed: int = 0  # requests this gateway sent here
    routed_at_tick: int = 0
    rate: float = 0.0  # requests/s, smoothed over ticks
    demand: float = 0.0  # the model's decayed request count as of last_used

    def busy(self) -> int:
        """Requests in flight as best known: the pod's count plus what was routed since."""
        return self.inflight + self.routed - self.routed_at_tick

    def copy(self) -> Copy:
        return Copy(
            self.model_id,
            self.pod,
            self.state,
            self.size,
            self.last_used,
            self.loaded_at,
            self.demand,
        )


_SIZE, _RATE = operator.attrgetter("size"), operator.attrgetter("rate")


@dataclass(slots=True)
class _Pod:
    pod: str
    address: str
    queue: LoadQueue
    capacity: int = 0
    model_types: tuple[str, ...] = ()
    healthy: bool = False
    copies: dict[str, _Entry] = field(default_factory=dict)
    reported: dict[str, int] = field(default_factory=dict)  # the pod's own list: model id -> size
    unloading: set[str] = field(default_factory=set)  # unloads sent and not yet gone from its list
    runtime: str = ""  # the ServingRuntime the pod serves ("" : any)
    name: str = ""  # as it registered (its pod id)

    def view(self) -> PodView:
        """Capacity and use; no cache age (Placement._cache_age, asked for only when pods are full)."""
        return PodView(
            self.pod,
            self.capacity,
            sum(map(_SIZE, self.copies.values())),
            len(self.copies),
            self.healthy,
        )

    def rate(self) -> float:
        return sum(map(_RATE, self.copies.values()))


@dataclass(slots=True)
class _Model:
    spec: ModelSpec
    # What a hit reads and writes, first, so that they share cache lines.
    sole: _Entry | None = (
        None  # the only copy, when there is exactly one (kept by Placement._put/_drop)
    )
    demand: float = 0.0  # requests, decayed with eviction_half_life, as of demand_at
    demand_at: float = 0.0
    requests: int = 0  # requests routed to any copy, ever
    copies: dict[str, _Entry] = field(default_factory=dict)  # pod -> entry
    loading: asyncio.Task[str] | None = None  # the first copy's load, shared by all waiters
    urgent: bool = False  # a request waits for that load
    may_evict: bool = True  # False for a fresh registration's proactive load: free space only
    adding: asyncio.Task[None] | None = None  # an extra copy being added
    hot_ticks: int = 0
    failures: dict[str, tuple[float, LoadFailed]] = field(
        default_factory=dict
    )  # pod -> (when, why)
    ever_loaded: bool = False
    deferred: bool = False  # a proactive load found no room: it loads on demand
    size: int = 0  # real size once a pod has loaded it; until then the prediction
    arrived: asyncio.Event = field(
        default_factory=asyncio.Event
    )  # set when a pod reports a new copy
    runtime: str = ""  # the ServingRuntime serving it ("": any pod)
    last_error: str = ""

    def loaded(self) -> list[_Entry]:
        return [e for e in self.copies.values() if e.state is CopyState.LOADED]

    def expected_size(self) -> int:
        return self.size or self.spec.predicted_size


class Placement:
    def __init__(
        self,
        client: PodClient,
        settings: PlacementSettings = PlacementSettings(),
        *,
        clock: Callable[[], float] = time.monotonic,
        events: PlacementEvents | None = None,
        coordinator: Coordinator | None = None,
    ) -> None:
        self._client = client
        self._coordinator: Coordinator = coordinator or Solo()
        self._strangers: dict[
            tuple[str, str], float
        ] = {}  # (pod, model id) -> first seen unregistered
        self._settings = settings
        self._half_life = settings.eviction_half_life
        self._clock = clock
        self._events: PlacementEvents = events or _NoEvents()
        self._pods: dict[str, _Pod] = {}
        self._models: dict[str, _Model] = {}
        self._last_tick = clock()
        # Bumped whenever a model id starts or stops naming a _Model, and whenever a copy
        # comes or goes: handles (``handle``) and copies (``route_sole``) held since are stale.
        self.generation = 0
        self._hits = 0
        self.misses = 0
        self._buffers: list[HitBuffer] = []  # hits on fast paths, counted by settle
        self._drain_scheduled = False

    # -- pods ------------------------------------------------------------

    def add_pod(self, address: str, name: str = "", runtime: str = "") -> None:
        """Add a pod (as it registered); it serves once the health monitor has seen it."""
        pod = self._pods.get(address)
        if pod is None:
            pod = self._pods[address] = _Pod(
                address, address, LoadQueue(self._settings.loads_per_pod)
            )
        pod.name, pod.runtime = name or address, runtime

    def remove_pod(self, address: str) -> None:
        """A pod left the pool (its registration is gone): its copies go with it."""
        pod = self._pods.pop(address, None)
        if pod is not None:
            log.info("pod %s left the pool with %d copies", pod.pod, len(pod.copies))
            self._lose_copies(pod)

    def observe(self, address: str, models: Mapping[str, int]) -> None:
        """A pod's own list of what it holds (from its registration): take in loads
        and evictions other gateway replicas made there."""
        pod = self._pods.get(address)
        if pod is None:
            return
        pod.reported = dict(models)
        pod.unloading &= pod.reported.keys()
        if not pod.healthy:
            return
        now = self._clock()
        for model_id, entry in list(pod.copies.items()):
            if (
                entry.state is CopyState.LOADED
                and model_id not in models
                and now - entry.loaded_at > self._settings.report_grace
            ):
                log.info(
                    "%s is gone from pod %s (unloaded by another gateway replica)",
                    model_id,
                    pod.pod,
                )
                self._drop(pod, model_id)
        for model_id, size in models.items():
            model = self._models.get(model_id)
            if model is not None and model_id not in pod.copies and model_id not in pod.unloading:
                self._put(pod, model, CopyState.LOADED, size, now)
                model.ever_loaded, model.size = True, size
                model.arrived.set()

    def any_healthy_pod(self) -> str:
        for pod in self._pods.values():
            if pod.healthy:
                return pod.address
        raise Unavailable("no runtime pod is available")

    async def watch_pods(self) -> None:
        """Check every pod's health, update rates and scale copies, every ``health_interval``."""
        while True:
            await self.check_pods()
            self.tick()
            await asyncio.sleep(self._settings.health_interval)

    async def check_pods(self) -> None:
        await asyncio.gather(*(self._check(pod) for pod in list(self._pods.values())))

    async def _check(self, pod: _Pod) -> None:
        try:
            status = await self._client.status(pod.address, self._settings.health_timeout)
        except Exception as exc:  # any failure to answer means the pod is gone
            if pod.healthy:
                log.warning(
                    "pod %s is unreachable (%s): dropping its %d copies",
                    pod.pod,
                    exc,
                    len(pod.copies),
                )
                self._lose_copies(pod)
            return
        pod.capacity, pod.model_types = status.capacity, status.model_types
        if not pod.healthy:
            pod.healthy = True
            await self._reconcile(pod, status)
            log.info(
                "pod %s is ready: capacity %d bytes, holding %d models",
                pod.pod,
                pod.capacity,
                len(pod.copies),
            )
            for model_id, model in self._models.items():  # registered while no pod could load them
                if not (
                    model.copies
                    or model.loading
                    or model.ever_loaded
                    or model.deferred
                    or model.last_error
                ):
                    self.load_in_background(model_id)
        for model_id, entry in pod.copies.items():
            entry.inflight = status.inflight.get(model_id, 0)
        pod.reported = dict(status.loaded)
        pod.unloading &= pod.reported.keys()

    async def _reconcile(self, pod: _Pod, status: PodStatus) -> None:
        """Adopt what a (re)joining pod already holds (what nobody registered goes in ``tick``)."""
        for model_id in [m for m in pod.copies if m not in status.loaded]:
            self._drop(pod, model_id)
        now = self._clock()
        for model_id, size in status.loaded.items():
            model = self._models.get(model_id)
            if model is not None and model_id not in pod.copies and model_id not in pod.unloading:
                self._put(pod, model, CopyState.LOADED, size, now)
                model.ever_loaded = True

    def _lose_copies(self, pod: _Pod) -> None:
        pod.healthy = False
        for model_id in list(pod.copies):
            self._drop(pod, model_id)
            self._events.evicted(model_id, pod.pod, "pod lost")

    def tick(self) -> None:
        """Update request rates and add a copy where traffic per copy stays high."""
        self.settle()
        now = self._clock()
        elapsed, self._last_tick = now - self._last_tick, now
        if elapsed <= 0:
            return
        for pod in self._pods.values():
            for entry in pod.copies.values():
                per_second = (entry.routed - entry.routed_at_tick) / elapsed
                entry.routed_at_tick = entry.routed
                entry.rate = 0.5 * entry.rate + 0.5 * per_second
        if not self._coordinator.leader():
            return  # the leader replica adds copies, fits pods and unloads strangers
        for pod in self._pods.values():
            if pod.healthy and pod.capacity and pod.view().used > pod.capacity:
                asyncio.ensure_future(self._fit(pod))
        self._unload_strangers(now)
        for model_id, model in self._models.items():
            for pod, (when, _) in list(model.failures.items()):
                if now - when >= self._settings.failure_expiry:
                    del model.failures[pod]
                    self._background(self._coordinator.forgive(model_id, pod))
        threshold = self._settings.copy_rate_threshold
        for model in self._models.values():
            loaded = model.loaded()
            hot = bool(loaded) and sum(e.rate for e in loaded) / len(loaded) > threshold
            model.hot_ticks = model.hot_ticks + 1 if hot else 0
            if (
                model.hot_ticks >= self._settings.scale_ticks
                and model.adding is None
                and model.loading is None
            ):
                model.hot_ticks = 0
                model.adding = asyncio.ensure_future(self._scale_up(model))

    def _unload_strangers(self, now: float) -> None:
        """Unload models that pods hold but nobody has registered for ``stranger_grace`` seconds
        (deleted while a pod was away, or left by a replica that died)."""
        seen = set()
        for pod in self._pods.values():
            if not pod.healthy:
                continue
            for model_id in pod.reported.keys() - self._models.keys() - pod.unloading:
                key = (pod.address, model_id)
                seen.add(key)
                first = self._strangers.setdefault(key, now)
                if now - first >= self._settings.stranger_grace:
                    log.info("unloading %s from pod %s: no longer registered", model_id, pod.pod)
                    pod.unloading.add(model_id)
                    asyncio.ensure_future(self._unload_quietly(pod, model_id))
        self._strangers = {k: v for k, v in self._strangers.items() if k in seen}

    async def _scale_up(self, model: _Model) -> None:
        try:
            await self._add_copy(model, "traffic per copy above the threshold")
        finally:
            model.adding = None

    # -- models ----------------------------------------------------------

    def register(self, spec: ModelSpec, *, standby: bool = False, runtime: str = "") -> None:
        """Add a model to the table; ``standby``: known from before (a restart), loads on demand.
        ``runtime``: the ServingRuntime serving it: only pods of that runtime (or of none) take it."""
        model = self._models.get(spec.model_id)
        if model is None:
            model = self._models[spec.model_id] = _Model(spec, deferred=standby)
            self.generation += 1
        elif model.spec != spec:
            model.spec = spec
        model.runtime = runtime

    def serves(self, runtime: str, model_type: str) -> bool:
        """Whether a healthy pod could load a model of this runtime and type now."""
        return any(self._fits(pod, runtime, model_type) for pod in self._pods.values())

    @staticmethod
    def _fits(pod: _Pod, runtime: str, model_type: str) -> bool:
        return (
            pod.healthy
            and pod.runtime in ("", runtime)
            and (not pod.model_types or model_type in pod.model_types)
        )

    def is_registered(self, model_id: str) -> bool:
        return model_id in self._models

    async def unregister(self, model_id: str) -> None:
        """Forget a model and unload all its copies."""
        model = self._models.pop(model_id, None)
        if model is None:
            return
        self.generation += 1
        pending = [t for t in (model.loading, model.adding) if t is not None]
        if pending:
            await asyncio.wait(pending)
        for pod_name in list(model.copies):
            pod = self._pods[pod_name]
            self._drop(pod, model_id)
            await self._unload_quietly(pod, model_id)

    def note_failure(
        self, model_id: str, pod: str, seconds_ago: float, error: LoadFailed | None
    ) -> None:
        """A failure record another replica made (``error`` None: the leader expired it)."""
        model = self._models.get(model_id)
        if model is None:
            return
        if error is None:
            model.failures.pop(pod, None)
        elif pod not in model.failures:
            model.failures[pod] = (self._clock() - seconds_ago, error)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Tell the other replicas, without waiting: if the store is down, they learn nothing."""
        task = asyncio.ensure_future(work)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def forget(self, model_id: str) -> None:
        """Take a model off the table without unloading it: another replica unregistered
        it and unloads its copies."""
        model = self._models.pop(model_id, None)
        if model is not None:
            self.generation += 1
            for pod_name in list(model.copies):
                self._drop(self._pods[pod_name], model_id)

    def status(self, model_id: str) -> ModelStatus:
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        loaded = len(model.loaded())
        if loaded:
            return ModelStatus(ModelState.LOADED, loaded)
        if model.loading is not None:
            return ModelStatus(ModelState.LOADING, 0)
        if model.last_error:
            return ModelStatus(ModelState.FAILED_TO_LOAD, 0, model.last_error)
        standby = model.ever_loaded or model.deferred
        return ModelStatus(ModelState.STANDBY if standby else ModelState.PENDING, 0)

    def handle(self, model_id: str) -> _Model:
        """The table's record of ``model_id``, for ``route_sole``; valid while ``generation`` is unchanged."""
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        return model

    def route_sole(self, model: _Model) -> tuple[str, _Entry] | None:
        """A request to a model with one copy, loaded: counts it and returns the copy's
        address and record. The record stays the model's only loaded copy until
        ``generation`` changes; meanwhile a ``hit_buffer`` may count further requests to it.
        None when the model has several copies or none loaded: ``route`` decides then.
        """
        entry = model.sole
        if entry is None or entry.state is not CopyState.LOADED:
            return None
        self._route(model, entry)
        self._hits += 1
        return self._pods[entry.pod].address, entry

    def hit_buffer(self, resolve: Callable[[Any], Any]) -> HitBuffer:
        """A buffer of hits on copies that ``route_sole`` returned, for a fast path
        that keeps its answer per name (gateway.adapters.extproc.processor)."""
        buffer = HitBuffer(self, resolve)
        self._buffers.append(buffer)
        return buffer

    def drain_soon(self) -> None:
        """Count the buffered hits at the next turn of the event loop (now if there is none)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.settle()
            return
        if not self._drain_scheduled:
            self._drain_scheduled = True
            loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        self.settle()

    def settle(self) -> None:
        """Count every buffered hit: done before anything reads the counts."""
        for buffer in self._buffers:
            buffer.drain()

    def count_hits(self, copies: Iterable[_Entry], times: Iterable[float]) -> None:
        """Requests served by ``copies`` (one each, in order) at ``times``."""
        models = self._models
        n = 0
        for entry, now in zip(copies, times, strict=True):
            model = models.get(entry.model_id)
            if model is not None:
                self._count(model, entry, now)
            n += 1
        self._hits += n

    @property
    def hits(self) -> int:
        """Requests whose model was loaded."""
        self.settle()
        return self._hits

    def lookup(self, model_id: str) -> str | None:
        """The address of a loaded copy (counted as a request to it), or None on a miss."""
        found = self.route(model_id)
        return None if found is None else found[0]

    def route(self, model_id: str) -> tuple[str, tuple[str, ...]] | None:
        """The hot path: the chosen copy's address and the model's other copies, or None on a miss."""
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        entry = model.sole
        if entry is not None:  # the common case, without building lists
            if entry.state is not CopyState.LOADED:
                return None
            self._route(model, entry)
            self._hits += 1
            return self._pods[entry.pod].address, ()
        loaded = model.loaded()
        if not loaded:
            return None
        self.settle()
        loaded.sort(key=lambda e: (e.busy(), e.last_used))
        entry = loaded[0]
        self._route(model, entry)
        self._hits += 1
        return self._pods[entry.pod].address, tuple(self._pods[e.pod].address for e in loaded[1:])

    def fallbacks(self, model_id: str, chosen: str) -> tuple[str, ...]:
        """The other loaded copies' addresses, best first: where a retry goes if ``chosen`` is dead."""
        model = self._models.get(model_id)
        if model is None or len(model.copies) < 2:
            return ()
        others = [e for e in model.loaded() if self._pods[e.pod].address != chosen]
        self.settle()
        others.sort(key=lambda e: (e.busy(), e.last_used))
        return tuple(self._pods[e.pod].address for e in others)

    def _route(self, model: _Model, entry: _Entry) -> None:
        """Count a request to ``entry`` now (after the buffered ones: times only move forward)."""
        self.settle()
        self._count(model, entry, self._clock())

    def _count(self, model: _Model, entry: _Entry, now: float) -> None:
        if self._half_life:  # picker.decayed_count(...) + 1, inline: this is the hot path
            model.demand = model.demand * math.exp2((model.demand_at - now) / self._half_life) + 1.0
            model.demand_at = now
            entry.demand = model.demand
        entry.last_used = now
        entry.routed += 1
        model.requests += 1

    def _demand(self, model: _Model, now: float) -> float:
        """The model's decayed request count now."""
        if not self._half_life:
            return 0.0
        self.settle()
        return picker.decayed_count(model.demand, model.demand_at, now, self._half_life)

    def _eviction_key(self, copy: Copy) -> float:
        """Eviction order, lowest first: an extra copy of a model gone quiet, then by
        recency and demand (plain LRU with a half-life of 0)."""
        model = self._models.get(copy.model_id)
        if model is not None and self._quiet_extra(model):
            return -math.inf
        if not self._half_life:
            return copy.last_used
        return picker.effective_last_use(copy.last_used, copy.demand, self._half_life)

    def _quiet_extra(self, model: _Model) -> bool:
        """More than one copy, and the model's traffic per copy under quiet_rate."""
        loaded = model.loaded()
        return (
            len(loaded) > 1
            and sum(e.rate for e in loaded) / len(loaded) < self._settings.quiet_rate
        )

    def _cache_age(self, view: PodView) -> float | None:
        """A pod's cache age for pick_pod: the eviction key of its cheapest evictable copy."""
        pod = self._pods[view.pod]
        self.settle()
        return picker.cache_age(
            [e.copy() for e in pod.copies.values()],
            now=self._clock(),
            churn_guard=self._settings.churn_guard,
            inflight=self._inflight(pod),
            key=self._eviction_key,
        )

    async def ensure_loaded(self, model_id: str, *, urgent: bool = True, evict: bool = True) -> str:
        """The address of a loaded copy, loading the model first on a miss.

        Concurrent callers share one load; a caller that gives up (a client
        that went away) does not cancel it for the others. ``urgent`` says a
        request is waiting: its load goes before proactive ones in the queue.
        ``evict=False`` loads only into free space (and defers otherwise).
        """
        address = self.lookup(model_id) if urgent else self._any_copy(model_id)
        if address is not None:
            return address
        model = self._models[model_id]
        if urgent:
            self.misses += 1
        if model.loading is None:
            model.urgent, model.may_evict = urgent, evict or urgent
            model.loading = asyncio.create_task(self._load(model), name=f"load {model_id}")
            model.loading.add_done_callback(lambda task: self._loaded(model, task))
        elif urgent and not model.urgent:
            model.urgent = model.may_evict = True
            for pod in self._pods.values():
                pod.queue.promote(model_id)
        pod = await asyncio.shield(model.loading)
        entry = model.copies.get(pod)
        if urgent and entry is not None:
            self._route(model, entry)
        return self._pods[pod].address

    def _any_copy(self, model_id: str) -> str | None:
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        loaded = model.loaded()
        return self._pods[loaded[0].pod].address if loaded else None

    def load_in_background(self, model_id: str) -> None:
        """Start loading a model nobody is waiting for yet (a fresh registration)."""
        task = asyncio.ensure_future(self.ensure_loaded(model_id, urgent=False, evict=False))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def ensure_copies(self, model_id: str, count: int) -> int:
        """Load ``model_id`` until it has ``count`` copies (as many as pods allow); returns how many it has."""
        await self.ensure_loaded(model_id, urgent=False)
        model = self._models[model_id]
        while len(model.loaded()) < count:
            if not await self._add_copy(model, "rollout: as many copies as the old version"):
                break
        return len(model.loaded())

    def _loaded(self, model: _Model, task: asyncio.Task[str]) -> None:
        urgent, model.loading, model.urgent, model.may_evict = model.urgent, None, False, True
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, _NoRoomNow) and not urgent:
            model.deferred = True  # nothing failed: the next request loads it
            return
        if isinstance(error, _NoPods) and not urgent:
            return  # still Pending: loaded when a pod becomes healthy
        if isinstance(error, StoreUnavailable):
            return  # nothing is wrong with the model: the next request tries again
        model.last_error = getattr(error, "message", str(error)) if error else ""

    async def _load(self, model: _Model) -> str:
        """Load the model's first copy once across gateway replicas: the replica that
        claims it loads; the others wait for the copy to show up in the pod's list."""
        model_id = model.spec.model_id
        deadline = self._clock() + self._settings.load_timeout
        while not await self._coordinator.claim(model_id):
            model.arrived.clear()
            if loaded := model.loaded():
                return loaded[0].pod
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(model.arrived.wait(), 0.5)
            if loaded := model.loaded():
                return loaded[0].pod
            if self._clock() > deadline:
                raise Unavailable(f"another gateway replica is still loading model '{model_id}'")
        try:
            if loaded := model.loaded():  # loaded by another replica meanwhile
                return loaded[0].pod
            return await self._load_claimed(model)
        finally:
            with contextlib.suppress(StoreUnavailable):  # the claim's lease ends it anyway
                await self._coordinator.release(model_id)

    async def _load_claimed(self, model: _Model) -> str:
        spec = model.spec
        now = self._clock()
        expiry = self._settings.failure_expiry
        model.failures = {p: f for p, f in model.failures.items() if now - f[0] < expiry}
        failed = set(model.failures)  # pods where this model failed recently
        full: set[str] = set()  # pods with no room right now
        errors: list[LoadFailed] = []
        # Copies inside the churn guard cannot be evicted: a request waits a
        # little for one to age out instead of failing; a proactive load defers.
        wait_until = time.monotonic() + self._settings.room_wait
        while len(errors) < self._settings.max_load_attempts:
            target = self._choose(model, exclude=failed | full)
            if target is None:
                if not full or not model.urgent or time.monotonic() >= wait_until:
                    break
                full.clear()
                await asyncio.sleep(0.2)
                continue
            try:
                await self._load_on(
                    self._pods[target.pod], model, urgent=model.urgent, may_evict=model.may_evict
                )
            except _NoRoom:
                full.add(target.pod)  # no failure record: the pod is only full for now
                continue
            except LoadFailed as exc:
                log.warning(
                    "loading %s on pod %s failed: %s", spec.model_id, target.pod, exc.message
                )
                failed.add(target.pod)
                model.failures[target.pod] = (self._clock(), exc)
                self._background(self._coordinator.failed(spec.model_id, target.pod, exc))
                self._events.load_failed(spec.model_id, target.pod, exc.message)
                errors.append(exc)
            else:
                return target.pod
        raise self._load_error(model, errors, no_room=bool(full))

    async def _add_copy(self, model: _Model, reason: str) -> bool:
        """Load one more copy of ``model`` on a pod that has none; False if none can take it."""
        target = self._choose(model, exclude=set(model.copies))
        if target is None:
            return False
        log.info("adding a copy of %s on pod %s (%s)", model.spec.model_id, target.pod, reason)
        try:
            await self._load_on(self._pods[target.pod], model, urgent=False, may_evict=True)
        except _NoRoom:
            return False
        except LoadFailed as exc:
            log.warning("adding a copy of %s failed: %s", model.spec.model_id, exc.message)
            return False
        return True

    def _choose(self, model: _Model, exclude: set[str]) -> PodView | None:
        """ModelMesh's choice of pod for a load, skipping pods far busier than the rest."""
        spec, size = model.spec, model.expected_size()
        pods = [p for p in self._pods.values() if self._fits(p, model.runtime, spec.model_type)]
        busy: set[str] = set()
        if pods:
            shortest = min(len(p.queue) for p in pods)
            rates = [p.rate() for p in pods]
            mean_rate = sum(rates) / len(pods)
            for pod, rate in zip(pods, rates, strict=True):
                if len(pod.queue) > shortest + self._settings.max_queue_gap or (
                    mean_rate > 0 and rate > self._settings.rate_skew * mean_rate
                ):
                    busy.add(pod.pod)
        views = [p.view() for p in pods]
        return picker.pick_pod(
            views, size, exclude=exclude | busy, age=self._cache_age
        ) or picker.pick_pod(views, size, exclude=exclude, age=self._cache_age)

    def _load_error(self, model: _Model, errors: list[LoadFailed], *, no_room: bool) -> Exception:
        spec, size = model.spec, model.expected_size()
        if not errors and model.failures:  # every pod it could go to failed it recently
            errors = [error for _, error in model.failures.values()]
        if errors:
            reasons = "; ".join(e.message for e in errors)
            kind = (
                ModelFormatError
                if all(isinstance(e, ModelFormatError) for e in errors)
                else LoadFailed
            )
            return kind(
                f"loading model '{spec.model_id}' failed on {len(errors)} pod(s): {reasons}"
            )
        healthy = [p for p in self._pods.values() if self._fits(p, model.runtime, spec.model_type)]
        if not healthy:
            which = f" of runtime '{model.runtime}'" if model.runtime else ""
            return _NoPods(
                f"no runtime pod{which} that serves format '{spec.model_type}' is available"
            )
        largest = max(p.capacity for p in healthy)
        if size > largest:
            return NoCapacity(
                f"model '{spec.model_id}' needs {size} bytes; the largest pod holds {largest} bytes"
            )
        if no_room:
            return _NoRoomNow(
                f"no pod can make room for model '{spec.model_id}' right now: "
                "their copies are busy or freshly loaded"
            )
        return Unavailable(f"no pod can take model '{spec.model_id}' now")

    async def _load_on(self, pod: _Pod, model: _Model, *, urgent: bool, may_evict: bool) -> None:
        spec, expected = model.spec, model.expected_size()
        async with pod.queue.slot(spec.model_id, urgent=urgent) as queued:
            # Plan evictions once holding the slot: the table may have changed while queued.
            self.settle()
            view = pod.view()
            evict = (
                []
                if view.free >= expected
                else picker.plan_evictions(
                    view,
                    [e.copy() for e in pod.copies.values()],
                    expected,
                    now=self._clock(),
                    churn_guard=self._settings.churn_guard,
                    inflight=self._inflight(pod),
                    key=self._eviction_key,
                )
            )
            if evict is None or (evict and not may_evict):
                log.info(
                    "pod %s has no room for %s now (%s)",
                    pod.pod,
                    spec.model_id,
                    "a proactive load evicts nothing"
                    if evict
                    else "its copies are busy or freshly loaded",
                )
                raise _NoRoom()
            for victim in evict:
                idle = self._clock() - victim.last_used
                log.info(
                    "evicting %s from pod %s to make room for %s: lowest recency and demand (idle %.1f s, %d bytes)",
                    victim.model_id,
                    pod.pod,
                    spec.model_id,
                    idle,
                    victim.size,
                )
                self._drop(pod, victim.model_id)
                self._events.evicted(victim.model_id, pod.pod, "room")
                await self._unload_quietly(pod, victim.model_id)
            reason = (
                "it has room, most free space"
                if view.free >= expected
                else "all pods full, oldest cache"
            )
            log.info(
                "loading %s on pod %s (%s): %d bytes expected, %d free of %d, %d models, queued %.0f ms",
                spec.model_id,
                pod.pod,
                reason,
                expected,
                view.free,
                view.capacity,
                view.model_count,
                1000 * queued,
            )
            entry = self._put(pod, model, CopyState.LOADING, expected, self._clock())
            started = time.perf_counter()
            try:
                size = await self._client.load(
                    pod.address, spec, self._settings.load_timeout, expected
                )
            except PodFull as exc:
                self._drop(pod, spec.model_id)
                log.info("pod %s refused %s: %s", pod.pod, spec.model_id, exc.message)
                raise _NoRoom() from exc
            except BaseException:
                self._drop(pod, spec.model_id)
                raise
            if self._models.get(spec.model_id) is not model:  # unregistered meanwhile
                self._drop(pod, spec.model_id)
                await self._unload_quietly(pod, spec.model_id)
                raise LoadFailed(f"model '{spec.model_id}' was deleted while loading")
            seconds = time.perf_counter() - started
            now = self._clock()
            entry.state, entry.size, entry.loaded_at, entry.last_used = (
                CopyState.LOADED,
                size or entry.size,
                now,
                now,
            )
            entry.demand = self._demand(model, now)
            model.ever_loaded, model.size = True, entry.size
            self._events.loaded(spec.model_id, pod.pod, seconds, queued)
            log.info(
                "loaded %s on pod %s in %.0f ms (%d bytes, %d expected)",
                spec.model_id,
                pod.pod,
                1000 * seconds,
                entry.size,
                expected,
            )
            if entry.size > expected:
                await self._fit(pod, spec.model_id)

    async def _fit(self, pod: _Pod, newcomer: str = "") -> None:
        """A pod over capacity (a load turned out larger than expected) evicts LRU copies until it fits."""
        view = pod.view()
        if view.used <= view.capacity:
            return
        self.settle()
        others = [e.copy() for e in pod.copies.values() if e.model_id != newcomer]
        evict = (
            picker.plan_evictions(
                PodView(view.pod, view.capacity, view.used, view.model_count),
                others,
                0,
                now=self._clock(),
                churn_guard=self._settings.churn_guard,
                inflight=self._inflight(pod),
                key=self._eviction_key,
            )
            or []
        )
        for victim in evict:
            log.info(
                "evicting %s from pod %s: the pod is over capacity (a model was larger than expected)",
                victim.model_id,
                pod.pod,
            )
            self._drop(pod, victim.model_id)
            self._events.evicted(victim.model_id, pod.pod, "room")
            await self._unload_quietly(pod, victim.model_id)

    def _inflight(self, pod: _Pod) -> dict[str, int]:
        """Requests in flight per copy for eviction: the pod's count, or 1 if just routed to."""
        self.settle()
        recent = self._clock() - self._settings.recent_use_guard
        return {
            e.model_id: e.inflight + (e.last_used > recent and e.routed > 0)
            for e in pod.copies.values()
        }

    def _put(self, pod: _Pod, model: _Model, state: CopyState, size: int, now: float) -> _Entry:
        entry = _Entry(model.spec.model_id, pod.pod, state, size, now, now)
        pod.copies[entry.model_id] = entry
        model.copies[pod.pod] = entry
        model.sole = entry if len(model.copies) == 1 else None
        self.generation += 1
        return entry

    def _drop(self, pod: _Pod, model_id: str) -> None:
        if pod.copies.pop(model_id, None) is not None:
            self.generation += 1
        model = self._models.get(model_id)
        if model is not None:
            model.copies.pop(pod.pod, None)
            model.sole = next(iter(model.copies.values())) if len(model.copies) == 1 else None

    async def _unload_quietly(self, pod: _Pod, model_id: str) -> None:
        pod.unloading.add(model_id)  # until the pod's own list no longer has it
        try:
            await self._client.unload(pod.address, model_id)
        except Exception as exc:  # the copy is gone from the table either way
            pod.unloading.discard(model_id)
            log.warning("unloading %s from pod %s failed: %s", model_id, pod.pod, exc)

    # -- views -----------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """The placement table for people: per pod and per model."""
        self.settle()
        now = self._clock()
        pods = []
        for pod in self._pods.values():
            view = pod.view()
            pods.append(
                {
                    "pod": pod.pod,
                    "name": pod.name or pod.pod,
                    "runtime": pod.runtime,
                    "healthy": pod.healthy,
                    "capacity_bytes": view.capacity,
                    "used_bytes": view.used,
                    "load_queue": {"running": pod.queue.running, "waiting": pod.queue.waiting},
                    "models": [
                        {
                            "model_id": e.model_id,
                            "state": e.state.value,
                            "size_bytes": e.size,
                            "last_used_seconds_ago": round(now - e.last_used, 3),
                            "in_flight": e.inflight,  # as the pod reported it (routing also counts what it sent since)
                            "requests": e.routed,
                            "requests_per_second": round(e.rate, 2),
                        }
                        for e in sorted(pod.copies.values(), key=lambda e: e.model_id)
                    ]
                    + [
                        {
                            "model_id": model_id,
                            "state": CopyState.FAILED.value,
                            "reason": error.message,
                            "failed_seconds_ago": round(now - when, 3),
                        }
                        for model_id, when, error in self._failures_on(pod.pod)
                    ],
                }
            )
        models = {
            model_id: {
                "state": self.status(model_id).state.value,
                "copies": sorted(m.copies),
                "requests": m.requests,
            }
            for model_id, m in sorted(self._models.items())
        }
        return {"leader": self._coordinator.leader(), "pods": pods, "models": models}

    def _failures_on(self, pod: str) -> list[tuple[str, float, LoadFailed]]:
        found = [
            (model_id, *m.failures[pod])
            for model_id, m in self._models.items()
            if pod in m.failures
        ]
        return sorted(found, key=lambda f: f[0])

    def model_requests(self) -> dict[str, int]:
        self.settle()
        return {model_id: m.requests for model_id, m in self._models.items()}

    def pod_usage(self) -> dict[str, tuple[int, int, int]]:
        """Per pod: (capacity, used bytes, copies)."""
        return {p.pod: (p.capacity, p.view().used, len(p.copies)) for p in self._pods.values()}
