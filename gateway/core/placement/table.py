"""The placement table: pods, the copies they hold, the models registered.

One ``Table`` is shared by the engine's parts (gateway.core.placement): hits
count requests into it, the loader puts and drops copies, the monitor updates
what pods report. It also owns what every decision must read fresh: the
buffered hits are counted (``settle``) before any count is read, and
``generation`` changes whenever a model id starts or stops naming a record or
a copy comes or goes, so that what a caller kept since is known to be stale.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.core import picker
from gateway.core.domain import Copy, CopyState, ModelSpec, ModelState, ModelStatus, PodView
from gateway.core.errors import LoadFailed, ModelNotFound
from gateway.core.load_queue import LoadQueue
from gateway.core.placement.ports import PlacementEvents
from gateway.core.placement.settings import PlacementSettings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CopyRecord:
    """One copy of a model on one pod, as this gateway knows it."""

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
    adapter: bool = False  # an adapter: counted against the pod's adapter room, not capacity
    # an adapter's base model's copy on the same pod (a use of the adapter is one of it)
    under: CopyRecord | None = None

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
class PodRecord:
    pod: str  # its address, the table's key
    address: str
    queue: LoadQueue
    capacity: int = 0
    model_types: tuple[str, ...] = ()
    healthy: bool = False
    copies: dict[str, CopyRecord] = field(default_factory=dict)
    reported: dict[str, int] = field(default_factory=dict)  # the pod's own list: model id -> size
    unloading: set[str] = field(default_factory=set)  # unloads sent and not yet gone from its list
    runtime: str = ""  # the ServingRuntime the pod serves ("" : any)
    name: str = ""  # as it registered (its pod id)
    rest_address: str = ""  # "host:port" of its OIP REST listener, from its status ("": none)
    # "host:port" of the gRPC server that answers its inference requests, from its status
    # ("": ``address`` itself; a real MLServer's beside the pod's adapter otherwise)
    data_address: str = ""
    # its data plane picks the model by the request's own name (MLServer), not mm-model-id
    named_in_request: bool = False
    missed_checks: int = 0  # health checks in a row it left unanswered (0: it answers)
    max_adapters: int = 0  # adapters it may hold at once (0: none), from its status
    adapter_capacity: int = 0  # bytes its adapters may take together

    def view(self) -> PodView:
        """Capacity and use of its models (adapters apart: ``adapters``); no cache age
        (Table.cache_age, asked for only when pods are full)."""
        models = [c for c in self.copies.values() if not c.adapter]
        return PodView(self.pod, self.capacity, sum(map(_SIZE, models)), len(models), self.healthy)

    def adapters(self) -> list[CopyRecord]:
        return [c for c in self.copies.values() if c.adapter]

    def rate(self) -> float:
        return float(sum(map(_RATE, self.copies.values())))


@dataclass(slots=True)
class ModelRecord:
    spec: ModelSpec
    # What a hit reads and writes, first, so that they share cache lines.
    sole: CopyRecord | None = None  # the only copy, when there is exactly one (Table.put/drop)
    demand: float = 0.0  # requests, decayed with eviction_half_life, as of demand_at
    demand_at: float = 0.0
    requests: int = 0  # requests routed to any copy, ever
    copies: dict[str, CopyRecord] = field(default_factory=dict)  # pod -> copy
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
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # a pod reported a new copy
    runtime: str = ""  # the ServingRuntime serving it ("": any pod)
    last_error: str = ""

    def loaded(self) -> list[CopyRecord]:
        return [e for e in self.copies.values() if e.state is CopyState.LOADED]

    def expected_size(self) -> int:
        return self.size or self.spec.predicted_size


class Drainable(Protocol):
    """A buffer of hits not yet counted (gateway.core.placement.hits.HitBuffer)."""

    def drain(self) -> None: ...


class Table:
    def __init__(
        self, settings: PlacementSettings, clock: Callable[[], float], events: PlacementEvents
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.events = events
        self.half_life = settings.eviction_half_life
        self.pods: dict[str, PodRecord] = {}
        self.models: dict[str, ModelRecord] = {}
        self.generation = 0
        # an adapter's base model name -> the concrete id serving it (the registry's resolve)
        self.resolve_base: Callable[[str], str] = lambda name: name
        self.hits = 0  # requests whose model was loaded, counted (settle counts the buffered ones)
        self.misses = 0  # requests that had to wait for a load
        self._buffers: list[Drainable] = []
        self._drain_scheduled = False

    # -- buffered hits -----------------------------------------------------

    def add_buffer(self, buffer: Drainable) -> None:
        self._buffers.append(buffer)

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

    def count_hits(self, copies: Iterable[CopyRecord], times: Iterable[float]) -> None:
        """Requests served by ``copies`` (one each, in order) at ``times``."""
        models = self.models
        n = 0
        for entry, now in zip(copies, times, strict=True):
            model = models.get(entry.model_id)
            if model is not None:
                self.count(model, entry, now)
            n += 1
        self.hits += n

    def count_now(self, model: ModelRecord, entry: CopyRecord) -> None:
        """Count a request to ``entry`` now (after the buffered ones: times only move forward)."""
        self.settle()
        self.count(model, entry, self.clock())

    def count(self, model: ModelRecord, entry: CopyRecord, now: float) -> None:
        if self.half_life:  # picker.decayed_count(...) + 1, inline: this is the hot path
            model.demand = model.demand * math.exp2((model.demand_at - now) / self.half_life) + 1.0
            model.demand_at = now
            entry.demand = model.demand
        entry.last_used = now
        entry.routed += 1
        model.requests += 1
        if entry.under is not None:  # the base serves every request of its adapters
            entry.under.last_used = now

    def demand(self, model: ModelRecord, now: float) -> float:
        """The model's decayed request count now."""
        if not self.half_life:
            return 0.0
        self.settle()
        return picker.decayed_count(model.demand, model.demand_at, now, self.half_life)

    # -- pods, models and copies ---------------------------------------------

    def add_pod(self, address: str, name: str = "", runtime: str = "") -> None:
        pod = self.pods.get(address)
        if pod is None:
            pod = PodRecord(address, address, LoadQueue(self.settings.loads_per_pod))
            self.pods[address] = pod
        pod.name, pod.runtime = name or address, runtime

    @staticmethod
    def fits(pod: PodRecord, runtime: str, model_type: str) -> bool:
        """Whether ``pod`` could load a model of this runtime and type now."""
        return (
            pod.healthy
            and not pod.missed_checks
            and pod.runtime in ("", runtime)
            and (not pod.model_types or model_type in pod.model_types)
        )

    def register(self, spec: ModelSpec, *, standby: bool, runtime: str) -> None:
        model = self.models.get(spec.model_id)
        if model is None:
            # an adapter loads on its first request: Standby until then
            model = self.models[spec.model_id] = ModelRecord(
                spec, deferred=standby or bool(spec.base)
            )
            self.generation += 1
        elif model.spec != spec:
            model.spec = spec
        model.runtime = runtime

    def unlist(self, model_id: str) -> ModelRecord | None:
        """Stop ``model_id`` naming a record; its copies stay on the pods' lists (and count
        against their room) until the caller drops them. The record, if there was one."""
        model = self.models.pop(model_id, None)
        if model is not None:
            self.generation += 1
        return model

    def forget(self, model_id: str) -> None:
        """Take a model and its copies off the table, unloading nothing."""
        model = self.unlist(model_id)
        if model is not None:
            for pod_name in list(model.copies):
                self.drop(self.pods[pod_name], model_id)

    def model(self, model_id: str) -> ModelRecord:
        model = self.models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        return model

    def put(
        self, pod: PodRecord, model: ModelRecord, state: CopyState, size: int, now: float
    ) -> CopyRecord:
        entry = CopyRecord(model.spec.model_id, pod.pod, state, size, now, now)
        if model.spec.base:
            entry.adapter = True
            entry.under = pod.copies.get(self.base_id(model.spec))
        else:  # adapters a pod reported before their base (a gateway that restarted)
            for other in pod.copies.values():
                spec = self.models[other.model_id].spec if other.model_id in self.models else None
                if (
                    other.adapter
                    and other.under is None
                    and spec
                    and self.base_id(spec) == entry.model_id
                ):
                    other.under = entry
        pod.copies[entry.model_id] = entry
        model.copies[pod.pod] = entry
        model.sole = entry if len(model.copies) == 1 else None
        self.generation += 1
        return entry

    def drop(self, pod: PodRecord, model_id: str) -> None:
        """Take a copy off the table, and with a base model's copy its adapters on that pod
        (the pod unloads them with their base: they are marked as being unloaded)."""
        entry = pod.copies.pop(model_id, None)
        if entry is not None:
            self.generation += 1
        model = self.models.get(model_id)
        if model is not None:
            model.copies.pop(pod.pod, None)
            model.sole = next(iter(model.copies.values())) if len(model.copies) == 1 else None
        if entry is None or entry.adapter:
            return
        for adapter in [c for c in pod.copies.values() if c.under is entry]:
            self.drop(pod, adapter.model_id)
            pod.unloading.add(adapter.model_id)
            self.events.evicted(
                adapter.model_id, pod.pod, "base unloaded", self.clock() - adapter.last_used
            )

    def base_id(self, spec: ModelSpec) -> str:
        """The concrete id of an adapter's base model now ("" if it names none that exists)."""
        try:
            return self.resolve_base(spec.base)
        except ModelNotFound:
            return ""

    def lose_copies(self, pod: PodRecord) -> None:
        """The pod is gone or unhealthy: none of its copies can serve."""
        pod.healthy = False
        now = self.clock()
        for model_id, copy in list(pod.copies.items()):
            self.drop(pod, model_id)
            self.events.evicted(model_id, pod.pod, "pod lost", now - copy.last_used)

    # -- what evictions and placements read -----------------------------------

    def inflight(self, pod: PodRecord) -> dict[str, int]:
        """Requests in flight per copy for eviction: the pod's count, or 1 if just routed to."""
        self.settle()
        recent = self.clock() - self.settings.recent_use_guard
        busy = {
            e.model_id: e.inflight + (e.last_used > recent and e.routed > 0)
            for e in pod.copies.values()
        }
        for entry in pod.copies.values():  # a base is busy with its adapters' requests
            if entry.under is not None and entry.under.model_id in busy:
                busy[entry.under.model_id] += busy[entry.model_id]
        return busy

    def eviction_key(self, copy: Copy) -> float:
        """Eviction order, lowest first: an extra copy of a model gone quiet, then by
        recency and demand (plain LRU with a half-life of 0)."""
        model = self.models.get(copy.model_id)
        if model is not None and self.quiet_extra(model):
            return -math.inf
        if not self.half_life:
            return copy.last_used
        return picker.effective_last_use(copy.last_used, copy.demand, self.half_life)

    def quiet_extra(self, model: ModelRecord) -> bool:
        """More than one copy, and the model's traffic per copy under quiet_rate."""
        loaded = model.loaded()
        return (
            len(loaded) > 1 and sum(e.rate for e in loaded) / len(loaded) < self.settings.quiet_rate
        )

    def cache_age(self, view: PodView) -> float | None:
        """A pod's cache age for pick_pod: the eviction key of its cheapest evictable copy."""
        pod = self.pods[view.pod]
        self.settle()
        return picker.cache_age(
            [e.copy() for e in pod.copies.values() if not e.adapter],
            now=self.clock(),
            churn_guard=self.settings.churn_guard,
            inflight=self.inflight(pod),
            key=self.eviction_key,
        )

    def plan_evictions(
        self, pod: PodRecord, size: int, *, excluding: str = ""
    ) -> list[Copy] | None:
        """The copies to unload from ``pod`` so that ``size`` more bytes fit (picker's plan)."""
        self.settle()
        view = pod.view()
        return picker.plan_evictions(
            view,
            [e.copy() for e in pod.copies.values() if e.model_id != excluding and not e.adapter],
            size,
            now=self.clock(),
            churn_guard=self.settings.churn_guard,
            inflight=self.inflight(pod),
            key=self.eviction_key,
        )

    def plan_adapter_evictions(self, pod: PodRecord, size: int) -> list[Copy] | None:
        """The adapters to unload from ``pod`` so that one more of ``size`` bytes fits its
        adapter room, in the order models are evicted (``eviction_key``; picker's plan)."""
        self.settle()
        return picker.plan_adapter_evictions(
            [e.copy() for e in pod.adapters()],
            pod.max_adapters,
            pod.adapter_capacity,
            size,
            now=self.clock(),
            churn_guard=self.settings.churn_guard,
            inflight=self.inflight(pod),
            key=self.eviction_key,
        )

    # -- views -----------------------------------------------------------------

    def status(self, model_id: str) -> ModelStatus:
        model = self.model(model_id)
        loaded = len(model.loaded())
        if loaded:
            return ModelStatus(ModelState.LOADED, loaded)
        if model.loading is not None:
            return ModelStatus(ModelState.LOADING, 0)
        if model.last_error:
            return ModelStatus(ModelState.FAILED_TO_LOAD, 0, model.last_error)
        standby = model.ever_loaded or model.deferred
        return ModelStatus(ModelState.STANDBY if standby else ModelState.PENDING, 0)

    def snapshot(self, *, leader: bool) -> dict[str, object]:
        """The placement table for people: per pod and per model."""
        self.settle()
        now = self.clock()
        pods = []
        for pod in self.pods.values():
            view = pod.view()
            copies: list[dict[str, object]] = [
                {
                    "model_id": e.model_id,
                    "state": e.state.value,
                    "size_bytes": e.size,
                    "last_used_seconds_ago": round(now - e.last_used, 3),
                    # as the pod reported it (routing also counts what it sent since)
                    "in_flight": e.inflight,
                    "requests": e.routed,
                    "requests_per_second": round(e.rate, 2),
                    **({"adapter_of": e.under.model_id if e.under else ""} if e.adapter else {}),
                }
                for e in sorted(pod.copies.values(), key=lambda e: e.model_id)
            ]
            failed: list[dict[str, object]] = [
                {
                    "model_id": model_id,
                    "state": CopyState.FAILED.value,
                    "reason": error.message,
                    "failed_seconds_ago": round(now - when, 3),
                }
                for model_id, when, error in self._failures_on(pod.pod)
            ]
            pods.append(
                {
                    "pod": pod.pod,
                    "name": pod.name or pod.pod,
                    "runtime": pod.runtime,
                    # where Envoy sends its inference: the pod, or the MLServer beside it
                    "data_address": pod.data_address or pod.address,
                    "rest_address": pod.rest_address,
                    "healthy": pod.healthy,
                    "capacity_bytes": view.capacity,
                    "used_bytes": view.used,
                    "adapters": {
                        "held": len(adapters := pod.adapters()),
                        "max": pod.max_adapters,
                        "used_bytes": sum(a.size for a in adapters),
                        "capacity_bytes": pod.adapter_capacity,
                    },
                    "load_queue": {"running": pod.queue.running, "waiting": pod.queue.waiting},
                    "models": copies + failed,
                }
            )
        models = {
            model_id: {
                "state": self.status(model_id).state.value,
                "copies": sorted(m.copies),
                "requests": m.requests,
            }
            for model_id, m in sorted(self.models.items())
        }
        return {"leader": leader, "pods": pods, "models": models}

    def _failures_on(self, pod: str) -> list[tuple[str, float, LoadFailed]]:
        found = [
            (model_id, *m.failures[pod]) for model_id, m in self.models.items() if pod in m.failures
        ]
        return sorted(found, key=lambda f: f[0])
