"""Which labels a served request is counted under: the decision behind per-variant metrics.

Envoy's access log says what a client sent and what happened
(gateway.core.traffic.Served); a client chooses the name it sends, so a name becomes a
label only when it is registered (an InferenceService or an Experiment), and any other
is counted under UNREGISTERED. The variant is the concrete id ext_proc chose (Envoy logs
mm-model-id after ext_proc overwrote it, and only for requests that reached a pod), so a
client cannot make one up. A request whose name Envoy did not see (a native gRPC call
naming its model in the body only, or by its concrete id) is counted under the
InferenceService its variant belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.control.registry import Registry
from gateway.core.protocol import CONCRETE_ID_SEPARATOR
from gateway.core.traffic import NO_VARIANT, UNREGISTERED, Labels, Served, Tally, VariantTotals


class TrafficBook:
    def __init__(self, registry: Registry, tally: Tally) -> None:
        self._registry = registry
        self._experiments = registry.experiments
        self.tally = tally

    def record(self, served: Served) -> None:
        name = served.name
        variant = served.variant
        if name is None or not self._registered(name):
            owner = _owner(variant)
            if owner is not None and self._registered(owner):
                name = owner
            elif name is None:  # a server-level call (health, metadata): not a model's
                return
            else:
                name = UNREGISTERED
        self.tally.add(
            Labels(name, variant or NO_VARIANT, served.protocol, served.code),
            served.seconds,
            served.ok,
        )

    def variants(self, name: str) -> Mapping[str, VariantTotals]:
        """What ``name`` (an InferenceService or an Experiment) served, by variant."""
        return self.tally.variants(name)

    def _registered(self, name: str) -> bool:
        return self._registry.record(name) is not None or name in self._experiments


def _owner(variant: str | None) -> str | None:
    """The InferenceService a concrete id belongs to (``<name>__isvc-<hash>``)."""
    if variant is None:
        return None
    owner, separator, _ = variant.rpartition(CONCRETE_ID_SEPARATOR)
    return owner if separator else None
