"""KServe-shaped resources as users write them: InferenceService, ServingRuntime
and ClusterServingRuntime documents.

Pydantic at the edge: a document is validated here and turned into the core's
plain types. The concrete model id follows ModelMesh: ``<name>__isvc-<hash>``,
the hash taken over the predictor spec, so a changed spec gives a new id.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.core.errors import InvalidSpec
from gateway.core.protocol import CONCRETE_ID_SEPARATOR

_Resource = TypeVar("_Resource", bound=BaseModel)

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
RUNTIME_API_VERSION = "serving.kserve.io/v1alpha1"
RUNTIME_KIND = "ServingRuntime"
CLUSTER_RUNTIME_KIND = "ClusterServingRuntime"
RUNTIME_KINDS = (RUNTIME_KIND, CLUSTER_RUNTIME_KIND)
# How long one try of a request may take on a pod before Envoy gives up on that pod and
# retries on the model's next copy; envoy.yaml's retry_policy holds the default.
PER_TRY_TIMEOUT_ANNOTATION = "mmgw.io/per-try-timeout"
MAX_PER_TRY_TIMEOUT_MS = 120_000  # the routes' timeout: a try cannot outlast its request
# An adapter (modelFormat lora) names the InferenceService of its base model, as vLLM's
# load_lora_adapter names base_model_name: it is placed only on pods holding that base.
BASE_MODEL_ANNOTATION = "mmgw.io/base-model"
ADAPTER_FORMAT = "lora"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_DURATION_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000}
# DNS-1123 label, as Kubernetes requires of an InferenceService name.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# DNS-1123 subdomain, as Kubernetes requires of most other names ("mlserver-1.x").
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ObjectMeta(_Open):
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    namespace: str | None = None
    annotations: dict[str, str] = {}
    labels: dict[str, str] = {}


class RuntimeMeta(ObjectMeta):
    name: str = Field(pattern=SUBDOMAIN_PATTERN, max_length=253)


class ModelFormat(_Strict):
    name: str = Field(min_length=1)
    version: str | None = None


class Storage(_Strict):
    parameters: dict[str, str] = {}
    path: str | None = None
    key: str | None = None
    schemaPath: str | None = None


class PredictorModel(_Open):
    modelFormat: ModelFormat
    runtime: str | None = None
    storage: Storage | None = None
    storageUri: str | None = None


class Predictor(_Open):
    model: PredictorModel
    # KServe's canary: the share of requests (0-100) the latest spec gets once it is ready,
    # the previous rolled-out one serving the rest. Not part of the model: no new id.
    canaryTrafficPercent: int | None = Field(default=None, ge=0, le=100)


class InferenceServiceSpec(_Open):
    predictor: Predictor


class InferenceService(_Open):
    apiVersion: Literal["serving.kserve.io/v1beta1"]
    kind: Literal["InferenceService"]
    metadata: ObjectMeta
    spec: InferenceServiceSpec

    @field_validator("metadata")
    @classmethod
    def _known_annotations_parse(cls, metadata: ObjectMeta) -> ObjectMeta:
        text = metadata.annotations.get(PER_TRY_TIMEOUT_ANNOTATION)
        if text is not None:
            duration_ms(text, PER_TRY_TIMEOUT_ANNOTATION)
        return metadata

    @model_validator(mode="after")
    def _adapters_name_their_base(self) -> InferenceService:
        base = self.metadata.annotations.get(BASE_MODEL_ANNOTATION)
        adapter = self.model.modelFormat.name.lower() == ADAPTER_FORMAT
        if adapter and not base:
            raise ValueError(
                f"an adapter (modelFormat {ADAPTER_FORMAT}) names its base model's "
                f"InferenceService in the annotation {BASE_MODEL_ANNOTATION}"
            )
        if base is not None and not adapter:
            raise ValueError(
                f"{BASE_MODEL_ANNOTATION} is for adapters (modelFormat {ADAPTER_FORMAT}); "
                f"this model's format is {self.model.modelFormat.name}"
            )
        if base is not None and base == self.name:
            raise ValueError(f"{BASE_MODEL_ANNOTATION}: an adapter cannot be its own base")
        return self

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def base_model(self) -> str:
        """The InferenceService an adapter attaches to ("" for a model)."""
        return self.metadata.annotations.get(BASE_MODEL_ANNOTATION, "")

    def per_try_timeout_ms(self) -> int | None:
        """The ``mmgw.io/per-try-timeout`` annotation in milliseconds; None when not set."""
        text = self.metadata.annotations.get(PER_TRY_TIMEOUT_ANNOTATION)
        return None if text is None else duration_ms(text, PER_TRY_TIMEOUT_ANNOTATION)

    @property
    def model(self) -> PredictorModel:
        return self.spec.predictor.model

    @property
    def canary_percent(self) -> int | None:
        """``spec.predictor.canaryTrafficPercent``; None when not set."""
        return self.spec.predictor.canaryTrafficPercent

    def concrete_id(self) -> str:
        predictor = self.spec.predictor.model_dump(
            mode="json", exclude_none=True, exclude={"canaryTrafficPercent"}
        )
        canonical = json.dumps(predictor, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
        return f"{self.name}{CONCRETE_ID_SEPARATOR}{digest}"


class SupportedModelFormat(_Strict):
    name: str = Field(min_length=1)
    version: str | None = None
    autoSelect: bool = False
    priority: int | None = Field(default=None, ge=1)

    def supports(self, model: ModelFormat) -> bool:
        """KServe's match: the name (case-insensitive), and the version when the model gives one."""
        if self.name.lower() != model.name.lower():
            return False
        return model.version is None or self.version == model.version


