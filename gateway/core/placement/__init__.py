"""The placement engine: which pod holds which model, and getting it there.

The pods form one distributed cache, as in KServe ModelMesh. The engine keeps
the placement table (copies per pod, with sizes, last use, requests in flight
and request rates), loads a model on the best pod when a request needs it (one
load however many requests wait), evicts the copies least worth keeping when a
load needs room (least recently used, weighed by the model's decayed request
count: LRFU), retries a failed load on other pods, adds copies of models whose
traffic per copy runs high, and watches the pods' health. The decisions
themselves are the plain functions of gateway.core.picker.

``Placement`` is the facade the control plane and the adapters use; behind it:

- ``ports``: what the engine needs (PodClient, Coordinator) and tells (PlacementEvents);
- ``table``: pods, copies and models, the counts, the generation;
- ``hits``: requests for loaded models, routed among copies and counted (HitBuffer);
- ``loader``: the miss path: choose a pod, make room, load, retry elsewhere;
- ``monitor``: pod health, what pods report, request rates, copies by traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.domain import CopyState, ModelSpec, ModelState, ModelStatus
from gateway.core.errors import LoadFailed
from gateway.core.placement.hits import HitBuffer, Hits
from gateway.core.placement.loader import Loader
from gateway.core.placement.monitor import Monitor
from gateway.core.placement.ports import (
    Coordinator,
    NoEvents,
    PlacementEvents,
    PodClient,
    PodStatus,
    Solo,
)
from gateway.core.placement.settings import PlacementSettings
from gateway.core.placement.table import CopyRecord, ModelRecord, Table

__all__ = [
    "Coordinator",
    "CopyRecord",
    "HitBuffer",
    "ModelRecord",
    "Placement",
    "PlacementEvents",
    "PlacementSettings",
    "PodClient",
    "PodGauges",
    "PodStatus",
    "Solo",
]


@dataclass(frozen=True, slots=True)
class PodGauges:
    capacity: int  # bytes of model memory
    used: int  # bytes of its copies
    copies: int
    lru_age: float  # seconds since its least recently used copy served (0: no copies)
    loads_running: int
    loads_waiting: int


class Placement:
    def __init__(
        self,
        client: PodClient,
        settings: PlacementSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        events: PlacementEvents | None = None,
        coordinator: Coordinator | None = None,
    ) -> None:
        self._coordinator: Coordinator = coordinator or Solo()
        self._table = Table(settings or PlacementSettings(), clock, events or NoEvents())
        self._hits = Hits(self._table)
        self._loader = Loader(self._table, self._hits, client, self._coordinator)
        self._monitor = Monitor(self._table, self._loader, client, self._coordinator)
        # The request path calls these on every request the router has not kept a Route for:
        # bound straight to their owner, with no facade call in between.
        self.route_sole: Callable[[ModelRecord], tuple[str, CopyRecord] | None] = (
            self._hits.route_sole
        )
        self.route: Callable[[str], tuple[str, tuple[str, ...]] | None] = self._hits.route

    @property
    def resolve_base(self) -> Callable[[str], str]:
        """An adapter's base model name -> the concrete id serving it (ModelNotFound if none):
        the registry's ``resolve``, set once both exist."""
        return self._table.resolve_base

    @resolve_base.setter
    def resolve_base(self, resolve: Callable[[str], str]) -> None:
        self._table.resolve_base = resolve

    @property
    def generation(self) -> int:
        """Changes whenever a model id starts or stops naming a record, and whenever a copy
        comes or goes: records (``handle``) and copies (``route_sole``) held since are stale."""
        return self._table.generation

    # -- pods ------------------------------------------------------------

    def add_pod(self, address: str, name: str = "", runtime: str = "") -> None:
        """Add a pod (as it registered); it serves once the health monitor has seen it."""
        self._table.add_pod(address, name, runtime)

    def remove_pod(self, address: str) -> None:
        self._monitor.remove_pod(address)

    def observe(self, address: str, models: Mapping[str, int], *, serving: bool = True) -> None:
        self._monitor.observe(address, models, serving=serving)

    def endpoints(self) -> list[tuple[str, str, str]]:
        """Every pod in the table: its address, its data plane's gRPC address (its own address
        unless another server answers its inference) and its REST listener's ("" until
        known)."""
        return [
            (pod.address, pod.data_address or pod.address, pod.rest_address)
            for pod in self._table.pods.values()
        ]

    def data_address(self, address: str) -> str:
        """Where the inference requests of the pod at ``address`` go over gRPC: the pod itself,
        or the server beside it that answers them (a real MLServer)."""
        pod = self._table.pods.get(address)
        return (pod.data_address or address) if pod is not None else address

    def named_in_request(self, address: str) -> bool:
        """Whether the pod at ``address`` picks the model by the request's own name (MLServer):
        Envoy then writes the concrete id into the request."""
        pod = self._table.pods.get(address)
        return pod is not None and pod.named_in_request

    def rest_address(self, address: str) -> str:
        """The OIP REST listener of the pod at gRPC ``address``; "" if it has none (or is gone)."""
        pod = self._table.pods.get(address)
        return pod.rest_address if pod is not None else ""

    def any_healthy_pod(self) -> str:
        return self._hits.any_healthy_pod()

    async def watch_pods(self) -> None:
        await self._monitor.watch_pods()

    async def check_pods(self) -> None:
        await self._monitor.check_pods()

    def tick(self) -> None:
        self._monitor.tick()

    # -- models ----------------------------------------------------------

    def register(self, spec: ModelSpec, *, standby: bool = False, runtime: str = "") -> None:
        """Add a model to the table; ``standby``: known from before (a restart), loads on demand.
        ``runtime``: the ServingRuntime serving it: only pods of that runtime (or of none) take it."""
        self._table.register(spec, standby=standby, runtime=runtime)

    def serves(self, runtime: str, model_type: str) -> bool:
        """Whether a healthy pod could load a model of this runtime and type now."""
        fits = self._table.fits
        return any(fits(pod, runtime, model_type) for pod in self._table.pods.values())

    def is_registered(self, model_id: str) -> bool:
        return model_id in self._table.models

    async def unregister(self, model_id: str) -> None:
        """Forget a model and unload all its copies."""
        await self._loader.unregister(model_id)

    def forget(self, model_id: str) -> None:
        """Take a model off the table without unloading it: another replica unregistered
        it and unloads its copies."""
        self._table.forget(model_id)

    def note_failure(
        self, model_id: str, pod: str, seconds_ago: float, error: LoadFailed | None
    ) -> None:
        """A failure record another replica made (``error`` None: the leader expired it)."""
        model = self._table.models.get(model_id)
        if model is None:
            return
        if error is None:
            model.failures.pop(pod, None)
        elif pod not in model.failures:
            model.failures[pod] = (self._table.clock() - seconds_ago, error)

    def status(self, model_id: str) -> ModelStatus:
        return self._table.status(model_id)

    # -- requests ----------------------------------------------------------

    def handle(self, model_id: str) -> ModelRecord:
        """The table's record of ``model_id``, for ``route_sole``; valid while ``generation``
        is unchanged. Raises ModelNotFound."""
        return self._table.model(model_id)

    def hit_buffer(self, resolve: Callable[[Any], CopyRecord]) -> HitBuffer:
        """A buffer of hits on copies that ``route_sole`` returned, for a fast path that keeps
        its route per name (the router); ``resolve(key)`` is the copy a kept key stands for."""
        return self._hits.buffer(resolve)

    def settle(self) -> None:
        """Count every buffered hit."""
        self._table.settle()

    def ready(self, model_id: str) -> bool:
        """Whether ``model_id`` may be sent requests: a copy is loaded, or one was and has been
        evicted since (a request loads it again). Not while its first load runs, nor after a
        load failed. Cheap: a canary's draw asks it on the request path."""
        model = self._table.models.get(model_id)
        if model is None:
            return False
        sole = model.sole
        if sole is not None and sole.state is CopyState.LOADED:
            return True  # the common case, without building the status
        state = self._table.status(model_id).state
        # Standby counts only after a load (a deferred model that never loaded is not ready)
        return state is ModelState.LOADED or (state is ModelState.STANDBY and model.ever_loaded)

    def lookup(self, model_id: str) -> str | None:
        """The address of a loaded copy (counted as a request to it), or None on a miss."""
        return self._hits.lookup(model_id)

    def fallbacks(self, model_id: str, chosen: str) -> tuple[str, ...]:
        """The other loaded copies' addresses, best first: where a retry goes if ``chosen`` is dead."""
        return self._hits.fallbacks(model_id, chosen)

    async def ensure_loaded(self, model_id: str, *, urgent: bool = True, evict: bool = True) -> str:
        """The address of a loaded copy, loading the model first on a miss (see Loader)."""
        return await self._loader.ensure_loaded(model_id, urgent=urgent, evict=evict)

    def load_in_background(self, model_id: str) -> None:
        """Start loading a model nobody is waiting for yet (a fresh registration)."""
        self._loader.load_in_background(model_id)

    async def ensure_copies(self, model_id: str, count: int) -> int:
        """Load ``model_id`` until it has ``count`` copies (as many as pods allow)."""
        return await self._loader.ensure_copies(model_id, count)

    # -- views -----------------------------------------------------------

    @property
    def hits(self) -> int:
        """Requests whose model was loaded."""
        self._table.settle()
        return self._table.hits

    @property
    def misses(self) -> int:
        """Requests that had to wait for a load."""
        return self._table.misses

    def snapshot(self) -> dict[str, object]:
        """The placement table for people: per pod and per model."""
        return self._table.snapshot(leader=self._coordinator.leader())

    def model_requests(self) -> dict[str, int]:
        self._table.settle()
        return {model_id: m.requests for model_id, m in self._table.models.items()}

    def pod_gauges(self) -> dict[str, PodGauges]:
        """Per pod, what Prometheus reads: use, the LRU age, the load queue."""
        now = self._table.clock()
        return {
            p.pod: PodGauges(
                p.capacity,
                p.view().used,
                len(p.copies),
                now - min((c.last_used for c in p.copies.values()), default=now),
                p.queue.running,
                p.queue.waiting,
            )
            for p in self._table.pods.values()
        }

    def model_counts(self) -> tuple[int, int]:
        """(models with a loaded copy, models registered): ModelMesh's loaded and managed."""
        models = self._table.models.values()
        return sum(1 for m in models if m.loaded()), len(models)
