from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.core.errors import InvalidSpec, StorageError
from gateway.kserve.resources import parse_inference_service
from gateway.kserve.storage import StorageRoots, size_on_disk
from tests.documents import SEED_ISVC


def seed(**storage: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SEED_ISVC)
    doc["spec"]["predictor"]["model"]["storage"].update(storage)
    return doc


def test_concrete_id_follows_the_spec() -> None:
    first = parse_inference_service(SEED_ISVC).concrete_id()
    assert (
        first.startswith("sklearn-mnist__isvc-") and len(first) == len("sklearn-mnist__isvc-") + 10
    )
    assert parse_inference_service(copy.deepcopy(SEED_ISVC)).concrete_id() == first
    relabelled = copy.deepcopy(SEED_ISVC)
    relabelled["metadata"]["labels"] = {"team": "a"}
    assert parse_inference_service(relabelled).concrete_id() == first  # metadata is not the model
    assert parse_inference_service(seed(path="other.joblib")).concrete_id() != first


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(kind="Deployment"), "unsupported kind 'Deployment'"),
        (lambda d: d.update(apiVersion="serving.kserve.io/v1alpha1"), "unsupported apiVersion"),
        (lambda d: d["metadata"].update(name="Bad_Name"), "metadata.name"),
        (lambda d: d["spec"]["predictor"]["model"].pop("modelFormat"), "modelFormat"),
        (lambda d: d["spec"]["predictor"]["model"]["storage"].update(pth="x"), "storage.pth"),
    ],
)
def test_invalid_documents_say_what_is_wrong(mutate: Any, message: str) -> None:
    doc = copy.deepcopy(SEED_ISVC)
    mutate(doc)
    with pytest.raises(InvalidSpec, match=message):
        parse_inference_service(doc)


def _annotated(value: str) -> dict[str, Any]:
    doc = copy.deepcopy(SEED_ISVC)
    doc["metadata"].setdefault("annotations", {})["mmgw.io/per-try-timeout"] = value
    return doc


@pytest.mark.parametrize(
    ("value", "ms"), [("500ms", 500), ("2s", 2000), ("1.5s", 1500), ("1m", 60_000), (" 3s ", 3000)]
)
def test_the_per_try_timeout_annotation_reads_as_kubernetes_durations(value: str, ms: int) -> None:
    assert parse_inference_service(_annotated(value)).per_try_timeout_ms() == ms


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2x", "'2x' is not a duration"),
        ("2", "'2' is not a duration"),
        ("-1s", "is not a duration"),
        ("0s", "must be over 0 and at most 120s"),
        ("3m", "must be over 0 and at most 120s"),
    ],
)
def test_a_per_try_timeout_that_is_no_duration_is_refused_naming_the_annotation(
    value: str, message: str
) -> None:
    with pytest.raises(InvalidSpec, match=f"metadata: .*mmgw.io/per-try-timeout: .*{message}"):
        parse_inference_service(_annotated(value))


def test_without_the_annotation_the_default_applies() -> None:
    assert parse_inference_service(SEED_ISVC).per_try_timeout_ms() is None


def test_non_mapping_document() -> None:
    with pytest.raises(InvalidSpec, match="mapping"):
        parse_inference_service(["not", "a", "doc"])


@pytest.fixture
def roots(tmp_path: Path) -> StorageRoots:
    pvc = tmp_path / "pvc"
    (pvc / "sub").mkdir(parents=True)
    (pvc / "model.joblib").write_bytes(b"x" * 100)
    (tmp_path / "secret").write_text("outside")
    (pvc / "escape").symlink_to(tmp_path / "secret")
    return StorageRoots({"my-models-pvc": pvc})


def test_pvc_paths_resolve_inside_the_root(roots: StorageRoots) -> None:
    path = roots.resolve(parse_inference_service(seed(path="model.joblib")).model)
    assert path == roots.pvcs["my-models-pvc"].resolve() / "model.joblib"
    assert size_on_disk(path) == 100
    assert roots.resolve(parse_inference_service(seed(path="sub/../model.joblib")).model) == path
    uri = copy.deepcopy(SEED_ISVC)
    uri["spec"]["predictor"]["model"].pop("storage")
    uri["spec"]["predictor"]["model"]["storageUri"] = "pvc://my-models-pvc/model.joblib"
    assert roots.resolve(parse_inference_service(uri).model) == path


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"path": "../secret"}, "leaves PVC"),
        ({"path": "escape"}, "leaves PVC"),
        ({"path": "/etc/passwd"}, "must be relative"),
        ({"path": "model.joblib\x00.txt"}, "holds a NUL byte"),
        ({"parameters": {"type": "pvc", "name": "nope"}}, "unknown PVC 'nope'"),
        ({"parameters": {"type": "gcs"}}, "storage type 'gcs' is not supported"),
        ({"path": None}, "storage.path"),
    ],
)
def test_storage_that_leaves_its_root_or_is_unknown_is_refused(
    roots: StorageRoots, storage: dict[str, Any], message: str
) -> None:
    with pytest.raises(StorageError, match=message):
        roots.resolve(parse_inference_service(seed(**storage)).model)


def test_schema_path_is_found_as_the_model_path_is(roots: StorageRoots) -> None:
    model = parse_inference_service(seed(path="model.joblib", schemaPath="sub/schema.json")).model
    assert roots.schema(model) == roots.pvcs["my-models-pvc"].resolve() / "sub" / "schema.json"
    assert roots.schema(parse_inference_service(seed(path="model.joblib")).model) is None
    for escape, message in (
        ("../secret", "leaves PVC"),
        ("escape", "leaves PVC"),
        ("/etc/x", "relative"),
    ):
        with pytest.raises(StorageError, match=message):
            roots.schema(parse_inference_service(seed(schemaPath=escape)).model)
    s3 = seed(
        parameters={"type": "s3", "bucket": "b"}, path="m/model.pt", schemaPath="m/schema.json"
    )
    with pytest.raises(StorageError, match="PVC storage only"):
        roots.schema(parse_inference_service(s3).model)


def _adapter(fmt: str, base: str | None) -> dict[str, Any]:
    doc = copy.deepcopy(SEED_ISVC)
    doc["spec"]["predictor"]["model"]["modelFormat"] = {"name": fmt}
    if base is not None:
        doc["metadata"].setdefault("annotations", {})["mmgw.io/base-model"] = base
    return doc


def test_an_adapter_names_its_base_model_and_only_an_adapter_does() -> None:
    tuned = parse_inference_service(_adapter("lora", "tiny-lm"))
    assert tuned.base_model == "tiny-lm"
    assert parse_inference_service(SEED_ISVC).base_model == ""
    with pytest.raises(InvalidSpec, match="names its base model's InferenceService"):
        parse_inference_service(_adapter("lora", None))
    with pytest.raises(InvalidSpec, match="is for adapters"):
        parse_inference_service(_adapter("sklearn", "tiny-lm"))
    with pytest.raises(InvalidSpec, match="cannot be its own base"):
        parse_inference_service(_adapter("lora", "sklearn-mnist"))
