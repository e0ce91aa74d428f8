"""The registry of InferenceServices: what users applied, and where names route.

Each InferenceService is a virtual model (its name) pointing at a concrete
model (``<name>__isvc-<hash>``). Re-applying a changed spec registers a new
concrete model and loads it while the old one keeps serving; the name moves to
the new id only once it is loaded, and then the old one is unloaded, as
ModelMesh rolls out a changed InferenceService. Records are kept in the store,
so a restarted gateway has them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from gateway.domain import ModelSpec, ModelState
from gateway.errors import GatewayError, InvalidSpec, ModelNotFound
from gateway.placement import Placement
from gateway.resources import InferenceService, parse_inference_service
from gateway.storage import StorageRoots, size_on_disk
from gateway.store import Store

log = logging.getLogger(__name__)

_PREFIX = "inferenceservices/"
# Set by the server, ignored on apply (as Kubernetes does): `get -o yaml | apply` is a no-op.
_SERVER_METADATA = (
    "creationTimestamp", "resourceVersion", "uid", "generation", "managedFields", "selfLink",
)


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    namespace: str = "modelmesh-serving"
    size_multiplier: float = 1.25  # predicted size = bytes on disk x this
    default_model_size: int = 1 << 20  # when the file is not there yet
    url_base: str = "http://127.0.0.1:8008"
    # After a rollout moves the name, requests routed to the old version a
    # moment before may still be on their way to its pod: unload it after this.
    rollout_grace: float = 2.0


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    manifest: dict[str, Any]
    created: float  # unix time
    serving: ModelSpec  # the concrete model the name routes to
    target: ModelSpec  # the concrete model of the latest spec

    def to_json(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "created": self.created,
                "serving": asdict(self.serving), "target": asdict(self.target)}

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> Record:
        return cls(name, data["manifest"], data["created"],
                   ModelSpec(**data["serving"]), ModelSpec(**data["target"]))


class Registry:
    def __init__(self, store: Store, placement: Placement, roots: StorageRoots,
                 settings: RegistrySettings = RegistrySettings()) -> None:
        self._store = store
        self._placement = placement
        self._roots = roots
        self._settings = settings
        self._records: dict[str, Record] = {}
        # name or concrete id -> concrete id to route to; read on every request.
        self._routes: dict[str, str] = {}
        self._rollouts: set[asyncio.Task[None]] = set()
        # apply and delete read, then write: one at a time, whatever the store awaits.
        self._writing = asyncio.Lock()

    async def restore(self) -> None:
        """Load every record from the store and register its models."""
        for key, data in (await self._store.items(_PREFIX)).items():
            record = Record.from_json(key.removeprefix(_PREFIX), data)
            self._records[record.name] = record
            for spec in {record.serving, record.target}:
                self._placement.register(spec, standby=True)
            self._index(record)
            if record.target != record.serving:
                self._start_rollout(record)
        log.info("restored %d InferenceServices", len(self._records))

    def resolve(self, name: str) -> str:
        """The concrete model id a request for ``name`` goes to."""
        try:
            return self._routes[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def get(self, name: str) -> Record:
        try:
            return self._records[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def list(self) -> list[Record]:
        return sorted(self._records.values(), key=lambda r: r.name)

    async def apply(self, document: Any) -> tuple[Record, str]:
        """Create or update from a document; returns the record and what happened."""
        async with self._writing:
            return await self._apply(document)

    async def _apply(self, document: Any) -> tuple[Record, str]:
        isvc = parse_inference_service(document)
        namespace = isvc.metadata.namespace or self._settings.namespace
        if namespace != self._settings.namespace:
            raise InvalidSpec(
                f"namespace '{namespace}': this gateway serves namespace '{self._settings.namespace}'"
            )
        spec = self._model_spec(isvc)
        manifest = isvc.model_dump(mode="json", exclude_unset=True, exclude={"status"})
        manifest["metadata"]["namespace"] = namespace
        for key in _SERVER_METADATA:
            manifest["metadata"].pop(key, None)
        old = self._records.get(isvc.name)
        if old is None:
            self._placement.register(spec)
            record = Record(isvc.name, manifest, time.time(), spec, spec)
            await self._save(record)
            self._placement.load_in_background(spec.model_id)
            return record, "created"
        if old.target == spec and old.manifest == manifest:
            return old, "unchanged"
        self._placement.register(spec)
        record = replace(old, manifest=manifest, target=spec)
        await self._save(record)
        if old.target not in (old.serving, spec):  # an unfinished rollout is superseded
            self._routes.pop(old.target.model_id, None)
            await self._placement.unregister(old.target.model_id)
        if spec != record.serving and spec != old.target:
            self._start_rollout(record)
        return record, "configured"

    async def delete(self, name: str) -> None:
        async with self._writing:
            await self._delete(name)

    async def _delete(self, name: str) -> None:
        record = self.get(name)
        del self._records[name]
        for key in (name, record.serving.model_id, record.target.model_id):
            self._routes.pop(key, None)
        await self._store.delete(_PREFIX + name)
        for spec in {record.serving, record.target}:
            await self._placement.unregister(spec.model_id)

    def status(self, record: Record) -> dict[str, Any]:
        """The record's status in KServe's shape (conditions, modelStatus, url)."""
        serving = self._placement.status(record.serving.model_id)
        target = self._placement.status(record.target.model_id)
        if record.target == record.serving:
            transition = "UpToDate"
        elif target.state is ModelState.FAILED_TO_LOAD:
            transition = "BlockedByFailedLoad"
        else:
            transition = "InProgress"
        failed = next((s for s in (target, serving) if s.state is ModelState.FAILED_TO_LOAD), None)
        condition: dict[str, Any] = {"type": "Ready", "status": "True" if serving.ready else "False"}
        if not serving.ready:
            if serving.state is ModelState.FAILED_TO_LOAD:
                condition.update(reason="ModelLoadFailed", message=serving.message)
            else:
                condition.update(reason="ModelNotReady", message=f"model is {serving.state.value}")
        status: dict[str, Any] = {
            "conditions": [condition],
            "url": f"{self._settings.url_base}/v2/models/{record.name}",
            "modelStatus": {
                "states": {
                    "activeModelState": serving.state.value,
                    "targetModelState": "" if record.target == record.serving else target.state.value,
                },
                "transitionStatus": transition,
                "copies": {"totalCopies": serving.copies},
            },
        }
        if failed is not None:
            status["modelStatus"]["lastFailureInfo"] = {"reason": "ModelLoadFailed", "message": failed.message}
        return status

    def _model_spec(self, isvc: InferenceService) -> ModelSpec:
        path = self._roots.resolve(isvc.model)
        on_disk = size_on_disk(path)
        predicted = (
            int(on_disk * self._settings.size_multiplier) if on_disk else self._settings.default_model_size
        )
        return ModelSpec(isvc.concrete_id(), isvc.model.modelFormat.name.lower(), str(path), predicted)

    async def _save(self, record: Record) -> None:
        await self._store.put(_PREFIX + record.name, record.to_json())
        self._records[record.name] = record
        self._index(record)

    def _index(self, record: Record) -> None:
        self._routes[record.name] = record.serving.model_id
        self._routes[record.serving.model_id] = record.serving.model_id
        self._routes[record.target.model_id] = record.target.model_id

    def _start_rollout(self, record: Record) -> None:
        task = asyncio.create_task(self._roll_out(record.name, record.target), name=f"rollout {record.name}")
        self._rollouts.add(task)
        task.add_done_callback(self._rollouts.discard)

    async def _roll_out(self, name: str, target: ModelSpec) -> None:
        """Load the new version with as many copies as the old has, then move the name to it."""
        record = self._records.get(name)
        copies = self._placement.status(record.serving.model_id).copies if record is not None else 1
        try:
            await self._placement.ensure_copies(target.model_id, max(1, copies))
        except GatewayError as exc:
            log.warning("rollout of %s to %s is blocked: %s", name, target.model_id, exc.message)
            return
        async with self._writing:
            record = self._records.get(name)
            if record is None or record.target != target:
                return  # deleted or superseded meanwhile
            old = record.serving
            await self._save(replace(record, serving=target))
            self._routes.pop(old.model_id, None)
        log.info("rolled out %s: traffic moved from %s to %s", name, old.model_id, target.model_id)
        await asyncio.sleep(self._settings.rollout_grace)
        await self._placement.unregister(old.model_id)

    async def close(self) -> None:
        for task in list(self._rollouts):
            task.cancel()
        await asyncio.gather(*self._rollouts, return_exceptions=True)
