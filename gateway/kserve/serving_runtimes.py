"""ServingRuntimes and ClusterServingRuntimes: what is stored, and which runtime serves a model.

Runtimes are kept in the registry's store under ``servingruntimes/<name>`` and
``clusterservingruntimes/<name>``. The built-in ClusterServingRuntimes below
describe the formats every runtime pod of this gateway serves; they are
present from the start without being stored. Applying a ClusterServingRuntime
of the same name replaces a built-in one; deleting that brings it back.

Selection follows KServe: a runtime named in ``spec.predictor.model.runtime``
(a ServingRuntime of the namespace, else a ClusterServingRuntime), or else the
non-disabled multi-model runtime with an ``autoSelect`` entry for the model's
format (and version, if given) of the highest priority, namespaced before
cluster-scoped, then by name.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.core.domain import LOAD_TIMEOUT_SECONDS
from gateway.core.errors import InvalidSpec, ModelNotFound
from gateway.kserve.resources import (
    CLUSTER_RUNTIME_KIND,
    RUNTIME_API_VERSION,
    RUNTIME_KIND,
    ModelFormat,
    PredictorModel,
    ServingRuntime,
    parse_serving_runtime,
    stored_manifest,
)
from gateway.store import Store

PREFIXES = {RUNTIME_KIND: "servingruntimes/", CLUSTER_RUNTIME_KIND: "clusterservingruntimes/"}

# Failure reasons, as KServe names them in status.modelStatus.lastFailureInfo.
NO_SUPPORTING_RUNTIME = "NoSupportingRuntime"
RUNTIME_NOT_RECOGNIZED = "RuntimeNotRecognized"
RUNTIME_DISABLED = "RuntimeDisabled"
RUNTIME_UNHEALTHY = "RuntimeUnhealthy"  # selected, but none of its pods is up


def _builtin(
    name: str,
    image: str,
    server_type: str,
    formats: Iterable[tuple[str, str]],
    *,
    named_only: Iterable[str] = (),
) -> dict[str, Any]:
    """``named_only``: formats an InferenceService gets this runtime for only by naming it."""
    never = set(named_only)
    return {
        "apiVersion": RUNTIME_API_VERSION,
        "kind": CLUSTER_RUNTIME_KIND,
        "metadata": {"name": name, "annotations": {"mmgw.io/built-in": "true"}},
        "spec": {
            "supportedModelFormats": [
                {"name": f, "version": v, "autoSelect": f not in never, "priority": 1}
                for f, v in formats
            ],
            "multiModel": True,
            "containers": [{"name": "mmgw-pod", "image": image}],
            "builtInAdapter": {
                "serverType": server_type,
                "runtimeManagementPort": 8001,
                "memBufferBytes": 134217728,
                "modelLoadingTimeoutMillis": int(1000 * LOAD_TIMEOUT_SECONDS),
            },
        },
    }


# The formats the gateway's pods serve (gateway.pod.runtimes), named after
# ModelMesh's own runtimes. The image is descriptive: every pod serves them all.
BUILTIN_RUNTIMES: tuple[dict[str, Any], ...] = (
    _builtin(
        "mlserver-1.x",
        "modelmesh-gateway/pod:local",
        "mlserver",
        (("sklearn", "0"), ("xgboost", "1"), ("lightgbm", "3")),
    ),
    _builtin(
        "triton-2.x", "modelmesh-gateway/pod:local", "triton", (("onnx", "1"), ("pytorch", "1"))
    ),
    # peft-model is named, never chosen (autoSelect false): a peft-model InferenceService
    # names its runtime, this one or the user's own (the seed's PeftModelServer in a real
    # MLServer). lora adapters attach to a peft-model base on this runtime's pods.
    _builtin(
        "huggingface-peft",
        "modelmesh-gateway/pod:local",
        "mlserver",
        (("peft-model", "1"), ("lora", "1")),
        named_only=("peft-model",),
    ),
    _builtin("mmgw-synthetic", "modelmesh-gateway/pod:local", "mlserver", (("synthetic", "1"),)),
)


@dataclass(frozen=True, slots=True)
class RuntimeRecord:
    runtime: ServingRuntime
    manifest: dict[str, Any]
    created: float  # unix time
    builtin: bool = False

    @property
    def kind(self) -> str:
        return self.runtime.kind

    @property
    def name(self) -> str:
        return self.runtime.name


@dataclass(frozen=True, slots=True)
class Selection:
    """The runtime chosen for a model, or why there is none."""

    runtime: RuntimeRecord | None
    reason: str = ""
    message: str = ""


def select(
    model: PredictorModel, namespaced: Iterable[RuntimeRecord], cluster: Iterable[RuntimeRecord]
) -> Selection:
    """KServe's runtime selection for one InferenceService's predictor model."""
    fmt: ModelFormat = model.modelFormat
    wanted = f"model format '{fmt.name}'" + (f" version '{fmt.version}'" if fmt.version else "")
    if model.runtime is not None:
        found = next((r for r in namespaced if r.name == model.runtime), None) or next(
            (r for r in cluster if r.name == model.runtime), None
        )
        if found is None:
            return Selection(
                None,
                RUNTIME_NOT_RECOGNIZED,
                f"runtime '{model.runtime}' is neither a ServingRuntime of the namespace "
                "nor a ClusterServingRuntime",
            )
        if found.runtime.spec.disabled:
            return Selection(None, RUNTIME_DISABLED, f"{found.kind} '{found.name}' is disabled")
        if not found.runtime.spec.multiModel:
            return Selection(
                None,
                NO_SUPPORTING_RUNTIME,
                f"{found.kind} '{found.name}' is not multiModel: ModelMesh serves only multi-model runtimes",
            )
        if found.runtime.format_for(fmt) is None:
            return Selection(
                None,
                NO_SUPPORTING_RUNTIME,
                f"{found.kind} '{found.name}' does not support {wanted}",
            )
        return Selection(found)
    candidates = []
    for rank, records in enumerate((namespaced, cluster)):
        for record in records:
            spec = record.runtime.spec
            entry = record.runtime.format_for(fmt)
            if entry is not None and entry.autoSelect and spec.multiModel and not spec.disabled:
                candidates.append((-(entry.priority or 0), rank, record.name, record))
    if not candidates:
        return Selection(
            None, NO_SUPPORTING_RUNTIME, f"no runtime supports {wanted} with autoSelect"
        )
    return Selection(min(candidates, key=lambda c: c[:3])[3])


class RuntimeCatalog:
    """Stored and built-in runtimes of one namespace, and the cluster's."""

    def __init__(self, store: Store, namespace: str) -> None:
        self._store = store
        self._namespace = namespace
        self._builtin = {
            doc["metadata"]["name"]: RuntimeRecord(
                parse_serving_runtime(doc), doc, time.time(), builtin=True
            )
            for doc in BUILTIN_RUNTIMES
        }
        self._stored: dict[str, dict[str, RuntimeRecord]] = {kind: {} for kind in PREFIXES}

    async def restore(self) -> None:
        for kind, prefix in PREFIXES.items():
            for key, data in (await self._store.items(prefix)).items():
                record = RuntimeRecord(
                    parse_serving_runtime(data["manifest"]), data["manifest"], data["created"]
                )
                self._stored[kind][key.removeprefix(prefix)] = record

    def absorb(self, kind: str, name: str, data: dict[str, Any] | None) -> bool:
        """Take in a change another gateway replica made; whether anything changed here."""
        old = self._stored[kind].get(name)
        if data is None:
            return self._stored[kind].pop(name, None) is not None
        if old is not None and old.manifest == data["manifest"]:
            return False
        self._stored[kind][name] = RuntimeRecord(
            parse_serving_runtime(data["manifest"]), data["manifest"], data["created"]
        )
        return True

    def list(self, kind: str) -> list[RuntimeRecord]:
        records = dict(self._builtin) if kind == CLUSTER_RUNTIME_KIND else {}
        records.update(self._stored[kind])
        return sorted(records.values(), key=lambda r: r.name)

    def get(self, kind: str, name: str) -> RuntimeRecord:
        found = self._stored[kind].get(name) or (
            self._builtin.get(name) if kind == CLUSTER_RUNTIME_KIND else None
        )
        if found is None:
            raise ModelNotFound(name, f"{kind.lower()}s.serving.kserve.io '{name}' not found")
        return found

    def select(self, model: PredictorModel) -> Selection:
        return select(model, self.list(RUNTIME_KIND), self.list(CLUSTER_RUNTIME_KIND))

    async def apply(self, document: Any) -> tuple[RuntimeRecord, str]:
        runtime = parse_serving_runtime(document)
        manifest = stored_manifest(runtime)
        metadata = manifest["metadata"]
        if runtime.kind == RUNTIME_KIND:
            namespace = metadata.setdefault("namespace", self._namespace)
            if namespace != self._namespace:
                raise InvalidSpec(
                    f"namespace '{namespace}': this gateway serves namespace '{self._namespace}'"
                )
        else:
            metadata.pop("namespace", None)  # cluster-scoped
        old = self._stored[runtime.kind].get(runtime.name)
        if old is not None and old.manifest == manifest:
            return old, "unchanged"
        record = RuntimeRecord(runtime, manifest, old.created if old else time.time())
        await self._store.put(
            PREFIXES[runtime.kind] + runtime.name, {"manifest": manifest, "created": record.created}
        )
        self._stored[runtime.kind][runtime.name] = record
        return record, "created" if old is None else "configured"

    async def delete(self, kind: str, name: str) -> None:
        if name not in self._stored[kind]:
            if kind == CLUSTER_RUNTIME_KIND and name in self._builtin:
                raise InvalidSpec(
                    f"clusterservingruntime '{name}' is built in: applying one of that name "
                    "replaces it, deleting that brings the built-in one back"
                )
            raise ModelNotFound(name, f"{kind.lower()}s.serving.kserve.io '{name}' not found")
        del self._stored[kind][name]
        await self._store.delete(PREFIXES[kind] + name)
