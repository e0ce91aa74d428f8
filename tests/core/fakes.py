"""A fake PodClient for core tests: pods as dicts, loads that can wait or fail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.core.domain import ModelSpec
from gateway.core.errors import LoadFailed, ModelFormatError, PodFull, PodUnresponsive
from gateway.core.placement import PodStatus
from gateway.core.protocol import BASE_MODEL_KEY


@dataclass
class FakePod:
    capacity: int = 100
    loaded: dict[str, int] = field(default_factory=dict)
    loading: dict[str, int] = field(default_factory=dict)  # loads in progress -> expected bytes
    fail_loads: str | None = None  # message; loads fail with LoadFailed
    bad_format: bool = False
    down: bool = False  # its connection is refused
    hung: bool = False  # connected, but answers no health check in time (busy, or stopped)
    rest_port: int = 0  # the OIP REST listener it reports (0: none)
    data_grpc_port: int = 0  # another server answers its inference there (MLServer; 0: none)
    named_in_request: bool = False  # that server picks the model by the request's own name
    max_adapters: int = 0  # its room for adapters over the bases it holds
    adapter_capacity: int = 1000
    adapters: dict[str, str] = field(default_factory=dict)  # adapter -> its base, held now
    model_types: tuple[str, ...] = ("sklearn",)


class FakePods:
    def __init__(self, **pods: FakePod) -> None:
        self.pods = pods
        self.loads: list[tuple[str, str]] = []  # (pod, model)
        self.unloads: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None  # when set, loads wait for it
        self.inflight: dict[str, dict[str, int]] = {}  # pod -> model -> requests in flight
        self.disconnect_callbacks: list[Callable[[str], None]] = []

    async def load(self, address: str, spec: ModelSpec, timeout: float, expected: int) -> int:
        pod = self.pods[address]
        self.loads.append((address, spec.model_id))
        if spec.base:  # as the real pod: an adapter attaches to a base it holds
            base = json.loads(spec.key)[BASE_MODEL_KEY]
            if base not in pod.loaded:
                raise LoadFailed(f"pod {address}: base model '{base}' is not loaded")
            if len(pod.adapters) >= pod.max_adapters:
                raise PodFull(f"pod {address}: {len(pod.adapters)} of {pod.max_adapters} adapters")
            if self.gate is not None:
                await self.gate.wait()
            pod.adapters[spec.model_id] = base
            pod.loaded[spec.model_id] = spec.predicted_size
            return spec.predicted_size
        held = sum(v for k, v in pod.loaded.items() if k not in pod.adapters)
        held += sum(pod.loading.values())
        if held + expected > pod.capacity:  # as the real pod: gateway.pod.repository
            raise PodFull(
                f"pod {address}: no room for {expected} bytes, {held} of {pod.capacity} taken"
            )
        pod.loading[spec.model_id] = expected
        try:
            if self.gate is not None:
                await self.gate.wait()
        finally:
            del pod.loading[spec.model_id]
        if pod.down:
            raise LoadFailed(f"pod {address}: unreachable")
        if pod.bad_format:
            raise ModelFormatError(f"pod {address}: not a model file")
        if pod.fail_loads:
            raise LoadFailed(f"pod {address}: {pod.fail_loads}")
        pod.loaded[spec.model_id] = spec.predicted_size
        return spec.predicted_size

    async def unload(self, address: str, model_id: str) -> None:
        self.unloads.append((address, model_id))
        pod = self.pods[address]
        pod.loaded.pop(model_id, None)
        pod.adapters.pop(model_id, None)
        for adapter in [a for a, base in pod.adapters.items() if base == model_id]:
            pod.loaded.pop(adapter, None)  # its adapters go with a base
            del pod.adapters[adapter]

    def on_disconnect(self, callback: Callable[[str], None]) -> None:
        self.disconnect_callbacks.append(callback)

    async def status(self, address: str, timeout: float) -> PodStatus:
        pod = self.pods[address]
        if pod.down:
            raise ConnectionError("down")
        if pod.hung:
            raise PodUnresponsive(f"no answer from pod {address} in {timeout:g} s")
        return PodStatus(
            pod.capacity,
            pod.model_types,
            dict(pod.loaded),
            self.inflight.get(address, {}),
            rest_port=pod.rest_port,
            data_grpc_port=pod.data_grpc_port,
            model_named_in_request=pod.named_in_request,
            max_adapters=pod.max_adapters,
            adapter_capacity=pod.adapter_capacity,
        )


def spec(model_id: str, size: int = 10) -> ModelSpec:
    return ModelSpec(model_id, "sklearn", f"/models/{model_id}", size)


def adapter(model_id: str, base: str, size: int = 1) -> ModelSpec:
    """An adapter over the model registered as ``base`` (its name is its id here)."""
    return ModelSpec(model_id, "lora", f"/adapters/{model_id}", size, base=base)
