"""A model the adapter keeps in its repository: its load and unload are MLServer's.

``MLServerModel`` is the pod's ``Model`` for every format of an MLServer runtime, so the
pod's ModelRepository gives these models what it gives its own: one load per id, the
loading concurrency and its timeout, the capacity check, the puller, the request drain
on unload. ``load`` lays out the model's folder (gateway.pod.mlserver.layout) and asks
MLServer to load it; its size is its bytes on disk x the size multiplier, as ModelMesh's
MLServer adapter reports it (MLServer does not tell a model's memory). Inference never
reaches it: Envoy sends requests to MLServer itself.

A load the repository abandons (its timeout) cannot be taken back from MLServer, which
goes on loading: the unload that follows waits for that load, off the caller's path,
then unloads, so nothing is left loaded that the gateway does not know of.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.core.errors import GatewayError, ModelNotFound, Unavailable

from ..model import InferenceRequest, Model, ModelConfig, ModelMetadata, Tensor
from ..repository import predicted_size
from . import layout
from .client import MLServerClient

log = logging.getLogger(__name__)

UNLOAD_TIMEOUT_S = 60.0


@dataclass
class MLServerBackend:
    """What every MLServerModel of one pod shares."""

    client: MLServerClient
    models_dir: Path
    size_multiplier: float
    # unloads waiting for an abandoned load to finish (kept so they are not collected)
    pending: set[asyncio.Task[None]] = field(default_factory=set)

    def later(self, task: asyncio.Task[None]) -> None:
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)


class MLServerModel(Model):
    backend: MLServerBackend  # set on the class made by ``model_class``

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._size = 0
        self._loading: asyncio.Future[None] | None = None

    async def load(self) -> None:
        backend, config = self.backend, self.config
        self._size = await asyncio.to_thread(predicted_size, config.path, backend.size_multiplier)
        await asyncio.to_thread(
            layout.write, backend.models_dir, config.model_id, config.model_type, config.path
        )
        self._loading = asyncio.ensure_future(backend.client.load(config.model_id))
        await asyncio.shield(self._loading)  # a timeout abandons the wait, not MLServer's load

    async def unload(self) -> None:
        loading = self._loading
        if loading is not None and not loading.done():
            log.info(
                "model %s: MLServer is still loading it; unloading once it is done", self.model_id
            )
            self.backend.later(asyncio.create_task(self._unload_after(loading)))
            return
        await self._unload()

    async def _unload_after(self, loading: asyncio.Future[None]) -> None:
        try:
            await loading
        except Exception:  # noqa: BLE001 - it failed: nothing of it is left in MLServer
            await asyncio.to_thread(layout.remove, self.backend.models_dir, self.model_id)
            return
        await self._unload()

    async def _unload(self) -> None:
        try:
            await self.backend.client.unload(self.model_id, UNLOAD_TIMEOUT_S)
        except (ModelNotFound, Unavailable):
            pass  # not loaded there (a failed load), or MLServer is gone, and its models with it
        finally:
            await asyncio.to_thread(layout.remove, self.backend.models_dir, self.model_id)

    def size_bytes(self) -> int:
        return self._size

    def metadata(self) -> ModelMetadata:
        return ModelMetadata("mlserver", (), ())

    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        raise GatewayError(f"model {self.model_id} is served by MLServer, not by its adapter")


def model_class(backend: MLServerBackend) -> type[MLServerModel]:
    """The Model class of one pod's MLServer models (``backend`` bound to it)."""
    return type("MLServerModel", (MLServerModel,), {"backend": backend})
