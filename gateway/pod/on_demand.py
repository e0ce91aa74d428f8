"""Loading a registered model a request was sent to this pod for, when the pod does not
hold it: the pod-side half of "a pod's death costs at most its in-flight requests".

Envoy sends a request to the copies ext_proc named, then (when they are all gone: the
pod holding the only copy died a moment before the gateway noticed) to any pod. That
pod used to answer NOT_FOUND for a model that is registered. Now it looks the model
up in the shared store, where the gateway keeps every InferenceService
(gateway/control/records.py: the concrete models it serves and targets are its
``serving`` and ``target`` specs), loads it as the gateway would have (the same
spec, the same room check) and serves the request: it waits for the load, as a
first request does. The gateway adopts the copy from the pod's registration.

A model the store does not know (never registered, deleted, a name rather than a
concrete id) keeps its NOT_FOUND; so does one being unloaded here, which the
gateway chose to evict. An adapter attaches to its base model, the concrete model its
base's InferenceService serves, loaded here first when this pod does not hold it; it
may take the pod one over its ``max_adapters`` (the request is served; the gateway's next
adapter load on this pod evicts down to the room again), where a model over the pod's
memory is still refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gateway.core.domain import ModelSpec
from gateway.core.protocol import CONCRETE_ID_SEPARATOR, INFERENCE_SERVICES_PREFIX
from gateway.store import Store

from .model import ModelConfig
from .repository import ModelRepository

log = logging.getLogger(__name__)


class OnDemand:
    def __init__(self, store: Store, models: ModelRepository) -> None:
        self._store = store
        self._models = models

    async def ensure(self, model_id: str) -> None:
        """Load ``model_id`` here (or wait for its load in progress) if it is registered and
        this pod neither holds nor is unloading it; whatever loading raises (NoCapacity,
        LoadFailed, ...) passes."""
        if not self._models.absent(model_id):
            return
        spec = await self.spec(model_id)
        if spec is None:
            return
        if spec.base:
            base_id = await self._serving(spec.base)
            if base_id is None:
                return
            await self.ensure(base_id)
            spec = spec.on_base(base_id)
        log.info("model %s was sent to this pod, which holds no copy: loading it", model_id)
        config = ModelConfig(spec.model_id, spec.model_type, Path(spec.path), spec.key)
        await self._models.load(config, expected_bytes=spec.predicted_size, adapter_room=False)

    async def spec(self, model_id: str) -> ModelSpec | None:
        """The spec the store registers for concrete id ``model_id``; None if none does."""
        name, separator, _ = model_id.rpartition(CONCRETE_ID_SEPARATOR)
        if not separator or not name:
            return None
        record = await self._record(name)
        if record is None:
            return None
        for role in ("serving", "target"):
            fields = record.get(role)
            if isinstance(fields, dict) and fields.get("model_id") == model_id:
                return ModelSpec(**fields)
        return None

    async def _serving(self, name: str) -> str | None:
        """The concrete id InferenceService ``name`` serves now; None if it is not stored."""
        record = await self._record(name)
        fields = record.get("serving") if record is not None else None
        model_id = fields.get("model_id") if isinstance(fields, dict) else None
        return model_id if isinstance(model_id, str) else None

    async def _record(self, name: str) -> dict[str, Any] | None:
        key = INFERENCE_SERVICES_PREFIX + name
        record = (await self._store.items(key)).get(key)
        return record if isinstance(record, dict) else None
