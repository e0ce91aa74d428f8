"""A pod of one ServingRuntime: what the runtime's YAML says its pods are.

KServe ModelMesh makes one Deployment per ServingRuntime; here
``mmgw pod --runtime-name NAME`` is one pod of it. The pod reads the runtime
from the store (a ServingRuntime of the gateway's namespace first, then a
ClusterServingRuntime, then a built-in one, waiting until it is applied) and
takes from it, as ModelMesh does:

- capacity: the first container's ``resources.limits.memory`` minus
  ``builtInAdapter.memBufferBytes``;
- the load timeout: ``builtInAdapter.modelLoadingTimeoutMillis``;
- who serves the models (``model_server``): a runtime of ``builtInAdapter.serverType:
  mlserver`` gets a real MLServer beside the pod (gateway.pod.mlserver), started with
  the container's environment, as ModelMesh runs it; except the built-in runtimes, a
  runtime whose container image is this project's pod (``modelmesh-gateway/pod``), and
  a runtime whose ``MLSERVER_MODEL_IMPLEMENTATION`` names a class of ours (a
  ``gateway.pod.model.Model``), which this process serves itself. ``--model-server``
  decides otherwise.
- the model class, for a pod that serves its models itself: the container's
  ``MLSERVER_MODEL_IMPLEMENTATION`` (``package.module.Class``) serves every format the
  runtime supports; without it the built-in runtimes serve the formats they know. The
  image is not pulled: the class is imported from this machine's Python path, plus the
  folders of the container's ``PYTHONPATH`` entry (relative to the pod's working
  folder). MLServer gets the same ``PYTHONPATH``, made absolute the same way.

Flags given on the command line win over the runtime's values. Deploying a
runtime thus runs its code on the pods: the management API that accepts
ServingRuntimes is closed to anyone without its token.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.errors import InvalidSpec, StoreUnavailable
from gateway.kserve.resources import ServingRuntime, parse_quantity, parse_serving_runtime
from gateway.kserve.serving_runtimes import (
    BUILTIN_RUNTIMES,
    CLUSTER_RUNTIME_KIND,
    PREFIXES,
    RUNTIME_KIND,
)
from gateway.store import Store

from .model import Model
from .runtimes import RuntimeRef
from .settings import PodSettings

log = logging.getLogger(__name__)

MODEL_IMPLEMENTATION = "MLSERVER_MODEL_IMPLEMENTATION"
BUILTIN_ANNOTATION = "mmgw.io/built-in"
POD_IMAGE = "modelmesh-gateway/pod"  # this project's pod image: its pods serve in-process
MLSERVER_MODEL = "gateway.pod.mlserver.model:MLServerModel"


@dataclass(frozen=True, slots=True)
class RuntimeProfile:
    name: str
    formats: tuple[str, ...]  # lower-case format names
    capacity_bytes: int | None = None
    loading_timeout_ms: int | None = None
    model_class: str | None = None  # "package.module:Class"
    python_path: tuple[str, ...] = ()
    server_type: str = ""  # builtInAdapter.serverType
    image: str = ""  # the first container's
    builtin: bool = False  # one of the gateway's built-in runtimes
    env: Mapping[str, str] = field(default_factory=dict)  # the first container's, by name


def profile(runtime: ServingRuntime) -> RuntimeProfile:
    """What ``runtime`` says about its pods; InvalidSpec for values a pod cannot use."""
    container = runtime.spec.containers[0]
    extra = container.model_extra or {}
    env = {e.get("name"): e.get("value") for e in extra.get("env") or () if isinstance(e, Mapping)}
    adapter = runtime.spec.builtInAdapter
    capacity = None
    limit = ((extra.get("resources") or {}).get("limits") or {}).get("memory")
    if limit is not None:
        capacity = parse_quantity(str(limit)) - ((adapter.memBufferBytes or 0) if adapter else 0)
        if capacity <= 0:
            raise InvalidSpec(
                f"servingruntime '{runtime.name}': memory limit {limit} leaves no room for models "
                f"after memBufferBytes {adapter.memBufferBytes if adapter else 0}"
            )
    model_class = None
    if implementation := env.get(MODEL_IMPLEMENTATION):
        module, _, cls = str(implementation).rpartition(".")
        if not module or not cls:
            raise InvalidSpec(
                f"servingruntime '{runtime.name}': {MODEL_IMPLEMENTATION} must be "
                f"package.module.Class, got {implementation!r}"
            )
        model_class = f"{module}:{cls}"
    return RuntimeProfile(
        name=runtime.name,
        formats=tuple(f.name.lower() for f in runtime.spec.supportedModelFormats),
        capacity_bytes=capacity,
        loading_timeout_ms=adapter.modelLoadingTimeoutMillis if adapter else None,
        model_class=model_class,
        python_path=tuple(p for p in str(env.get("PYTHONPATH") or "").split(":") if p),
        server_type=(adapter.serverType or "") if adapter else "",
        image=container.image or "",
        builtin=runtime.metadata.annotations.get(BUILTIN_ANNOTATION) == "true",
        env={str(k): str(v) for k, v in env.items() if k and v is not None},
    )


def served_by_mlserver(runtime: RuntimeProfile) -> bool:
    """Whether ``runtime``'s pods run a real MLServer (see the module's docstring)."""
    if runtime.server_type != "mlserver" or runtime.builtin:
        return False
    if runtime.image.split(":", 1)[0].endswith(POD_IMAGE):
        return False
    return runtime.model_class is None or not _ours(runtime.model_class)


def _ours(model_class: str) -> bool:
    """Whether ``model_class`` ("module:Class") is a ``gateway.pod.model.Model`` this process
    can import (an MLServer ``MLModel`` imports mlserver, which is not installed here)."""
    module, _, name = model_class.partition(":")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except Exception:  # noqa: BLE001 - any import failure: not a class of ours
        return False
    return isinstance(found, type) and issubclass(found, Model)


def configure(settings: PodSettings, runtime: RuntimeProfile) -> PodSettings:
    """``settings`` for a pod of ``runtime``; what was given (on the command line or in the
    environment: ``model_fields_set``) keeps its value."""
    explicit = settings.model_fields_set
    changes: dict[str, Any] = {}
    if runtime.capacity_bytes is not None and "capacity_bytes" not in explicit:
        changes["capacity_bytes"] = runtime.capacity_bytes
    if runtime.loading_timeout_ms is not None and "model_loading_timeout_ms" not in explicit:
        changes["model_loading_timeout_ms"] = runtime.loading_timeout_ms
    python_path = [str(Path(folder).resolve()) for folder in runtime.python_path]
    for path in python_path:
        if path not in sys.path:
            sys.path.insert(0, path)
    server = settings.model_server
    if server == "auto":
        server = changes["model_server"] = "mlserver" if served_by_mlserver(runtime) else "mmgw"
    if server == "mlserver":  # every format is MLServer's; it gets the container's environment
        changes["runtimes"] = dict.fromkeys(runtime.formats, MLSERVER_MODEL)
        env = dict(runtime.env)
        if python_path:
            env["PYTHONPATH"] = ":".join(python_path)
        changes["mlserver_env"] = env
    elif runtime.model_class is not None:
        classes: dict[str, RuntimeRef] = {fmt: runtime.model_class for fmt in runtime.formats}
        changes["runtimes"] = classes
    else:  # the built-in classes, for the formats this runtime serves
        changes["runtimes"] = {k: v for k, v in settings.runtimes.items() if k in runtime.formats}
    return settings.with_changes(**changes)


async def fetch(store: Store, name: str, *, retry: float = 1.0) -> ServingRuntime:
    """The runtime named ``name`` as the gateway sees it, waiting until it is applied."""
    builtin = {doc["metadata"]["name"]: doc for doc in BUILTIN_RUNTIMES}
    waited = False
    while True:
        try:
            for kind in (RUNTIME_KIND, CLUSTER_RUNTIME_KIND):
                found = await store.items(PREFIXES[kind] + name)
                data = found.get(PREFIXES[kind] + name)
                if data is not None:
                    return parse_serving_runtime(data["manifest"])
            if name in builtin:
                return parse_serving_runtime(builtin[name])
            if not waited:
                log.warning("servingruntime '%s' is not applied yet; waiting for it", name)
        except StoreUnavailable as exc:
            log.warning("reading servingruntime '%s': %s; retrying", name, exc.message)
        waited = True
        await asyncio.sleep(retry)
