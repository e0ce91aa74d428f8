"""What the placement engine needs from the world, and what it tells it.

The engine reaches pods through ``PodClient`` (gateway.adapters.podclient speaks
gRPC), agrees with other gateway replicas through ``Coordinator``
(gateway.control.replicas does it in the store; ``Solo`` is one gateway alone)
and reports what happens through ``PlacementEvents`` (gateway.adapters.metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.core.domain import ModelSpec
from gateway.core.errors import LoadFailed


@dataclass(frozen=True, slots=True)
class PodStatus:
    """What a pod says of itself at a health check."""

    capacity: int
    model_types: tuple[str, ...]
    loaded: Mapping[str, int]  # model id -> size in bytes
    # model id -> requests being served now
    inflight: Mapping[str, int] = field(default_factory=dict)
    # model id -> requests served since loaded
    requests: Mapping[str, int] = field(default_factory=dict)
    # the port of its Open Inference Protocol REST listener, on its gRPC address's host; 0: none
    rest_port: int = 0
    # the port of the server that answers its inference requests, when not the pod itself (a
    # real MLServer beside the pod's adapter), on the same host; 0: the pod itself
    data_grpc_port: int = 0
    # that server picks the model by the request's own name, not the mm-model-id header
    model_named_in_request: bool = False
    # its room for adapters over the base models it holds: how many, how many bytes
    max_adapters: int = 0
    adapter_capacity: int = 0


class PodClient(Protocol):
    """How the engine reaches pods.

    ``load`` raises LoadFailed (or ModelFormatError) with the pod's reason, or
    PodFull when the pod has no room for ``expected`` bytes. ``status`` raises
    PodUnresponsive when the pod answers nothing within ``timeout`` (busy or hung),
    anything else when it cannot be reached at all.
    """

    async def load(self, address: str, spec: ModelSpec, timeout: float, expected: int) -> int: ...

    async def unload(self, address: str, model_id: str) -> None: ...

    async def status(self, address: str, timeout: float) -> PodStatus: ...

    def on_disconnect(self, callback: Callable[[str], None]) -> None:
        """Have ``callback(address)`` called as soon as an open connection to a pod breaks
        (its process died, say), so that its health is checked at once, not at the next
        interval."""


class Coordinator(Protocol):
    """What the engine must agree on with other gateway replicas.

    ``claim`` takes the right to load a model (False: another replica is
    loading it); ``leader`` says whether this replica makes the decisions that
    must be made once: adding copies, fitting over-full pods, unloading what
    nobody registered.
    """

    async def claim(self, model_id: str) -> bool: ...

    async def release(self, model_id: str) -> None: ...

    def leader(self) -> bool: ...

    async def failed(self, model_id: str, pod: str, error: LoadFailed) -> None:
        """Tell the other replicas: loading ``model_id`` on ``pod`` failed (they keep that pod out too)."""

    async def forgive(self, model_id: str, pod: str) -> None:
        """The leader's: a failure record expired."""


class Solo:
    """One gateway alone: every claim is won, and it is the leader."""

    async def claim(self, model_id: str) -> bool:
        return True

    async def release(self, model_id: str) -> None: ...

    def leader(self) -> bool:
        return True

    async def failed(self, model_id: str, pod: str, error: LoadFailed) -> None: ...

    async def forgive(self, model_id: str, pod: str) -> None: ...


class PlacementEvents(Protocol):
    """What the engine reports as it happens."""

    def loaded(
        self, model_id: str, pod: str, seconds: float, queued_seconds: float, size: int
    ) -> None: ...

    def load_failed(self, model_id: str, pod: str, reason: str) -> None: ...

    def evicted(self, model_id: str, pod: str, reason: str, idle_seconds: float) -> None:
        """A copy left its pod; ``idle_seconds``: since it last served a request."""

    def waited(self, model_id: str, seconds: float) -> None:
        """A request waited ``seconds`` for its model's load (a cache miss) and was routed."""


class NoEvents:
    """Events nobody listens to."""

    def loaded(
        self, model_id: str, pod: str, seconds: float, queued_seconds: float, size: int
    ) -> None: ...

    def load_failed(self, model_id: str, pod: str, reason: str) -> None: ...

    def evicted(self, model_id: str, pod: str, reason: str, idle_seconds: float) -> None: ...

    def waited(self, model_id: str, seconds: float) -> None: ...
