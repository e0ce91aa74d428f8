"""Where a request goes: a model name in, a pod address and concrete id out.

``hit`` answers from the in-memory tables without waiting: a ``Route``, or a
``Miss`` that names the concrete model to load (``load`` takes it from there,
with no second lookup). The router owns the hot path's cache: for a model with
one loaded copy it hands out the same immutable Route while the route is valid
(while neither the registry's nor the placement's generation changes), and
records each further request for it in the engine's hit buffer, which counts
them in batches off the request path. A name whose rollout is held at a canary
(``Registry.split``) sends that percent of its requests, drawn at random, to
the latest spec once it is ready (loaded; not while loading or failed), and
the rest to the serving one. Routes
compare by identity, so an adapter may keep what it made of one (its
serialized answer) in a dict keyed by the Route.
"""

from __future__ import annotations

import operator
import random as random_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from gateway.control.registry import Registry
from gateway.core.errors import InvalidInput, Unavailable
from gateway.core.placement import CopyRecord, ModelRecord, Placement
from gateway.core.protocol import CONCRETE_ID_SEPARATOR, VARIANT_HEADER
from gateway.core.route_key import RouteKey
from gateway.kserve.experiments import Split

# Interned routes kept at most (multi-copy and server-level ones); past it they start over.
_MAX_INTERNED = 10_000


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """Where to send a request. Compared by identity: the router hands out one object per
    route while it is valid."""

    address: str  # "host:port" of the pod
    model_id: str | None  # concrete model id; None for server-level calls
    fallbacks: tuple[str, ...] = ()  # the model's other copies, for a retry if the pod is dead
    # The model's only loaded copy, when this route is kept for its name: the hit buffer
    # counts the requests routed to it.
    copy: CopyRecord | None = None
    # how long one try may take on a pod before the next copy is tried (ms); None: the default
    per_try_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Miss:
    """No copy is loaded: ``Router.load`` loads ``model_id`` and routes to it."""

    model_id: str


_copy_of = cast(Callable[[Route], CopyRecord], operator.attrgetter("copy"))


