"""Where a request goes: a model name in, a pod address and concrete id out.

``hit`` answers from the in-memory tables without waiting; ``route`` also
loads the model on a miss. A Route to a model's only loaded copy carries that
copy (``copy``): until ``generation`` changes, the caller may keep the Route
(gateway.adapters.extproc.processor keeps its answer per name) and record each further request
in a ``hit_buffer`` instead of asking again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.control.registry import Registry
from gateway.core.placement import CopyRecord, HitBuffer, ModelRecord, Placement
from gateway.core.route_key import RouteKey


@dataclass(frozen=True, slots=True)
class Route:
    address: str  # "host:port" of the pod
    model_id: str | None  # concrete model id; None for server-level calls
    fallbacks: tuple[str, ...] = ()  # the model's other copies, for a retry if the pod is dead
    # The placement's record of the copy when it is the model's only loaded one: the
    # route stays right until ``Router.generation`` changes.
    copy: CopyRecord | None = None


class Router:
    def __init__(self, registry: Registry, placement: Placement) -> None:
        self._registry = registry
        self._placement = placement
        # name or concrete id -> the placement's record of the model it resolves to; cleared
        # when the registry's routes or the placement's models change (their generations).
        self._handles: dict[str, ModelRecord] = {}
        self._sources = (registry.generation, placement.generation)
        self._generation = 0  # what ``generation`` says while _sources hold
        self._handles_generation = 0

    @property
    def generation(self) -> int:
        """Changes whenever a route may have: a registry route or a copy came or went.

        Read on every request: two comparisons and no new object (a sum of the
        two counters would allocate an int each time once they pass 256)."""
        registry, placement = self._registry.generation, self._placement.generation
        if (registry, placement) != self._sources:
            self._sources = (registry, placement)
            self._generation += 1
        return self._generation

    def hit_buffer(self, resolve: Callable[[Any], CopyRecord]) -> HitBuffer:
        """Where a caller that keeps Routes records further requests, by what it kept;
        ``resolve(key)`` is the kept Route's ``copy``."""
        return self._placement.hit_buffer(resolve)

    def hit(self, key: RouteKey) -> Route | None:
        """The route if no load is needed, else None. Raises ModelNotFound."""
        if key.model is None:
            return Route(self._placement.any_healthy_pod(), None)
        handle = self._handle(key.model)
        sole = self._placement.route_sole(handle)
        if sole is not None:
            address, copy = sole
            return Route(address, copy.model_id, copy=copy)
        model_id = handle.spec.model_id
        found = self._placement.route(model_id)
        return None if found is None else Route(found[0], model_id, found[1])

    def _handle(self, name: str) -> ModelRecord:
        generation = self.generation
        if generation != self._handles_generation:
            self._handles.clear()
            self._handles_generation = generation
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = self._placement.handle(self._registry.resolve(name))
        return handle

    async def route(self, key: RouteKey) -> Route:
        """The route, loading the model first when no copy is loaded."""
        route = self.hit(key)
        if route is not None:
            return route
        assert key.model is not None
        model_id = self._registry.resolve(key.model)
        address = await self._placement.ensure_loaded(model_id)
        return Route(address, model_id, self._placement.fallbacks(model_id, address))
