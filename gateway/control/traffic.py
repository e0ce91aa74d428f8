"""Which labels a served request is counted under: the decision behind per-variant metrics.

Envoy's access log says what a client sent and what happened
(gateway.core.traffic.Served); a client chooses the name it sends, so a name becomes a
label only when it is registered (an InferenceService or an Experiment), and any other
is counted under UNREGISTERED. The variant is the concrete id ext_proc chose (Envoy logs
mm-model-id after ext_proc overwrote it, and only for requests that reached a pod), so a
client cannot make one up. A request whose name Envoy did not see (a native gRPC call
naming its model in the body only, or by its concrete id) is counted under the
InferenceService its variant belongs to. A request's time at its pod is counted per
pod (as the placement table names it: a REST listener's address is its pod's).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.control.registry import Registry
from gateway.core.placement import Placement
from gateway.core.protocol import CONCRETE_ID_SEPARATOR
from gateway.core.traffic import (
    NO_VARIANT,
    UNREGISTERED,
    Labels,
    PodLabels,
    Served,
    Tally,
    VariantTotals,
)


class TrafficBook:
    def __init__(
        self,
        registry: Registry,
        placement: Placement,
        tally: Tally,
        at_pods: Tally | None = None,
    ) -> None:
        self._registry = registry
        self._experiments = registry.experiments
        self._placement = placement
        self.tally = tally  # requests, by Labels
        self.at_pods = at_pods if at_pods is not None else Tally(folded=1)  # by PodLabels
        self._pods: dict[str, str] = {}  # address Envoy reached (gRPC or REST) -> pod
        self._pods_at = -1  # the placement generation _pods is of

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
        if served.pod is not None and served.pod_seconds is not None:
            self.at_pods.add(PodLabels(self._pod(served.pod)), served.pod_seconds)

    def _pod(self, address: str) -> str:
        generation = self._placement.generation
        if generation != self._pods_at:
            self._pods = {}
            for pod, grpc, rest in self._placement.endpoints():
                self._pods[pod] = self._pods[grpc] = pod
                if rest:
                    self._pods[rest] = pod
            self._pods_at = generation
        return self._pods.get(address, address)

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
