"""The placement engine: which pod holds which model, and getting it there.

The pods form one distributed cache, as in KServe ModelMesh. The engine keeps
the placement table (copies per pod, with sizes and last use), loads a model
on the best pod when a request needs it (one load however many requests wait),
evicts least recently used copies when a load needs room, retries a failed
load on other pods, and watches the pods' health. The decisions themselves are
the plain functions of gateway.picker; this module gathers their inputs and
carries them out. It talks to pods only through the PodClient protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway import picker
from gateway.domain import Copy, CopyState, ModelSpec, ModelState, ModelStatus, PodView
from gateway.errors import LoadFailed, ModelFormatError, ModelNotFound, NoCapacity, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PodStatus:
    capacity: int
    model_types: tuple[str, ...]
    loaded: Mapping[str, int]  # model id -> size in bytes
    inflight: Mapping[str, int] = field(default_factory=dict)  # model id -> requests being served now
    requests: Mapping[str, int] = field(default_factory=dict)  # model id -> requests served since loaded


class PodClient(Protocol):
    """How the engine reaches pods (gateway.podclient implements it over gRPC).

    ``load`` raises LoadFailed (or ModelFormatError) with the pod's reason.
    """

    async def load(self, address: str, spec: ModelSpec, timeout: float) -> int: ...

    async def unload(self, address: str, model_id: str) -> None: ...

    async def status(self, address: str, timeout: float) -> PodStatus: ...


@dataclass(frozen=True, slots=True)
class PlacementSettings:
    max_load_attempts: int = 3  # distinct pods tried before a load fails
    failure_expiry: float = 15 * 60.0  # seconds a failed load keeps a pod out
    churn_guard: float = 5.0  # seconds a fresh copy is safe from eviction
    load_timeout: float = 90.0
    loads_per_pod: int = 1
    health_interval: float = 1.0
    health_timeout: float = 1.0


@dataclass(slots=True)
class _Entry:
    model_id: str
    pod: str
    state: CopyState
    size: int
    last_used: float
    loaded_at: float


@dataclass(slots=True)
class _Pod:
    pod: str
    address: str
    load_slots: asyncio.Semaphore
    capacity: int = 0
    healthy: bool = False
    copies: dict[str, _Entry] = field(default_factory=dict)

    def view(self) -> PodView:
        loaded = [e.last_used for e in self.copies.values() if e.state is CopyState.LOADED]
        return PodView(
            pod=self.pod,
            capacity=self.capacity,
            used=sum(e.size for e in self.copies.values()),
            model_count=len(self.copies),
            healthy=self.healthy,
            oldest_use=min(loaded, default=None),
        )


@dataclass(slots=True)
class _Model:
    spec: ModelSpec
    copies: dict[str, _Entry] = field(default_factory=dict)  # pod -> entry
    loading: asyncio.Task[str] | None = None
    failures: dict[str, tuple[float, str]] = field(default_factory=dict)  # pod -> (when, why)
    ever_loaded: bool = False
    last_error: str = ""


class Placement:
    def __init__(
        self,
        client: PodClient,
        settings: PlacementSettings = PlacementSettings(),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._settings = settings
        self._clock = clock
        self._pods: dict[str, _Pod] = {}
        self._models: dict[str, _Model] = {}

    # -- pods ------------------------------------------------------------

    def add_pod(self, address: str) -> None:
        """Add a pod; it serves once the health monitor has seen it."""
        self._pods.setdefault(
            address, _Pod(address, address, asyncio.Semaphore(self._settings.loads_per_pod))
        )

    def any_healthy_pod(self) -> str:
        for pod in self._pods.values():
            if pod.healthy:
                return pod.address
        raise Unavailable("no runtime pod is available")

    async def watch_pods(self) -> None:
        """Check every pod's health forever, every ``health_interval`` seconds."""
        while True:
            await self.check_pods()
            await asyncio.sleep(self._settings.health_interval)

    async def check_pods(self) -> None:
        await asyncio.gather(*(self._check(pod) for pod in list(self._pods.values())))

    async def _check(self, pod: _Pod) -> None:
        try:
            status = await self._client.status(pod.address, self._settings.health_timeout)
        except Exception as exc:  # any failure to answer means the pod is gone
            if pod.healthy:
                log.warning("pod %s is unreachable (%s): dropping its %d copies", pod.pod, exc, len(pod.copies))
                pod.healthy = False
                for model_id in list(pod.copies):
                    self._drop(pod, model_id)
            return
        pod.capacity = status.capacity
        if not pod.healthy:
            pod.healthy = True
            await self._reconcile(pod, status)
            log.info("pod %s is ready: capacity %d bytes, holding %d models", pod.pod, pod.capacity, len(pod.copies))

    async def _reconcile(self, pod: _Pod, status: PodStatus) -> None:
        """Adopt what a (re)joining pod already holds; unload what nobody registered."""
        for model_id in [m for m in pod.copies if m not in status.loaded]:
            self._drop(pod, model_id)
        now = self._clock()
        for model_id, size in status.loaded.items():
            model = self._models.get(model_id)
            if model is None:
                log.info("unloading %s from pod %s: no longer registered", model_id, pod.pod)
                await self._unload_quietly(pod, model_id)
            elif model_id not in pod.copies:
                self._put(pod, model, CopyState.LOADED, size, now)
                model.ever_loaded = True

    # -- models ----------------------------------------------------------

    def register(self, spec: ModelSpec) -> None:
        model = self._models.get(spec.model_id)
        if model is None:
            self._models[spec.model_id] = _Model(spec)
        elif model.spec != spec:
            model.spec = spec

    def is_registered(self, model_id: str) -> bool:
        return model_id in self._models

    async def unregister(self, model_id: str) -> None:
        """Forget a model and unload all its copies."""
        model = self._models.pop(model_id, None)
        if model is None:
            return
        if model.loading is not None:
            await asyncio.wait([model.loading])
        for pod_name in list(model.copies):
            pod = self._pods[pod_name]
            self._drop(pod, model_id)
            await self._unload_quietly(pod, model_id)

    def status(self, model_id: str) -> ModelStatus:
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        loaded = sum(1 for e in model.copies.values() if e.state is CopyState.LOADED)
        if loaded:
            return ModelStatus(ModelState.LOADED, loaded)
        if model.loading is not None:
            return ModelStatus(ModelState.LOADING, 0)
        if model.last_error:
            return ModelStatus(ModelState.FAILED_TO_LOAD, 0, model.last_error)
        return ModelStatus(ModelState.STANDBY if model.ever_loaded else ModelState.PENDING, 0)

    def lookup(self, model_id: str) -> str | None:
        """The hot path: the address of a loaded copy, or None on a miss."""
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        copies = [e for e in model.copies.values() if e.state is CopyState.LOADED]
        if not copies:
            return None
        entry = copies[0] if len(copies) == 1 else self._pick(copies)
        entry.last_used = self._clock()
        return self._pods[entry.pod].address

    def _pick(self, entries: list[_Entry]) -> _Entry:
        chosen = picker.pick_copy([_copy(e) for e in entries], {})
        return next(e for e in entries if e.pod == chosen.pod)

    async def ensure_loaded(self, model_id: str) -> str:
        """The address of a loaded copy, loading the model first on a miss.

        Concurrent callers share one load; a caller that gives up (a client
        that went away) does not cancel it for the others.
        """
        address = self.lookup(model_id)
        if address is not None:
            return address
        model = self._models[model_id]
        if model.loading is None:
            model.loading = asyncio.create_task(self._load(model), name=f"load {model_id}")
            model.loading.add_done_callback(lambda task: self._loaded(model, task))
        pod = await asyncio.shield(model.loading)
        return self._pods[pod].address

    def load_in_background(self, model_id: str) -> None:
        """Start loading a model nobody is waiting for yet (a fresh registration)."""
        task = asyncio.ensure_future(self.ensure_loaded(model_id))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _loaded(self, model: _Model, task: asyncio.Task[str]) -> None:
        model.loading = None
        if task.cancelled():
            return
        error = task.exception()
        model.last_error = getattr(error, "message", str(error)) if error else ""

    async def _load(self, model: _Model) -> str:
        spec = model.spec
        now = self._clock()
        expiry = self._settings.failure_expiry
        model.failures = {p: f for p, f in model.failures.items() if now - f[0] < expiry}
        tried = set(model.failures)
        errors: list[LoadFailed] = []
        while len(errors) < self._settings.max_load_attempts:
            views = [p.view() for p in self._pods.values()]
            target = picker.pick_pod(views, spec.predicted_size, exclude=tried)
            if target is None:
                break
            tried.add(target.pod)
            try:
                await self._load_on(self._pods[target.pod], model)
            except LoadFailed as exc:
                log.warning("loading %s on pod %s failed: %s", spec.model_id, target.pod, exc.message)
                model.failures[target.pod] = (self._clock(), exc.message)
                errors.append(exc)
            else:
                return target.pod
        raise self._load_error(spec, errors)

    def _load_error(self, spec: ModelSpec, errors: list[LoadFailed]) -> Exception:
        if errors:
            reasons = "; ".join(e.message for e in errors)
            kind = ModelFormatError if all(isinstance(e, ModelFormatError) for e in errors) else LoadFailed
            return kind(f"loading model '{spec.model_id}' failed on {len(errors)} pod(s): {reasons}")
        healthy = [p for p in self._pods.values() if p.healthy]
        if not healthy:
            return Unavailable("no runtime pod is available")
        largest = max(p.capacity for p in healthy)
        if spec.predicted_size > largest:
            return NoCapacity(
                f"model '{spec.model_id}' needs {spec.predicted_size} bytes; "
                f"the largest pod holds {largest} bytes"
            )
        return Unavailable(f"no pod can make room for model '{spec.model_id}' right now")

    async def _load_on(self, pod: _Pod, model: _Model) -> None:
        spec = model.spec
        async with pod.load_slots:
            # Plan evictions inside the slot: the table may have changed while queued.
            view = pod.view()
            evict = picker.plan_evictions(
                view,
                [_copy(e) for e in pod.copies.values()],
                spec.predicted_size,
                now=self._clock(),
                churn_guard=self._settings.churn_guard,
                inflight={},
            )
            if evict is None:
                raise LoadFailed(f"pod {pod.pod} has no room: its copies are busy or freshly loaded")
            for victim in evict:
                log.info(
                    "evicting %s from pod %s (least recently used, %d bytes) to make room for %s",
                    victim.model_id, pod.pod, victim.size, spec.model_id,
                )
                self._drop(pod, victim.model_id)
                await self._unload_quietly(pod, victim.model_id)
            log.info(
                "loading %s on pod %s: %d bytes predicted, %d free of %d, %d models there",
                spec.model_id, pod.pod, spec.predicted_size, view.free, view.capacity, view.model_count,
            )
            entry = self._put(pod, model, CopyState.LOADING, spec.predicted_size, self._clock())
            started = time.perf_counter()
            try:
                size = await self._client.load(pod.address, spec, self._settings.load_timeout)
            except BaseException:
                self._drop(pod, spec.model_id)
                raise
            if self._models.get(spec.model_id) is not model:  # unregistered meanwhile
                self._drop(pod, spec.model_id)
                await self._unload_quietly(pod, spec.model_id)
                raise LoadFailed(f"model '{spec.model_id}' was deleted while loading")
            now = self._clock()
            entry.state, entry.size, entry.loaded_at, entry.last_used = CopyState.LOADED, size or entry.size, now, now
            model.ever_loaded = True
            log.info("loaded %s on pod %s in %.0f ms (%d bytes)", spec.model_id, pod.pod,
                     1000 * (time.perf_counter() - started), entry.size)

    def _put(self, pod: _Pod, model: _Model, state: CopyState, size: int, now: float) -> _Entry:
        entry = _Entry(model.spec.model_id, pod.pod, state, size, now, now)
        pod.copies[entry.model_id] = entry
        model.copies[pod.pod] = entry
        return entry

    def _drop(self, pod: _Pod, model_id: str) -> None:
        pod.copies.pop(model_id, None)
        model = self._models.get(model_id)
        if model is not None:
            model.copies.pop(pod.pod, None)

    async def _unload_quietly(self, pod: _Pod, model_id: str) -> None:
        try:
            await self._client.unload(pod.address, model_id)
        except Exception as exc:  # the copy is gone from the table either way
            log.warning("unloading %s from pod %s failed: %s", model_id, pod.pod, exc)

    # -- views -----------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """The placement table for people: per pod and per model."""
        now = self._clock()
        pods = []
        for pod in self._pods.values():
            view = pod.view()
            pods.append(
                {
                    "pod": pod.pod,
                    "healthy": pod.healthy,
                    "capacity_bytes": view.capacity,
                    "used_bytes": view.used,
                    "models": [
                        {
                            "model_id": e.model_id,
                            "state": e.state.value,
                            "size_bytes": e.size,
                            "idle_seconds": round(now - e.last_used, 3),
                        }
                        for e in sorted(pod.copies.values(), key=lambda e: e.model_id)
                    ],
                }
            )
        models = {
            model_id: {"state": self.status(model_id).state.value, "copies": sorted(m.copies)}
            for model_id, m in sorted(self._models.items())
        }
        return {"pods": pods, "models": models}


def _copy(entry: _Entry) -> Copy:
    return Copy(entry.model_id, entry.pod, entry.state, entry.size, entry.last_used, entry.loaded_at)