class Router:
    def __init__(
        self,
        registry: Registry,
        placement: Placement,
        *,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self._registry = registry
        self._experiments = registry.experiments
        self._placement = placement
        self._random = random  # a canary's and an experiment's draw, in [0, 1)
        # Valid while the registry's and the placement's generations hold:
        self._handles: dict[str, ModelRecord] = {}  # name or concrete id -> its model's record
        self._kept: dict[str, Route] = {}  # name -> the route to its model's only loaded copy
        self._interned: dict[tuple[str, str | None, tuple[str, ...]], Route] = {}
        # the registry's and the placement's generations the kept routes are valid at
        self._kept_at = (registry.generation, placement.generation)
        self._record_hit = placement.hit_buffer(_copy_of).add

    def hit(self, key: RouteKey) -> Route | Miss:
        """The route if no load is needed, else a Miss. Raises ModelNotFound (and the
        registry's reasons a model cannot be served)."""
        name = key.model
        if name is None:
            return self._intern(self._placement.any_healthy_pod(), None, ())
        registry, placement = self._registry.generation, self._placement.generation
        if registry != self._kept_at[0] or placement != self._kept_at[1]:
            self._forget(registry, placement)
        variant = key.variant
        experiment = self._experiments.split(name)
        if experiment is not None:  # a split across InferenceServices: one is drawn
            name, variant = self._candidate(name, experiment, variant), None
        pinned = None if variant is None else self._pinned(name, variant)
        if pinned is not None:
            name = pinned
        elif (canary := self._registry.canary(name)) is not None:
            # a canary: its share goes to the latest spec (0 until it is ready)
            latest, share = canary
            if self._random() * 100 < share:
                name = latest
        kept = self._kept.get(name)
        if kept is not None:  # the hot path: one dict read; counted in the hit buffer
            self._record_hit(kept)
            return kept
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = self._placement.handle(self._registry.resolve(name))
        sole = self._placement.route_sole(handle)  # counts this request
        if sole is not None:
            address, copy = sole
            per_try = self._registry.per_try_timeout_ms(copy.model_id)
            kept = self._kept[name] = Route(
                address, copy.model_id, copy=copy, per_try_timeout_ms=per_try
            )
            return kept
        model_id = handle.spec.model_id
        found = self._placement.route(model_id)
        if found is None:
            return Miss(model_id)
        return self._intern(found[0], model_id, found[1])

    @property
    def shadows(self) -> bool:
        """Whether any Experiment has a mirror (else ``shadow`` is never asked)."""
        return self._experiments.mirrored

    def shadow(self, key: RouteKey) -> Route | None:
        """Where a copy of this request goes: an Experiment's mirror, drawn at its percent,
        when it has a loaded copy; None (the common case: one dict read) otherwise."""
        name = key.model
        split = None if name is None else self._experiments.split(name)
        if split is None or split.mirror is None:
            return None
        mirror, percent = split.mirror
        if not (self._random() * 100 < percent and self._registry.serving_ready(mirror)):
            return None
        model_id = self._registry.resolve(mirror)
        found = self._placement.route(model_id)  # counted: the mirror serves it
        return None if found is None else self._intern(found[0], model_id, found[1])

    def _candidate(self, public: str, split: Split, variant: str | None) -> str:
        """The InferenceService (or, pinned, the concrete id) an experiment's request goes to:
        drawn by weight among the candidates that are ready; the default while none is. A
        ``variant`` that is a version of a candidate pins it; a past version of one is drawn
        again; anything else is InvalidInput."""
        if variant is not None:
            names = [name for name, _ in split.candidates]
            for name in names:
                if variant in (self._registry.versions(name) or ()):
                    return variant
            if not any(variant.startswith(name + CONCRETE_ID_SEPARATOR) for name in names):
                raise InvalidInput(
                    f"header {VARIANT_HEADER}: '{variant}' is not a version of any candidate "
                    f"of experiment '{public}' ({', '.join(names)})"
                )
        ready = [
            (name, weight)
            for name, weight in split.candidates
            if self._registry.serving_ready(name)
        ]
        if not ready:
            return split.default
        draw = self._random() * sum(weight for _, weight in ready)
        for name, weight in ready:
            draw -= weight
            if draw < 0:
                return name
        return ready[-1][0]

    def _pinned(self, name: str, variant: str) -> str | None:
        """The version ``variant`` names, when it is one ``name`` serves now; None when it is
        a past version of ``name`` (a sticky client's: drawn again) or ``name`` is no
        InferenceService. InvalidInput when it is no version of ``name`` at all."""
        versions = self._registry.versions(name)
        if versions is None or variant in versions:
            return variant if versions is not None else None
        if variant.startswith(name + CONCRETE_ID_SEPARATOR):
            return None
        raise InvalidInput(
            f"header {VARIANT_HEADER}: '{variant}' is not a version of '{name}' "
            f"(its versions: {', '.join(versions)})"
        )

    def _forget(self, registry: int, placement: int) -> None:
        """A route may have changed: drop every kept and interned route and every handle."""
        self._handles.clear()
        self._kept.clear()
        self._interned.clear()
        self._kept_at = (registry, placement)

    async def load(self, miss: Miss) -> Route:
        """Load the missed model (one load however many requests wait) and route to it."""
        address = await self._placement.ensure_loaded(miss.model_id)
        return self._intern(
            address, miss.model_id, self._placement.fallbacks(miss.model_id, address)
        )

    async def route(self, key: RouteKey) -> Route:
        """The route, loading the model first when no copy is loaded."""
        found = self.hit(key)
        return await self.load(found) if isinstance(found, Miss) else found

    def grpc_upstream(self, route: Route) -> str:
        """``route``'s pods as the gRPC servers that answer their inference ("host:port": the
        pod itself, or the MLServer beside it), the chosen one first, then the fallbacks."""
        data_address = self._placement.data_address
        return ",".join(map(data_address, (route.address, *route.fallbacks)))

    def named_in_request(self, route: Route) -> bool:
        """Whether ``route``'s pod picks the model by the request's own name (MLServer), so
        that Envoy must write the concrete id into the request."""
        return self._placement.named_in_request(route.address)

    def rest_upstream(self, route: Route) -> str:
        """``route``'s pods as their OIP REST listeners ("host:port", the chosen one first, then
        the fallbacks that have one). Raises Unavailable if the chosen pod has none."""
        chosen = self._placement.rest_address(route.address)
        if not chosen:
            raise Unavailable(
                f"pod {route.address} serves no Open Inference Protocol REST listener; "
                "send this request as gRPC or in the protobuf-JSON form"
            )
        others = (self._placement.rest_address(a) for a in route.fallbacks)
        return ",".join((chosen, *(a for a in others if a)))

    def _intern(self, address: str, model_id: str | None, fallbacks: tuple[str, ...]) -> Route:
        """One Route object per (pod, model, fallbacks), so that what adapters keep per Route
        is reused for routes that are not kept per name."""
        wire = (address, model_id, fallbacks)
        route = self._interned.get(wire)
        if route is None:
            if len(self._interned) >= _MAX_INTERNED:
                self._interned.clear()
            per_try = None if model_id is None else self._registry.per_try_timeout_ms(model_id)
            route = self._interned[wire] = Route(
                address, model_id, fallbacks, per_try_timeout_ms=per_try
            )
        return route
