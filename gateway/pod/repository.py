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
- Before a runtime loads a model, the ``Puller`` (gateway.pod.puller) brings its
  files into the pod's cache (S3) or checks them (a local path); the loading
  timeout covers both. A failed load and an unload remove the cached files.
- Requests are counted per model: ``with repository.serving(model_id) as model``
  counts one request in flight for as long as the block runs (however it ends)
  and one more request since the model was loaded. Plain integers: everything
  runs on the event loop.
- Room. A load that says how many bytes it expects to take is refused with
  ``NoCapacity`` when the bytes held (loaded models, those being unloaded
  included, as their memory is not yet free) plus those expected by loads in
  progress plus its own exceed ``capacity_bytes``. The gateway plans room before
  it loads; this catches two gateway replicas planning the same room at once.
- Adapters. A load whose key names a base model (``ModelConfig.base_model_id``)
  attaches to that model, which this pod must hold (LoadFailed otherwise); the
  runtime gets it in ``ModelConfig.base``. At most ``max_adapters`` are held or
  loading at once (NoCapacity beyond); they do not count against
  ``capacity_bytes``. Unloading a base unloads its adapters first.
- Unload is graceful: from the moment it begins, the model is no longer served
  (``ModelNotFound`` "model 'x' is being unloaded") nor listed by ``loaded()``,
  but requests already in flight finish first: the unload waits until none is
  left, for at most ``unload_drain_s`` seconds, then releases the model. A load
  of an id being unloaded waits for the unload, then loads it anew. Like loads,
  an unload goes on if its caller goes away, and concurrent unloads share one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.core.domain import LOAD_TIMEOUT_SECONDS
from gateway.core.errors import (
    GatewayError,
    LoadFailed,
    LoadTimeout,
    ModelNotFound,
    NoCapacity,
    PredictFailed,
)

from .model import InferenceRequest, Model, ModelConfig, Tensor
from .puller import Puller
from .runtimes import RuntimeRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One entry of the pod's holdings, as RuntimeStatus reports it."""

    model_id: str
    size_bytes: int
    in_flight: int = 0  # requests being served right now
    requests: int = 0  # requests received since the model was loaded


class _Held:
    """A loaded model and its request counters."""

    __slots__ = ("model", "in_flight", "requests", "idle", "base")

    def __init__(self, model: Model) -> None:
        self.model = model
        self.base = model.config.base_model_id  # an adapter's base model ("": a model)
        self.in_flight = 0
        self.requests = 0
        self.idle: asyncio.Event | None = None  # set when in_flight drops to 0, while unloading


