"""The registry of InferenceServices: what users applied, and where names route.

Each InferenceService is a virtual model (its name) pointing at a concrete
model (``<name>__isvc-<hash>``). Re-applying a changed spec registers a new
concrete model; gateway.control.rollouts loads it while the old one keeps
serving and moves the name once it is loaded (``move_traffic``), as ModelMesh
rolls out a changed InferenceService. Records are kept in the store, so a
restarted gateway has them all, and every replica mirrors them.

Each InferenceService is served by the runtime gateway.kserve.serving_runtimes selects
for it, chosen again whenever a runtime is applied or deleted. One with no
runtime is stored but never registered with the placement: it is not ready,
and a request for it gets ModelNotFound saying why.

So is one whose storage reference cannot be used (an unknown PVC or storage
key, a path that leaves its PVC, no bucket: gateway.kserve.storage): READY False,
``InvalidPredictorSpec``, as ModelMesh reports an invalid predictor spec.
Whether the files are there is the pods' to find out when they load (a missing
file or object, denied access: ModelLoadFailed with the pods' messages); the
registry only lists them, to predict the model's size.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.control.records import Record, RegistrySettings, ServingView, predictor_of
from gateway.control.rollouts import Rollouts
from gateway.core.domain import ModelSpec
from gateway.core.errors import (
    InvalidSpec,
    ModelNotFound,
    StorageError,
    StorageFailure,
)
from gateway.core.placement import Coordinator, Placement, Solo
from gateway.core.protocol import INFERENCE_SERVICES_PREFIX
from gateway.kserve.experiments import PREFIX as EXPERIMENTS_PREFIX
from gateway.kserve.experiments import ExperimentCatalog, ExperimentRecord
from gateway.kserve.resources import (
    DEFAULT_NAMESPACE,
    InferenceService,
    parse_inference_service,
    stored_manifest,
)
from gateway.kserve.serving_runtimes import PREFIXES as RUNTIME_PREFIXES
from gateway.kserve.serving_runtimes import (
    RuntimeCatalog,
    RuntimeRecord,
    Selection,
)
from gateway.kserve.storage import StorageRoots
from gateway.store import Store
from gateway.store.sync import Mirror

log = logging.getLogger(__name__)

_PREFIX = INFERENCE_SERVICES_PREFIX
INVALID_STORAGE = "InvalidPredictorSpec"  # KServe's failure reason for a spec that cannot be served


class Registry:
    def __init__(
        self,
        store: Store,
        placement: Placement,
        roots: StorageRoots,
        settings: RegistrySettings | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        coordinator: Coordinator | None = None,
    ) -> None:
        self._store = store
        self._placement = placement
        self._coordinator: Coordinator = coordinator or Solo()
        self._roots = roots
        self._settings = settings or RegistrySettings()
        self._namespace = namespace
        self._records: dict[str, Record] = {}
        self.runtimes = RuntimeCatalog(store, namespace)
        self.experiments = ExperimentCatalog(store, namespace)
        self._selections: dict[str, Selection] = {}  # InferenceService name -> its runtime
        self._storage_problems: dict[
            str, str
        ] = {}  # InferenceService name -> why its storage is unusable
        # name or concrete id -> concrete id to route to; read on every request.
        self._routes: dict[str, str] = {}
        # concrete id -> its InferenceService's per-try timeout (ms), when it sets one
        self._per_try_ms: dict[str, int] = {}
        # name -> (latest concrete id, its percent) while a canary holds the rollout
        # (canaryTrafficPercent under 100, the latest spec not rolled out yet)
        self._splits: dict[str, tuple[str, int]] = {}
        self.generation = (
            0  # bumped on every change of _routes: what resolve said before may be stale
        )
        self._tasks: set[asyncio.Task[None]] = set()  # work started in the background
        self.rollouts = Rollouts(
            self,
            placement,
            self._coordinator,
            grace=self._settings.rollout_grace,
            check_every=self._settings.rollout_check,
        )
        # apply and delete read, then write: one at a time, whatever the store awaits.
        self._writing = asyncio.Lock()
        # an adapter's base model is the InferenceService it names, served by its id now
        placement.resolve_base = self.resolve

    async def restore(self) -> None:
        """Load every runtime and record from the store and register the models that have a runtime."""
        await self.runtimes.restore()
        await self.experiments.restore()
        for key, data in (await self._store.items(_PREFIX)).items():
            record = Record.from_json(key.removeprefix(_PREFIX), data)
            self._records[record.name] = record
            isvc = self._isvc(record)
            self._selections[record.name] = self.runtimes.select(isvc.model)
            if not record.target.path:  # stored while its storage was unusable: try again
                spec, problem = await self._model_spec(isvc)
                self._set_storage_problem(record.name, problem)
                if not problem:
                    record = await self._save(replace(record, serving=spec, target=spec))
            if not self._servable(record.name):
                continue
            for spec in {record.serving, record.target}:
                self._register(record.name, spec, standby=True)
            self._index(record)
            if record.target != record.serving:
                self.rollouts.start(record)
        log.info("restored %d InferenceServices", len(self._records))

    def followers(self) -> list[Mirror]:
        """Mirrors of the registry's prefixes: run them to see other replicas' applies and deletes."""
        mirrors = [
            Mirror(self._store, prefix, functools.partial(self._absorb_runtime, kind))
            for kind, prefix in RUNTIME_PREFIXES.items()
        ]
        experiments = Mirror(
            self._store,
            EXPERIMENTS_PREFIX,
            lambda name, _, data: self.experiments.absorb(name, data),
        )
        return [*mirrors, experiments, Mirror(self._store, _PREFIX, self._absorb)]

    def _absorb(self, name: str, _: Any, data: dict[str, Any] | None) -> None:
        """An InferenceService written by any replica (this one's own writes come back too:
        while one is in progress, the change is taken in after it, when it is no news)."""
        if self._writing.locked():
            self._background(self._absorb_locked(name, data))
            return
        old = self._records.get(name)
        if data is None:
            if old is not None:
                log.info("%s was deleted on another gateway replica", name)
                del self._records[name]
                self._selections.pop(name, None)
                self._unroute(name, old.serving.model_id, old.target.model_id)
                for spec in {old.serving, old.target}:
                    self._placement.forget(spec.model_id)
            return
        record = Record.from_json(name, data)
        if record == old:
            return
        if old is not None and record.version < old.version:
            return  # an older write, late (this replica's own echo): the newer one stays
        self._records[name] = record
        self._selections[name] = self.runtimes.select(self._isvc(record).model)
        # Stored with an unusable storage reference (no path): the replica that applied it said why.
        self._set_storage_problem(
            name,
            ""
            if record.target.path
            else "its storage reference cannot be used "
            "(the apply's answer, or the status on the replica that took it, says why)",
        )
        if not self._servable(name):
            return
        for spec in {record.serving, record.target}:
            self._register(name, spec, standby=True)
        if old is not None:
            self._unroute(old.serving.model_id)
            for spec in {old.serving, old.target} - {record.serving, record.target}:
                self._placement.forget(spec.model_id)
        self._index(record)

    async def _absorb_locked(self, name: str, data: dict[str, Any] | None) -> None:
        async with self._writing:
            current = self._records.get(name)
            if data is not None and current is not None and Record.from_json(name, data) == current:
                return
            if data is None and current is None:
                return
        self._absorb(name, None, data)

    def _absorb_runtime(self, kind: str, name: str, _: Any, data: dict[str, Any] | None) -> None:
        if self.runtimes.absorb(kind, name, data):
            self._background(self._reselect_locked())

    async def _reselect_locked(self) -> None:
        async with self._writing:
            await self._reselect()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def resolve(self, name: str) -> str:
        """The concrete model id a request for ``name`` goes to."""
        try:
            return self._routes[name]
        except KeyError:
            selection = self._selections.get(name)
            if selection is not None and selection.runtime is None:
                raise ModelNotFound(
                    name,
                    f"model '{name}' has no serving runtime "
                    f"({selection.reason}): {selection.message}",
                ) from None
            if name in self._storage_problems:
                raise ModelNotFound(
                    name,
                    f"model '{name}' cannot be served ({INVALID_STORAGE}): "
                    f"{self._storage_problems[name]}",
                ) from None
            raise ModelNotFound(name) from None

    def split(self, name: str) -> tuple[str, int] | None:
        """(latest concrete id, its canaryTrafficPercent) while ``name``'s rollout is held at
        a canary; None otherwise."""
        return self._splits.get(name)

    def canary(self, name: str) -> tuple[str, int] | None:
        """(latest concrete id, the percent of ``name``'s requests it gets now) while a canary
        holds: its canaryTrafficPercent once it is ready, 0 while it loads or failed. The one
        rule the router draws by and the status shows."""
        split = self._splits.get(name)
        if split is None:
            return None
        latest, percent = split
        return latest, percent if self._placement.ready(latest) else 0

    def holds_canary(self, name: str) -> bool:
        """Whether ``name``'s latest spec waits at a canary percent instead of rolling out."""
        return name in self._splits

    def per_try_timeout_ms(self, model_id: str) -> int | None:
        """The per-try timeout the InferenceService serving ``model_id`` sets (its
        ``mmgw.io/per-try-timeout``); None: envoy.yaml's default."""
        return self._per_try_ms.get(model_id)

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
        if isvc.name in self.experiments:
            raise InvalidSpec(
                f"metadata.name: '{isvc.name}' is an Experiment's public name; "
                "an InferenceService needs a name of its own"
            )
        namespace = isvc.metadata.namespace or self._namespace
        if namespace != self._namespace:
            raise InvalidSpec(
                f"namespace '{namespace}': this gateway serves namespace '{self._namespace}'"
            )
        spec, problem = await self._model_spec(isvc)
        selection = self.runtimes.select(isvc.model)
        manifest = stored_manifest(isvc)
        manifest["metadata"]["namespace"] = namespace
        old = self._records.get(isvc.name)
        if old is not None and old.target == spec and old.manifest == manifest:
            return old, "unchanged"
        was_servable = old is not None and self._servable(old.name)
        # The store first: if it cannot be written (etcd down), nothing has changed here.
        if old is None or not was_servable or selection.runtime is None or problem:
            # No copy serves it now, or none may: start over with the new spec.
            record = Record(
                isvc.name,
                manifest,
                old.created if old else time.time(),
                spec,
                spec,
                old.version + 1 if old else 1,
                rolled_out=predictor_of(manifest),
                previous=(old.rolled_out if old.serving != spec else old.previous) if old else None,
            )
            await self._store.put(_PREFIX + record.name, record.to_json())
            self._selections[isvc.name] = selection
            self._set_storage_problem(isvc.name, problem)
            servable = self._servable(isvc.name)
            if old is not None:
                await self._withdraw(old)
            if servable:
                self._register(isvc.name, spec)
            self._remember(record)
            if servable:
                self._placement.load_in_background(spec.model_id)
            return record, "created" if old is None else "configured"
        record = replace(old, manifest=manifest, target=spec, version=old.version + 1)
        await self._store.put(_PREFIX + record.name, record.to_json())
        self._selections[isvc.name] = selection
        self._set_storage_problem(isvc.name, problem)
        self._register(isvc.name, spec)
        was_held = self.holds_canary(isvc.name)
        self._remember(record)
        if old.target not in (old.serving, spec):  # an unfinished rollout is superseded
            self._unroute(old.target.model_id)
            await self._placement.unregister(old.target.model_id)
        if spec != record.serving:
            if self.holds_canary(isvc.name):  # loaded, and given its percent once ready
                self._placement.load_in_background(spec.model_id)
            elif spec != old.target or was_held:  # promoted: the rollout moves the rest
                self.rollouts.start(record)
        return record, "configured"

    async def apply_experiment(self, document: Any) -> tuple[ExperimentRecord, str]:
        """Create or update an Experiment whose candidates are InferenceServices; InvalidSpec
        for a bad one, with nothing stored."""
        async with self._writing:
            experiment, manifest = self.experiments.parse(document)
            if experiment.name in self._records:
                raise InvalidSpec(
                    f"metadata.name: '{experiment.name}' is an InferenceService; an "
                    "Experiment's public name must be a name of its own"
                )
            named = [c.name for c in experiment.spec.candidates]
            if experiment.spec.mirror is not None:
                named.append(experiment.spec.mirror.name)
            unknown = [name for name in named if name not in self._records]
            if unknown:
                raise InvalidSpec(
                    f"candidates / mirror: {', '.join(unknown)}: no InferenceService of that name"
                )
            return await self.experiments.put(experiment, manifest)

    async def delete_experiment(self, name: str) -> None:
        async with self._writing:
            await self.experiments.delete(name)

    async def undo(self, name: str) -> tuple[Record, str]:
        """Back to the rolled-out spec while a rollout or canary is under way (the latest is
        dropped), else to the spec rolled out before it, as `kubectl rollout undo` does:
        applied as its owner would. InvalidSpec when there is nothing to go back to."""
        record = self.get(name)
        if record.target != record.serving:
            predictor = record.rolled_out
        else:
            predictor = record.previous
        if predictor is None:
            raise InvalidSpec(
                f"inferenceservice '{name}' has no earlier rolled-out version to go back to"
            )
        document = copy.deepcopy(record.manifest)
        document["spec"]["predictor"] = copy.deepcopy(predictor)
        return await self.apply(document)

    async def delete(self, name: str) -> None:
        async with self._writing:
            await self._delete(name)

    async def _delete(self, name: str) -> None:
        record = self.get(name)
        await self._store.delete(_PREFIX + name)
        del self._records[name]
        await self._withdraw(record)
        self._selections.pop(name, None)
        self._storage_problems.pop(name, None)

    async def _withdraw(self, record: Record) -> None:
        """Stop routing to the record's models and take them off the placement."""
        self._unroute(record.name, record.serving.model_id, record.target.model_id)
        for spec in {record.serving, record.target}:
            if self._placement.is_registered(spec.model_id):
                await self._placement.unregister(spec.model_id)

    async def apply_runtime(self, document: Any) -> tuple[RuntimeRecord, str]:
        """Create or update a (Cluster)ServingRuntime, then choose every InferenceService's runtime again."""
        async with self._writing:
            result = await self.runtimes.apply(document)
            await self._reselect()
            return result

    async def delete_runtime(self, kind: str, name: str) -> None:
        async with self._writing:
            await self.runtimes.delete(kind, name)
            await self._reselect()

    async def _reselect(self) -> None:
        for name, record in self._records.items():
            was_servable = self._servable(name)
            self._selections[name] = self.runtimes.select(self._isvc(record).model)
            if was_servable and not self._servable(name):
                await self._withdraw(record)
                await self._save(record.rolled_out_to_target())
                log.info("%s has no runtime now: %s", name, self._selections[name].message)
            elif self._servable(name) and not was_servable:
                self._register(name, record.target)
                self._index(record)
                self._placement.load_in_background(record.target.model_id)
            elif self._servable(name):  # its runtime may be another one now
                for spec in {record.serving, record.target}:
                    self._register(name, spec)

    def _register(self, name: str, spec: ModelSpec, *, standby: bool = False) -> None:
        runtime = self._selections[name].runtime
        self._placement.register(
            spec, standby=standby, runtime=runtime.name if runtime is not None else ""
        )

    def view(self, record: Record) -> ServingView:
        """What is known of the record's models now, for its status (gateway.adapters.api.status)."""
        selection = self._selections[record.name]
        runtime = selection.runtime
        if runtime is None:
            problem: tuple[str, str] | None = (selection.reason, selection.message)
        elif record.name in self._storage_problems:
            problem = (INVALID_STORAGE, self._storage_problems[record.name])
        else:
            problem = None
        if problem is not None or runtime is None:
            return ServingView(record, runtime, problem)
        return ServingView(
            record,
            runtime,
            None,
            self._placement.status(record.serving.model_id),
            self._placement.status(record.target.model_id),
            self._placement.serves(runtime.name, record.serving.model_type),
            canary[1] if (canary := self.canary(record.name)) else None,
        )

    async def _model_spec(self, isvc: InferenceService) -> tuple[ModelSpec, str]:
        """The model the spec names, and why its storage cannot be used ("" when it can).

        An unusable one gets a spec with an empty path, never registered.
        """
        model_id, model_type = isvc.concrete_id(), isvc.model.modelFormat.name.lower()
        base = isvc.base_model
        default = self._settings.default_model_size
        try:
            location = self._roots.resolve(isvc.model)
        except StorageError as exc:
            return ModelSpec(model_id, model_type, "", default), exc.message
        try:
            size = await self._roots.measure(location)
        except StorageFailure as exc:  # the pods will say so when they load it
            log.warning("%s: cannot measure the model: %s", isvc.name, exc.message)
            size = None
        predicted = int(size * self._settings.size_multiplier) if size else default
        if isinstance(location, Path):
            try:
                schema = self._roots.schema(isvc.model)
            except StorageError as exc:
                return ModelSpec(model_id, model_type, "", default), exc.message
            # the pod checks again at each load that the files stay in the PVC (gateway.pod.puller)
            fields: dict[str, str] = {}
            root = self._roots.root_of(location)
            if root is not None:
                fields["pvc_root"] = str(root)
            if schema is not None:
                fields["schema_path"] = str(schema)
            key = json.dumps(fields) if fields else ""
            return ModelSpec(model_id, model_type, str(location), predicted, key, base), ""
        return (
            ModelSpec(model_id, model_type, location.path, predicted, location.to_key(), base),
            "",
        )

    def _set_storage_problem(self, name: str, problem: str) -> None:
        if problem:
            self._storage_problems[name] = problem
        else:
            self._storage_problems.pop(name, None)

    async def _save(self, record: Record) -> Record:
        """Write ``record`` as the next version of itself, and keep it; the record kept."""
        record = replace(record, version=record.version + 1)
        await self._store.put(_PREFIX + record.name, record.to_json())
        self._remember(record)
        return record

    def _remember(self, record: Record) -> None:
        self._records[record.name] = record
        self._index(record)

    def _isvc(self, record: Record) -> InferenceService:
        return parse_inference_service(record.manifest)

    def _servable(self, name: str) -> bool:
        selection = self._selections.get(name)
        return (
            selection is not None
            and selection.runtime is not None
            and name not in self._storage_problems
        )

    def _index(self, record: Record) -> None:
        if not self._servable(record.name):
            return
        self._routes[record.name] = record.serving.model_id
        self._routes[record.serving.model_id] = record.serving.model_id
        self._routes[record.target.model_id] = record.target.model_id
        isvc = self._isvc(record)
        canary = isvc.canary_percent
        if record.target != record.serving and canary is not None and canary < 100:
            self._splits[record.name] = (record.target.model_id, canary)
        else:
            self._splits.pop(record.name, None)
        per_try = isvc.per_try_timeout_ms()
        for model_id in (record.serving.model_id, record.target.model_id):
            if per_try is None:
                self._per_try_ms.pop(model_id, None)
            else:
                self._per_try_ms[model_id] = per_try
        self.generation += 1

    def _unroute(self, *keys: str) -> None:
        for key in keys:
            self._routes.pop(key, None)
            self._per_try_ms.pop(key, None)
            self._splits.pop(key, None)
        self.generation += 1

    # -- what the rollouts (gateway.control.rollouts) ask of the registry ----------------

    def versions(self, name: str) -> tuple[str, ...] | None:
        """The concrete ids InferenceService ``name`` serves now: the rolled-out one, and the
        latest while a rollout or canary is under way; None if ``name`` is no servable
        InferenceService (a concrete id, say)."""
        record = self._records.get(name)
        if record is None or not self._servable(name):
            return None
        serving, target = record.serving.model_id, record.target.model_id
        return (serving,) if serving == target else (serving, target)

    def serving_ready(self, name: str) -> bool:
        """Whether InferenceService ``name``'s rolled-out version may be sent requests now
        (loaded, or evicted after it was: see Placement.ready)."""
        versions = self.versions(name)
        return versions is not None and self._placement.ready(versions[0])

    def record(self, name: str) -> Record | None:
        return self._records.get(name)

    def records(self) -> tuple[Record, ...]:
        return tuple(self._records.values())

    def servable(self, name: str) -> bool:
        return self._servable(name)

    async def move_traffic(self, name: str, target: ModelSpec) -> ModelSpec | None:
        """Route ``name`` to ``target`` (loaded by the rollout): the model it served before,
        or None when there is nothing to move (deleted, superseded, no runtime, done)."""
        async with self._writing:
            record = self._records.get(name)
            if record is None or record.target != target or not self._servable(name):
                return None
            old = record.serving
            if old == target:
                return None  # another replica finished it
            await self._save(record.rolled_out_to_target())
            self._unroute(old.model_id)
            return old

    async def close(self) -> None:
        await self.rollouts.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
