"""Where a request goes: a model name in, a pod address and concrete id out.

``hit`` is the hot path, synchronous and allocation-light, answered from the
in-memory tables; ``route`` also loads the model on a miss. A hit on a model
with one copy reads one dict (name -> the placement's record of the model)
and returns the Route kept on the copy, the same object every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from gateway.placement import Placement
from gateway.registry import Registry
from gateway.route_key import RouteKey


@dataclass(slots=True)
class Route:
    address: str  # "host:port" of the pod
    model_id: str | None  # concrete model id; None for server-level calls
    fallbacks: tuple[str, ...] = ()  # the model's other copies, for a retry if the pod is dead
    # The transport's serialized answers for this route (gateway.extproc), made on first use.
    answer: Any = field(default=None, compare=False, repr=False)
    body_answer: Any = field(default=None, compare=False, repr=False)


class Router:
    def __init__(self, registry: Registry, placement: Placement) -> None:
        self._registry = registry
        self._placement = placement
        # name or concrete id -> the placement's record of the model it resolves to; cleared
        # when the registry's routes or the placement's models change (their generations).
        self._handles: dict[str, Any] = {}
        self._registry_generation = registry.generation
        self._placement_generation = placement.generation

    def hit(self, key: RouteKey) -> Route | None:
        """The route if no load is needed, else None. Raises ModelNotFound."""
        if key.model is None:
            return Route(self._placement.any_healthy_pod(), None)
        handle = self._handle(key.model)
        route = self._placement.route_sole(handle, Route)
        if route is not None:
            return cast(Route, route)
        model_id = handle.spec.model_id
        found = self._placement.route(model_id)
        return None if found is None else Route(found[0], model_id, found[1])

    def _handle(self, name: str) -> Any:
        registry, placement = self._registry, self._placement
        if registry.generation != self._registry_generation or placement.generation != self._placement_generation:
            self._handles.clear()
            self._registry_generation, self._placement_generation = registry.generation, placement.generation
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = placement.handle(registry.resolve(name))
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