class ModelRepository:
    """The loaded models of one pod, by concrete model id."""

    def __init__(
        self,
        runtimes: RuntimeRegistry,
        *,
        puller: Puller | None = None,
        max_loading_concurrency: int = 1,
        loading_timeout_s: float = LOAD_TIMEOUT_SECONDS,
        unload_drain_s: float = 30.0,
        capacity_bytes: int = 0,
        max_adapters: int | None = None,
    ) -> None:
        if max_loading_concurrency < 1:
            raise ValueError("max_loading_concurrency must be at least 1")
        if loading_timeout_s <= 0:
            raise ValueError("loading_timeout_s must be positive")
        if unload_drain_s < 0:
            raise ValueError("unload_drain_s must not be negative")
        self._runtimes = runtimes
        self._puller = puller or Puller(None, {})  # local paths only
        self._timeout_s = loading_timeout_s
        self._drain_s = unload_drain_s
        self._slots = asyncio.Semaphore(max_loading_concurrency)
        self._models: dict[str, _Held] = {}
        self._loading: dict[str, asyncio.Task[Model]] = {}
        self._capacity = capacity_bytes  # 0: no limit
        self._max_adapters = max_adapters  # None: no limit
        self._adapter_loads: set[str] = set()  # loads in progress that are adapters
        self._expected: dict[str, int] = {}  # loads in progress -> the bytes they said to expect
        self._unloading: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        self.on_change: Callable[[], None] = lambda: None  # what ``loaded()`` lists changed
        # Loads a registered model a request names that this pod is absent of
        # (gateway.pod.on_demand, when the pod has the shared store); None: NOT_FOUND.
        self.load_on_demand: Callable[[str], Awaitable[None]] | None = None

    @property
    def model_types(self) -> tuple[str, ...]:
        return self._runtimes.model_types

    def absent(self, model_id: str) -> bool:
        """Whether this pod neither holds nor unloads ``model_id`` (it may be loading it: a
        ``load`` then joins that load)."""
        return model_id not in self._models and model_id not in self._unloading

    async def prepare(self, model_id: str) -> None:
        """Before an inference request for ``model_id``: load it on demand if it is absent
        and ``load_on_demand`` is set (``serving`` then finds it)."""
        if self.load_on_demand is not None and self.absent(model_id):
            await self.load_on_demand(model_id)

    def get(self, model_id: str) -> Model:
        """The loaded model ``model_id``; ModelNotFound if this pod does not hold it
        (or is unloading it)."""
        return self._held(model_id).model

    @contextlib.contextmanager
    def serving(self, model_id: str) -> Iterator[Model]:
        """The loaded model ``model_id``, counted as serving one request meanwhile.

        ModelNotFound as ``get``. The request counts as in flight until the block
        ends, however it ends; an unload waits for that.
        """
        held = self._held(model_id)
        held.in_flight += 1
        held.requests += 1
        try:
            yield held.model
        finally:
            held.in_flight -= 1
            if held.in_flight == 0 and held.idle is not None:
                held.idle.set()

    def loaded(self) -> list[LoadedModel]:
        """The models served now, with their counters (not those being unloaded)."""
        return [
            LoadedModel(mid, held.model.size_bytes(), held.in_flight, held.requests)
            for mid, held in self._models.items()
            if mid not in self._unloading
        ]

    def forget_all(self) -> list[str]:
        """Forget every loaded model without unloading it, as the server that held them is
        gone (an MLServer that died: gateway.pod.mlserver); loads in progress fail on their
        own. The ids forgotten."""
        forgotten = list(self._models)
        for held in self._models.values():
            if held.idle is not None:
                held.idle.set()  # an unload draining it has nothing left to wait for
        self._models.clear()
        if forgotten:
            self.on_change()
        return forgotten

    def _admit(self, config: ModelConfig, expected: int, *, adapter_room: bool) -> None:
        model_id = config.model_id
        if config.base_model_id:
            self._admit_adapter(config, adapter_room=adapter_room)
            return
        if not (expected and self._capacity):
            return
        held = sum(h.model.size_bytes() for h in self._models.values() if not h.base)
        loading = sum(self._expected.values())
        if held + loading + expected > self._capacity:
            raise NoCapacity(
                f"this pod has no room for model '{model_id}': it expects {expected} bytes, and "
                f"{held} held + {loading} loading of {self._capacity} leaves {max(self._capacity - held - loading, 0)}"
            )

    def _base_for(self, config: ModelConfig) -> Model:
        """The loaded base model an adapter attaches to; LoadFailed (never NOT_FOUND, which
        says the adapter's own files are missing) when this pod does not hold it."""
        base = config.base_model_id
        held = self._models.get(base)
        if held is None or base in self._unloading:
            raise LoadFailed(
                f"adapter '{config.model_id}' needs its base model '{base}', "
                "which this pod does not hold"
            )
        return held.model

    def _admit_adapter(self, config: ModelConfig, *, adapter_room: bool) -> None:
        """An adapter attaches to a base this pod holds, within ``max_adapters`` (unless
        ``adapter_room`` is False)."""
        self._base_for(config)
        if self._max_adapters is None or not adapter_room:
            return
        adapters = sum(1 for h in self._models.values() if h.base) + len(self._adapter_loads)
        if adapters >= self._max_adapters:
            raise NoCapacity(
                f"this pod has no room for adapter '{config.model_id}': it holds "
                f"{adapters} of {self._max_adapters} adapters"
            )

    def _held(self, model_id: str) -> _Held:
        if model_id in self._unloading:
            raise ModelNotFound(model_id, f"model '{model_id}' is being unloaded")
        held = self._models.get(model_id)
        if held is None:
            raise ModelNotFound(model_id, f"model '{model_id}' is not loaded on this pod")
        return held

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

    async def load(
        self, config: ModelConfig, *, expected_bytes: int = 0, adapter_room: bool = True
    ) -> int:
        """Load ``config.model_id`` unless it is loaded already; its size in bytes.

        An unload of that id in progress is waited for first. A new load
        expecting ``expected_bytes`` that would overfill the pod: NoCapacity; so is an
        adapter beyond ``max_adapters``, unless ``adapter_room`` is False (a request that
        brought it here on demand: one over, until the gateway evicts one).
        """
        while (unloading := self._unloading.get(config.model_id)) is not None:
            await asyncio.wait([unloading])  # whatever its outcome; does not cancel it
        held = self._models.get(config.model_id)
        model = held.model if held is not None else None
        if model is None:
            task = self._loading.get(config.model_id)
            if task is None:
                self._admit(config, expected_bytes, adapter_room=adapter_room)
                task = asyncio.create_task(self._load(config), name=f"load {config.model_id}")
                self._loading[config.model_id] = task
                if config.base_model_id:
                    self._adapter_loads.add(config.model_id)
                self._expected[config.model_id] = expected_bytes
                task.add_done_callback(functools.partial(self._load_done, config.model_id))
            model = await asyncio.shield(task)
        return model.size_bytes()

    async def unload(self, model_id: str) -> None:
        """Drop ``model_id`` (after any load of it in progress, and once the requests
        in flight are done or ``unload_drain_s`` has passed); unknown ids are fine."""
        task = self._unloading.get(model_id)
        if task is None:
            if model_id not in self._models and model_id not in self._loading:
                return
            task = asyncio.create_task(self._unload(model_id), name=f"unload {model_id}")
            self._unloading[model_id] = task
            task.add_done_callback(functools.partial(self._unload_done, model_id))
            self.on_change()
        await asyncio.shield(task)

    async def close(self) -> None:
        """Cancel loads in progress and unload everything, without waiting for requests."""
        self._closing = True
        loading = list(self._loading.values())
        for task in loading:
            task.cancel()
        await asyncio.gather(*loading, return_exceptions=True)
        for held in self._models.values():
            if held.idle is not None:
                held.idle.set()  # ends the drain of unloads in progress
        await asyncio.gather(*self._unloading.values(), return_exceptions=True)
        while self._models:
            model_id, held = self._models.popitem()
            await _release(held.model)
            self._puller.remove(model_id)

    async def _unload(self, model_id: str) -> None:
        task = self._loading.get(model_id)
        if task is not None:
            await asyncio.wait([task])  # whatever its outcome; does not cancel it
        held = self._models.get(model_id)
        if held is None:
            return
        # a base model's adapters go first (their requests drain as the base's do)
        adapters = [mid for mid, h in self._models.items() if h.base == model_id]
        if adapters:
            await asyncio.gather(*(self.unload(mid) for mid in adapters))
        if held.in_flight and not self._closing:
            log.info(
                "unloading model %s: waiting for %d requests in flight", model_id, held.in_flight
            )
            held.idle = asyncio.Event()
            try:
                async with asyncio.timeout(self._drain_s):
                    await held.idle.wait()
            except TimeoutError:
                log.warning(
                    "unloading model %s with %d requests still in flight after %g s",
                    model_id,
                    held.in_flight,
                    self._drain_s,
                )
        if self._models.get(model_id) is held:
            del self._models[model_id]
            await _release(held.model)
            await asyncio.to_thread(self._puller.remove, model_id)
            log.info("unloaded model %s", model_id)

    def _unload_done(self, model_id: str, task: asyncio.Task[None]) -> None:
        if self._unloading.get(model_id) is task:
            del self._unloading[model_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("model %s failed to unload: %s", model_id, exc)

    async def _load(self, config: ModelConfig) -> Model:
        runtime = self._runtimes.get(config.model_type)
        async with self._slots:
            log.info(
                "loading model %s (%s) from %s", config.model_id, config.model_type, config.path
            )
            model: Model | None = None
            deadline: asyncio.Timeout | None = None
            try:
                async with asyncio.timeout(self._timeout_s) as deadline:
                    local = await self._puller.fetch(config)
                    if config.base_model_id:
                        local = replace(local, base=self._base_for(config))
                    model = runtime(local)
                    await model.load()
            except BaseException as exc:
                if model is not None:
                    await _release(model)
                self._puller.remove(config.model_id)
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
        self._models[config.model_id] = _Held(model)
        self._expected.pop(config.model_id, None)  # counted as held from now on
        log.info("loaded model %s: %d bytes", config.model_id, model.size_bytes())
        self.on_change()
        return model

    def _load_done(self, model_id: str, task: asyncio.Task[Model]) -> None:
        if self._loading.get(model_id) is task:
            del self._loading[model_id]
            self._expected.pop(model_id, None)
            self._adapter_loads.discard(model_id)
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
