"""Getting a model onto a pod: choose the pod, make room, load, retry elsewhere.

ModelMesh's miss path. ``ensure_loaded`` shares one load among every request
waiting for the model (and, through the Coordinator, among gateway replicas);
the pod is ``picker.pick_pod``'s choice among the pods of the model's runtime,
skipping pods far busier than the rest; room is made by evicting what
``picker.plan_evictions`` names (recency weighed by demand, never a copy in
flight or within the churn guard); a failed load is retried on another pod, up
to ``max_load_attempts``, and the failure keeps that pod out for
``failure_expiry``. A failure of the model itself (ModelNotInStorage: its file
or object is not there; ModelFormatError: no runtime can read it) is not retried:
every pod reads the same storage and would fail alike, after evicting copies
to make room for it.

Adapters (a ModelSpec with a ``base``) are the same cache one level down: an adapter
loads on its first request (never proactively), onto a pod that holds its base
model (which is loaded first when no pod does), the pod with the most free adapter
room, else the one whose next victim is oldest; room is made by evicting the pod's
adapters in the order models are evicted (recency weighed by demand; least recently
used with ``eviction_half_life`` 0, as vLLM's LoRA cache: benchmarks.llm_serving
measures both against Belady's), by ``picker.plan_adapter_evictions``, apart from its
model capacity. Where every pod holding the base is full of adapters, the base first
gets a copy on a pod with free room, if one has it. Evicting a base takes its adapters
with it, and a base is busy (never evicted) while its adapters serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine
from typing import Any

from gateway.core import picker
from gateway.core.domain import CopyState, PodView
from gateway.core.errors import (
    LoadFailed,
    ModelFormatError,
    ModelNotFound,
    ModelNotInStorage,
    NoCapacity,
    PodFull,
    StoreUnavailable,
    Unavailable,
)
from gateway.core.placement.hits import Hits
from gateway.core.placement.ports import Coordinator, PodClient
from gateway.core.placement.table import ModelRecord, PodRecord, Table

log = logging.getLogger(__name__)


class NoRoom(Exception):
    """The pod cannot make room now (its copies are busy or fresh): not a failure of the model."""


class NoRoomNow(Unavailable):
    """No pod can make room now; a later request may succeed."""


class NoPods(Unavailable):
    """No pod is healthy (yet)."""


def in_background(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` without waiting for it (telling other replicas: if the store is down,
    they learn nothing, and nothing here waits for it)."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


class Loader:
    def __init__(
        self, table: Table, hits: Hits, client: PodClient, coordinator: Coordinator
    ) -> None:
        self._table = table
        self._hits = hits
        self._client = client
        self._coordinator = coordinator
        self._settings = table.settings
        self._events = table.events
        self._pods = table.pods
        self._models = table.models

    async def ensure_loaded(self, model_id: str, *, urgent: bool = True, evict: bool = True) -> str:
        """The address of a loaded copy, loading the model first on a miss.

        Concurrent callers share one load; a caller that gives up (a client
        that went away) does not cancel it for the others. ``urgent`` says a
        request is waiting: its load goes before proactive ones in the queue.
        ``evict=False`` loads only into free space (and defers otherwise).
        """
        address = self._hits.lookup(model_id) if urgent else self._any_copy(model_id)
        if address is not None:
            return address
        model = self._table.model(model_id)
        missed_at = self._table.clock()
        if urgent:
            self._table.misses += 1
        if model.loading is None:
            model.urgent, model.may_evict = urgent, evict or urgent
            model.loading = asyncio.create_task(self._load(model), name=f"load {model_id}")
            model.loading.add_done_callback(lambda task: self._loaded(model, task))
        elif urgent and not model.urgent:
            model.urgent = model.may_evict = True
            for pod in self._pods.values():
                pod.queue.promote(model_id)
        holder = await asyncio.shield(model.loading)
        entry = model.copies.get(holder)
        if urgent and entry is not None:
            self._table.count_now(model, entry)
            self._events.waited(model_id, self._table.clock() - missed_at)
        return self._pods[holder].address

    def _any_copy(self, model_id: str) -> str | None:
        loaded = self._table.model(model_id).loaded()
        return self._pods[loaded[0].pod].address if loaded else None

    def load_in_background(self, model_id: str) -> None:
        """Start loading a model nobody is waiting for yet (a fresh registration); an
        adapter waits for its first request."""
        if self._table.model(model_id).spec.base:
            return
        task = asyncio.ensure_future(self.ensure_loaded(model_id, urgent=False, evict=False))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def ensure_copies(self, model_id: str, count: int) -> int:
        """Load ``model_id`` until it has ``count`` copies (as many as pods allow);
        returns how many it has."""
        await self.ensure_loaded(model_id, urgent=False)
        model = self._table.model(model_id)
        while len(model.loaded()) < count:
            if not await self.add_copy(model, "rollout: as many copies as the old version"):
                break
        return len(model.loaded())

    async def unregister(self, model_id: str) -> None:
        """Forget a model, once its loads are over, and unload all its copies."""
        model = self._table.unlist(model_id)
        if model is None:
            return
        pending = [t for t in (model.loading, model.adding) if t is not None]
        if pending:
            await asyncio.wait(pending)
        for pod_name in list(model.copies):
            pod = self._pods[pod_name]
            self._table.drop(pod, model_id)
            await self.unload_quietly(pod, model_id)

    def _loaded(self, model: ModelRecord, task: asyncio.Task[str]) -> None:
        urgent, model.loading, model.urgent, model.may_evict = model.urgent, None, False, True
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, NoRoomNow) and not urgent:
            model.deferred = True  # nothing failed: the next request loads it
            return
        if isinstance(error, NoPods) and not urgent:
            return  # still Pending: loaded when a pod becomes healthy
        if isinstance(error, StoreUnavailable):
            return  # nothing is wrong with the model: the next request tries again
        model.last_error = getattr(error, "message", str(error)) if error else ""

    async def _load(self, model: ModelRecord) -> str:
        """Load the model's first copy once across gateway replicas: the replica that
        claims it loads; the others wait for the copy to show up in the pod's list."""
        model_id = model.spec.model_id
        deadline = self._table.clock() + self._settings.load_timeout
        while not await self._coordinator.claim(model_id):
            model.arrived.clear()
            if loaded := model.loaded():
                return loaded[0].pod
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(model.arrived.wait(), 0.5)
            if loaded := model.loaded():
                return loaded[0].pod
            if self._table.clock() > deadline:
                raise Unavailable(f"another gateway replica is still loading model '{model_id}'")
        try:
            if loaded := model.loaded():  # loaded by another replica meanwhile
                return loaded[0].pod
            return await self._load_claimed(model)
        finally:
            with contextlib.suppress(StoreUnavailable):  # the claim's lease ends it anyway
                await self._coordinator.release(model_id)

    async def _load_claimed(self, model: ModelRecord) -> str:
        spec = model.spec
        if spec.base:
            await self._ensure_base(model)
        now = self._table.clock()
        expiry = self._settings.failure_expiry
        model.failures = {p: f for p, f in model.failures.items() if now - f[0] < expiry}
        failed = set(model.failures)  # pods where this model failed recently
        full: set[str] = set()  # pods with no room right now
        errors: list[LoadFailed] = []
        # Copies inside the churn guard cannot be evicted: a request waits a
        # little for one to age out instead of failing; a proactive load defers.
        wait_until = time.monotonic() + self._settings.room_wait
        while len(errors) < self._settings.max_load_attempts:
            target = self.choose(model, exclude=failed | full)
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
            except NoRoom:
                full.add(target.pod)  # no failure record: the pod is only full for now
                continue
            except LoadFailed as exc:
                log.warning(
                    "loading %s on pod %s failed: %s", spec.model_id, target.pod, exc.message
                )
                failed.add(target.pod)
                model.failures[target.pod] = (self._table.clock(), exc)
                in_background(self._coordinator.failed(spec.model_id, target.pod, exc))
                self._events.load_failed(spec.model_id, target.pod, exc.message)
                errors.append(exc)
                if isinstance(exc, ModelNotInStorage | ModelFormatError):
                    # the model's own failure: every pod reads the same storage, so another
                    # would fail alike, after evicting copies to make room for it
                    log.info("%s is not tried on other pods: %s", spec.model_id, exc.message)
                    break
            else:
                return target.pod
        raise self._load_error(model, errors, no_room=bool(full))

    async def _ensure_base(self, model: ModelRecord) -> None:
        """An adapter's base model loaded on some pod (loaded now if it is on none)."""
        spec = model.spec
        base_id = self._table.base_id(spec)
        if not base_id or base_id not in self._models:
            raise ModelNotFound(
                spec.model_id,
                f"adapter '{spec.model_id}' names base model '{spec.base}', "
                "which is not registered (or cannot be served)",
            )
        base = self._models[base_id]
        if base.loaded():
            if not any(self._adapter_room(pod, model) for pod in self._holders(base)):
                await self._spread(base)
            return
        try:
            await self.ensure_loaded(base_id, urgent=model.urgent, evict=model.may_evict)
        except LoadFailed as exc:
            raise LoadFailed(
                f"adapter '{spec.model_id}': its base model '{spec.base}' cannot be loaded: "
                f"{exc.message}"
            ) from exc

    def _holders(self, base: ModelRecord) -> list[PodRecord]:
        return [self._pods[c.pod] for c in base.loaded() if c.pod in self._pods]

    def _adapter_room(self, pod: PodRecord, model: ModelRecord) -> bool:
        """Whether ``pod`` has a free adapter slot and the bytes for ``model``."""
        held = pod.adapters()
        return (
            len(held) < pod.max_adapters
            and sum(a.size for a in held) + model.expected_size() <= pod.adapter_capacity
        )

    async def _spread(self, base: ModelRecord) -> None:
        """Every pod holding ``base`` has its adapter room full: add a copy of the base where
        it fits without evicting anything, so that its adapters spread over more pods
        instead of evicting each other (one such load at a time per base)."""

        async def add() -> None:
            await self.add_copy(base, "its adapters fill the pods that hold it", may_evict=False)

        if base.adding is None:
            base.adding = asyncio.ensure_future(add())
            base.adding.add_done_callback(lambda _: setattr(base, "adding", None))
        await asyncio.shield(base.adding)

    async def add_copy(self, model: ModelRecord, reason: str, *, may_evict: bool = True) -> bool:
        """Load one more copy of ``model`` on a pod that has none; False if none can take it
        (``may_evict`` False: none has the room free)."""
        target = self.choose(model, exclude=set(model.copies))
        if target is None and model.spec.base:  # every pod holding the base has the adapter
            base = self._models.get(self._table.base_id(model.spec))
            if base is not None and all(pod.pod in model.copies for pod in self._holders(base)):
                await self._spread(base)
                target = self.choose(model, exclude=set(model.copies))
        if target is None or (not may_evict and target.free < model.expected_size()):
            return False
        log.info("adding a copy of %s on pod %s (%s)", model.spec.model_id, target.pod, reason)
        try:
            await self._load_on(self._pods[target.pod], model, urgent=False, may_evict=may_evict)
        except NoRoom:
            return False
        except LoadFailed as exc:
            log.warning("adding a copy of %s failed: %s", model.spec.model_id, exc.message)
            return False
        return True

    def choose(self, model: ModelRecord, exclude: set[str]) -> PodView | None:
        """ModelMesh's choice of pod for a load, skipping pods far busier than the rest."""
        if model.spec.base:
            return self._choose_for_adapter(model, exclude)
        spec, size = model.spec, model.expected_size()
        fits = self._table.fits
        pods = [p for p in self._pods.values() if fits(p, model.runtime, spec.model_type)]
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
        age = self._table.cache_age
        return picker.pick_pod(views, size, exclude=exclude | busy, age=age) or picker.pick_pod(
            views, size, exclude=exclude, age=age
        )

    def _choose_for_adapter(self, model: ModelRecord, exclude: set[str]) -> PodView | None:
        """A pod holding the adapter's base: the most free adapter room first, else the one
        whose next victim is oldest (the eviction key), else (every adapter busy or fresh)
        any holder: its load finds no room, and the request waits for some."""
        base_id = self._table.base_id(model.spec)
        size = model.expected_size()
        fits = self._table.fits
        best: tuple[float, PodRecord] | None = None
        for pod in self._pods.values():
            base = pod.copies.get(base_id)
            if (
                pod.pod in exclude
                or base is None
                or base.state is not CopyState.LOADED
                or not fits(pod, model.runtime, model.spec.model_type)
                or pod.max_adapters <= 0
            ):
                continue
            held = pod.adapters()
            free_slots = pod.max_adapters - len(held)
            free_bytes = pod.adapter_capacity - sum(a.size for a in held)
            if free_slots > 0 and free_bytes >= size:
                score = -float(free_slots)  # free room: the most first
            else:
                plan = self._table.plan_adapter_evictions(pod, size)
                # then the oldest victim; last, a pod whose adapters cannot go now
                score = min(map(self._table.eviction_key, plan)) if plan else math.inf
            if best is None or score < best[0]:
                best = (score, pod)
        return best[1].view() if best is not None else None

    def _load_error(
        self, model: ModelRecord, errors: list[LoadFailed], *, no_room: bool
    ) -> Exception:
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
        fits = self._table.fits
        healthy = [p for p in self._pods.values() if fits(p, model.runtime, spec.model_type)]
        if spec.base and healthy:
            base_id = self._table.base_id(spec)
            holders = [p for p in healthy if base_id in p.copies]
            if holders and not any(p.max_adapters for p in holders):
                return NoCapacity(
                    f"no pod that holds base model '{spec.base}' takes adapters "
                    "(their max_adapters is 0)"
                )
        if not healthy:
            which = f" of runtime '{model.runtime}'" if model.runtime else ""
            return NoPods(
                f"no runtime pod{which} that serves format '{spec.model_type}' is available"
            )
        largest = max(p.capacity for p in healthy)
        if size > largest:
            return NoCapacity(
                f"model '{spec.model_id}' needs {size} bytes; the largest pod holds {largest} bytes"
            )
        if no_room:
            return NoRoomNow(
                f"no pod can make room for model '{spec.model_id}' right now: "
                "their copies are busy or freshly loaded"
            )
        return Unavailable(f"no pod can take model '{spec.model_id}' now")

    async def _load_on(
        self, pod: PodRecord, model: ModelRecord, *, urgent: bool, may_evict: bool
    ) -> None:
        spec, expected = model.spec, model.expected_size()
        async with pod.queue.slot(spec.model_id, urgent=urgent) as queued:
            # Plan evictions once holding the slot: the table may have changed while queued.
            # (The view is sizes only; plan_evictions counts the buffered hits it reads.)
            view = pod.view()
            base_id = self._table.base_id(spec) if spec.base else ""
            if spec.base:
                evict = self._table.plan_adapter_evictions(pod, expected)
                if base_id not in pod.copies:  # the base went meanwhile
                    raise NoRoom()
            elif view.free >= expected:
                evict = []
            else:
                evict = self._table.plan_evictions(pod, expected)
            if evict is None or (evict and not may_evict):
                log.info(
                    "pod %s has no room for %s now (%s)",
                    pod.pod,
                    spec.model_id,
                    "a proactive load evicts nothing"
                    if evict
                    else "its copies are busy or freshly loaded",
                )
                raise NoRoom()
            for victim in evict:
                idle = self._table.clock() - victim.last_used
                log.info(
                    "evicting %s from pod %s to make room for %s: "
                    "lowest recency and demand (idle %.1f s, %d bytes)"
                    if not spec.base
                    else "evicting adapter %s from pod %s to make room for %s: "
                    "lowest recency and demand (idle %.1f s, %d bytes)",
                    victim.model_id,
                    pod.pod,
                    spec.model_id,
                    idle,
                    victim.size,
                )
                self._table.drop(pod, victim.model_id)
                self._events.evicted(victim.model_id, pod.pod, "room", idle)
                await self.unload_quietly(pod, victim.model_id)
            if spec.base:
                reason = f"an adapter over {base_id}, {len(evict)} evicted for it"
            elif view.free >= expected:
                reason = "it has room, most free space"
            else:
                reason = "all pods full, oldest cache"
            log.info(
                "loading %s on pod %s (%s): %d bytes expected, %d free of %d, %d models, "
                "queued %.0f ms",
                spec.model_id,
                pod.pod,
                reason,
                expected,
                view.free,
                view.capacity,
                view.model_count,
                1000 * queued,
            )
            entry = self._table.put(pod, model, CopyState.LOADING, expected, self._table.clock())
            started = time.perf_counter()
            try:
                size = await self._client.load(
                    pod.address,
                    spec.on_base(base_id) if spec.base else spec,
                    self._settings.load_timeout,
                    expected,
                )
            except PodFull as exc:
                self._table.drop(pod, spec.model_id)
                log.info("pod %s refused %s: %s", pod.pod, spec.model_id, exc.message)
                raise NoRoom() from exc
            except BaseException:
                self._table.drop(pod, spec.model_id)
                raise
            if self._models.get(spec.model_id) is not model:  # unregistered meanwhile
                self._table.drop(pod, spec.model_id)
                await self.unload_quietly(pod, spec.model_id)
                raise LoadFailed(f"model '{spec.model_id}' was deleted while loading")
            seconds = time.perf_counter() - started
            now = self._table.clock()
            entry.state, entry.size, entry.loaded_at, entry.last_used = (
                CopyState.LOADED,
                size or entry.size,
                now,
                now,
            )
            entry.demand = self._table.demand(model, now)
            model.ever_loaded, model.size = True, entry.size
            self._events.loaded(spec.model_id, pod.pod, seconds, queued, entry.size)
            log.info(
                "loaded %s on pod %s in %.0f ms (%d bytes, %d expected)",
                spec.model_id,
                pod.pod,
                1000 * seconds,
                entry.size,
                expected,
            )
            if entry.size > expected and not spec.base:
                await self.fit(pod, spec.model_id)

    async def fit(self, pod: PodRecord, newcomer: str = "") -> None:
        """A pod over capacity (a load turned out larger than expected) evicts copies until it fits."""
        view = pod.view()
        if view.used <= view.capacity:
            return
        for victim in self._table.plan_evictions(pod, 0, excluding=newcomer) or []:
            log.info(
                "evicting %s from pod %s: the pod is over capacity "
                "(a model was larger than expected)",
                victim.model_id,
                pod.pod,
            )
            self._table.drop(pod, victim.model_id)
            self._events.evicted(
                victim.model_id, pod.pod, "room", self._table.clock() - victim.last_used
            )
            await self.unload_quietly(pod, victim.model_id)

    async def unload_quietly(self, pod: PodRecord, model_id: str) -> None:
        pod.unloading.add(model_id)  # until the pod's own list no longer has it
        try:
            await self._client.unload(pod.address, model_id)
        except Exception as exc:  # the copy is gone from the table either way
            pod.unloading.discard(model_id)
            log.warning("unloading %s from pod %s failed: %s", model_id, pod.pod, exc)
