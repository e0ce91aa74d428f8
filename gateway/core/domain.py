"""Domain types of the core: what a model is, where its copies live.

Frozen dataclasses only: the decision functions in gateway.core.picker take these
as a snapshot of the placement table and return a decision, nothing else.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass

from gateway.core.protocol import BASE_MODEL_KEY

# ModelMesh's size prediction before a model is loaded: bytes on disk x this. The one
# default for the gateway (MMGW_REGISTRY__SIZE_MULTIPLIER) and the pods' PredictModelSize.
SIZE_MULTIPLIER = 1.25
# How long a load may take before it fails (ModelMesh's modelLoadingTimeoutMillis default).
LOAD_TIMEOUT_SECONDS = 90.0


class CopyState(enum.StrEnum):
    LOADING = "LOADING"
    LOADED = "LOADED"
    FAILED = "FAILED"


class ModelState(enum.StrEnum):
    """A concrete model's state, as KServe ModelMesh reports activeModelState."""

    PENDING = "Pending"  # registered, first load not finished
    LOADING = "Loading"
    LOADED = "Loaded"
    STANDBY = "Standby"  # loaded before, evicted since: loads again on demand
    FAILED_TO_LOAD = "FailedToLoad"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a pod needs to load one concrete model."""

    model_id: str  # concrete id, e.g. "sklearn-mnist__isvc-3f2a9c01b4"
    model_type: str  # format name, e.g. "sklearn"
    # PVC: the local path, already checked against its PVC's folder. S3: the
    # object path in the bucket, and ``key`` says where (S3Location.to_key()).
    path: str
    predicted_size: int  # bytes, before the pod reports the real size
    key: str = ""  # JSON for the pod: ModelMesh's storage_key and storage_params
    # An adapter's base model, by its public name (the InferenceService an adapter's
    # mmgw.io/base-model names): the adapter is placed only on pods holding that base.
    base: str = ""

    def on_base(self, base_id: str) -> ModelSpec:
        """This adapter's spec as a pod loads it: its key names the base's concrete id."""
        try:
            fields = json.loads(self.key) if self.key else {}
        except json.JSONDecodeError:
            fields = {}
        if not isinstance(fields, dict):
            fields = {}
        return dataclasses.replace(self, key=json.dumps({**fields, BASE_MODEL_KEY: base_id}))


@dataclass(frozen=True, slots=True)
class Copy:
    """One copy of a model on one pod."""

    model_id: str
    pod: str
    state: CopyState
    size: int
    last_used: float
    loaded_at: float
    # The model's request count as of last_used, decayed with the engine's
    # eviction half-life (picker.effective_last_use orders by it); 0: not counted.
    demand: float = 0.0


@dataclass(frozen=True, slots=True)
class PodView:
    """A pod as placement decisions see it."""

    pod: str
    capacity: int
    used: int
    model_count: int
    healthy: bool = True

    @property
    def free(self) -> int:
        return self.capacity - self.used


@dataclass(frozen=True, slots=True)
class ModelStatus:
    state: ModelState
    copies: int
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.state in (ModelState.LOADED, ModelState.STANDBY)