_QUANTITY_UNITS = {
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def duration_ms(text: str, what: str) -> int:
    """Milliseconds from a duration as Kubernetes and Envoy write them (500ms, 2s, 1.5s,
    1m), over 0 and at most MAX_PER_TRY_TIMEOUT_MS; ValueError naming ``what`` otherwise."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"annotation {what}: {text!r} is not a duration (e.g. 500ms, 2s, 1m)")
    ms = round(float(match.group(1)) * _DURATION_UNIT_MS[match.group(2)])
    if not 0 < ms <= MAX_PER_TRY_TIMEOUT_MS:
        raise ValueError(
            f"annotation {what}: {text!r} must be over 0 and at most "
            f"{MAX_PER_TRY_TIMEOUT_MS // 1000}s (the request's own timeout)"
        )
    return ms


def parse_quantity(text: str) -> int:
    """Bytes from a Kubernetes quantity: 1073741824, 512Mi, 1Gi, 2G. ValueError otherwise."""
    for suffix, factor in _QUANTITY_UNITS.items():
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            return int(text[: -len(suffix)]) * factor
    if text.isdigit():
        return int(text)
    raise ValueError(f"not a byte quantity: {text!r} (e.g. 1073741824, 512Mi, 1Gi)")


class Container(_Open):
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    image: str | None = None


class BuiltInAdapter(_Open):
    serverType: str | None = None
    runtimeManagementPort: int | None = Field(default=None, ge=1, le=65535)
    memBufferBytes: int | None = Field(default=None, ge=0)
    modelLoadingTimeoutMillis: int | None = Field(default=None, ge=1)


class ServingRuntimeSpec(_Open):
    supportedModelFormats: tuple[SupportedModelFormat, ...] = ()
    multiModel: bool = False
    disabled: bool = False
    containers: tuple[Container, ...] = Field(min_length=1)
    builtInAdapter: BuiltInAdapter | None = None


class ServingRuntime(_Open):
    """A ServingRuntime or a ClusterServingRuntime (same spec; the kind says which)."""

    apiVersion: Literal["serving.kserve.io/v1alpha1"]
    kind: Literal["ServingRuntime", "ClusterServingRuntime"]
    metadata: RuntimeMeta
    spec: ServingRuntimeSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def format_for(self, model: ModelFormat) -> SupportedModelFormat | None:
        return next((f for f in self.spec.supportedModelFormats if f.supports(model)), None)


def parse_serving_runtime(document: Any) -> ServingRuntime:
    """Validate a ServingRuntime or ClusterServingRuntime document."""
    return parse_resource(document, ServingRuntime, RUNTIME_KINDS, RUNTIME_API_VERSION)


# The namespace one gateway serves unless told otherwise, as ModelMesh Serving's.
DEFAULT_NAMESPACE = "modelmesh-serving"
# Where users reach InferenceServices (status.url): the front proxy on :8008.
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8008"

# Set by the server, ignored on apply (as Kubernetes does): `get -o yaml | apply` is a no-op.
_SERVER_METADATA = (
    "creationTimestamp",
    "resourceVersion",
    "uid",
    "generation",
    "managedFields",
    "selfLink",
)


def stored_manifest(resource: BaseModel) -> dict[str, Any]:
    """The document as applied and stored: no status, no metadata the server sets."""
    manifest: dict[str, Any] = resource.model_dump(
        mode="json", exclude_unset=True, exclude={"status"}
    )
    for key in _SERVER_METADATA:
        manifest["metadata"].pop(key, None)
    return manifest


def parse_inference_service(document: Any) -> InferenceService:
    """Validate one document; InvalidSpec says which field is wrong and why."""
    return parse_resource(document, InferenceService, (KIND,), API_VERSION)


def parse_resource(
    document: Any, model: type[_Resource], kinds: tuple[str, ...], api_version: str
) -> _Resource:
    """``document`` as ``model``, one of ``kinds`` in ``api_version``; InvalidSpec naming the
    field that is wrong and why."""
    if not isinstance(document, dict):
        raise InvalidSpec("a resource must be a mapping with apiVersion, kind, metadata and spec")
    kind = document.get("kind")
    if kind not in kinds:
        raise InvalidSpec(
            f"unsupported kind {kind!r}: expected {' or '.join(kinds)} ({api_version})"
        )
    if document.get("apiVersion") != api_version:
        raise InvalidSpec(
            f"unsupported apiVersion {document.get('apiVersion')!r} for {kind}: use {api_version}"
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise InvalidSpec(f"invalid {kind}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "document"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
