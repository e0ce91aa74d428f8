"""The models a pod holds: load, unload, look up and predict, without any transport.

- A model is registered only once its ``load()`` has returned: a load that fails
  or times out leaves nothing behind (the runtime's ``unload()`` is called to
  release whatever it acquired).
- Loading an id that is already loaded is a no-op; concurrent loads of one id
  share one attempt (the first request's type and path win, which is safe as
  concrete ids name one spec). A caller that goes away does not cancel the load
  the others wait for.
- At most ``max_loading_concurrency`` loads run at once; the rest queue. The
  timeout bounds each load from the moment it gets its turn (time in the queue
  is not counted) and raises ``LoadTimeout``. A worker thread cannot be
  stopped: whatever it still produces is dropped.
- ``predict`` reports a runtime's own exception as ``PredictFailed``
  ("<ExceptionType>: <message>"); ``GatewayError``s (``InvalidInput``, ...) pass.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError, LoadFailed, LoadTimeout, ModelNotFound, PredictFailed

from .model import InferenceRequest, Model, ModelConfig, Tensor
from .runtimes import RuntimeRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One entry of the pod's holdings, as RuntimeStatus reports it."""

    model_id: str
    size_bytes: int


class ModelRepository:
    """The loaded models of one pod, by concrete model id."""

    def __init__(
        self,
        runtimes: RuntimeRegistry,
        *,
        max_loading_concurrency: int = 1,
        loading_timeout_s: float = 90.0,
    ) -> None:
        if max_loading_concurrency < 1:
            raise ValueError("max_loading_concurrency must be at least 1")
        if loading_timeout_s <= 0:
            raise ValueError("loading_timeout_s must be positive")
        self._runtimes = runtimes
        self._timeout_s = loading_timeout_s
        self._slots = asyncio.Semaphore(max_loading_concurrency)
        self._models: dict[str, Model] = {}
        self._loading: dict[str, asyncio.Task[Model]] = {}

    @property
    def model_types(self) -> tuple[str, ...]:
        return self._runtimes.model_types

    def get(self, model_id: str) -> Model:
        """The loaded model ``model_id``; ModelNotFound if this pod does not hold it."""
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id, f"model '{model_id}' is not loaded on this pod")
        return model

    def loaded(self) -> list[LoadedModel]:
        return [LoadedModel(mid, model.size_bytes()) for mid, model in self._models.items()]

    @staticmethod
    async def predict(model: Model, request: InferenceRequest) -> Sequence[Tensor]:
        """``model.predict(request)``, a runtime's own exception becoming PredictFailed."""
        try:
            return await model.predict(request)
        except GatewayError:
            raise
        except Exception as exc:
            log.warning("model %s: predict raised", model.model_id, exc_info=True)
            raise PredictFailed(f"{type(exc).__name__}: {exc}") from exc

    async def load(self, config: ModelConfig) -> int:
        """Load ``config.model_id`` unless it is loaded already; its size in bytes."""
        model = self._models.get(config.model_id)
        if model is None:
            task = self._loading.get(config.model_id)
            if task is None:
                task = asyncio.create_task(self._load(config), name=f"load {config.model_id}")
                self._loading[config.model_id] = task
                task.add_done_callback(functools.partial(self._load_done, config.model_id))
            model = await asyncio.shield(task)
        return model.size_bytes()

    async def unload(self, model_id: str) -> None:
        """Drop ``model_id`` (after any load of it in progress); unknown ids are fine."""
        task = self._loading.get(model_id)
        if task is not None:
            await asyncio.wait([task])  # whatever its outcome; does not cancel it
        model = self._models.pop(model_id, None)
        if model is not None:
            await _release(model)
            log.info("unloaded model %s", model_id)

    async def close(self) -> None:
        """Cancel loads in progress and unload everything."""
        loading = list(self._loading.values())
        for task in loading:
            task.cancel()
        await asyncio.gather(*loading, return_exceptions=True)
        for model_id in list(self._models):
            await self.unload(model_id)

    async def _load(self, config: ModelConfig) -> Model:
        runtime = self._runtimes.get(config.model_type)
        async with self._slots:
            log.info(
                "loading model %s (%s) from %s", config.model_id, config.model_type, config.path
            )
            model: Model | None = None
            deadline: asyncio.Timeout | None = None
            try:
                model = runtime(config)
                async with asyncio.timeout(self._timeout_s) as deadline:
                    await model.load()
            except BaseException as exc:
                if model is not None:
                    await _release(model)
                if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                    ms = round(self._timeout_s * 1000)
                    raise LoadTimeout(
                        f"loading model '{config.model_id}' took longer than {ms} ms"
                    ) from None
                if isinstance(exc, Exception) and not isinstance(exc, GatewayError):
                    raise LoadFailed(
                        f"loading model '{config.model_id}' failed: {type(exc).__name__}: {exc}"
                    ) from exc
                raise
        self._models[config.model_id] = model
        log.info("loaded model %s: %d bytes", config.model_id, model.size_bytes())
        return model

    def _load_done(self, model_id: str, task: asyncio.Task[Model]) -> None:
        if self._loading.get(model_id) is task:
            del self._loading[model_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("model %s failed to load: %s", model_id, exc)


async def _release(model: Model) -> None:
    try:
        await model.unload()
    except Exception:
        log.warning("model %s: unload raised", model.model_id, exc_info=True)


def predicted_size(path: Path, multiplier: float) -> int:
    """Bytes a model at ``path`` is expected to take: its size on disk x ``multiplier``.

    Blocking (walks a folder): call it from a worker thread.
    """
    if not path.exists():
        raise LoadFailed(f"model file not found: {path}")
    if path.is_file():
        on_disk = path.stat().st_size
    else:
        on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return math.ceil(on_disk * multiplier)
