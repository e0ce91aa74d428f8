"""Where a request goes: a model name in, a pod address and concrete id out.

``hit`` is the hot path, synchronous and allocation-light, answered from the
in-memory tables; ``route`` also loads the model on a miss.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.placement import Placement
from gateway.registry import Registry
from gateway.route_key import RouteKey


@dataclass(frozen=True, slots=True)
class Route:
    address: str  # "host:port" of the pod
    model_id: str | None  # concrete model id; None for server-level calls
    fallbacks: tuple[str, ...] = ()  # the model's other copies, for a retry if the pod is dead


class Router:
    def __init__(self, registry: Registry, placement: Placement) -> None:
        self._registry = registry
        self._placement = placement

    def hit(self, key: RouteKey) -> Route | None:
        """The route if no load is needed, else None. Raises ModelNotFound."""
        if key.model is None:
            return Route(self._placement.any_healthy_pod(), None)
        model_id = self._registry.resolve(key.model)
        found = self._placement.route(model_id)
        return None if found is None else Route(found[0], model_id, found[1])

    async def route(self, key: RouteKey) -> Route:
        """The route, loading the model first when no copy is loaded."""
        route = self.hit(key)
        if route is not None:
            return route
        assert key.model is not None
        model_id = self._registry.resolve(key.model)
        address = await self._placement.ensure_loaded(model_id)
        return Route(address, model_id, self._placement.fallbacks(model_id, address))
