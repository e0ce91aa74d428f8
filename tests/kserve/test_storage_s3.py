"""S3 storage references, the storage-config forms, and the registry's READY statuses for
storage that cannot be used, against a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.adapters.api.status import render as render_status
from gateway.control.records import Record
from gateway.control.registry import Registry
from gateway.core.errors import ModelNotInStorage, StorageAccessDenied, StorageError, StorageFailure
from gateway.core.placement import Placement
from gateway.kserve.locations import S3Location
from gateway.kserve.resources import DEFAULT_PUBLIC_URL, parse_inference_service
from gateway.kserve.storage import StorageRoots, load_storage_config
from gateway.store import EmbeddedStore
from tests.core.fakes import FakePod, FakePods
from tests.s3server import S3Server

ISVC: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "from-s3", "namespace": "modelmesh-serving"},
    "spec": {
        "predictor": {
            "model": {
                "modelFormat": {"name": "sklearn"},
                "storage": {"key": "localMinIO", "path": "sklearn/mnist-svm.joblib"},
            }
        }
    },
}


def status_of(registry: Registry, record: Record) -> dict[str, Any]:
    """The record's status as the management API renders it."""
    return render_status(registry.view(record), DEFAULT_PUBLIC_URL)


def isvc(**model: Any) -> dict[str, Any]:
    doc = copy.deepcopy(ISVC)
    target = doc["spec"]["predictor"]["model"]
    for name, value in model.items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return doc


def model_of(doc: dict[str, Any]) -> Any:
    return parse_inference_service(doc).model


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(scope="module")
def uploaded(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    data = tmp_path_factory.mktemp("objects")
    (data / "model.joblib").write_bytes(b"m" * 1000)
    (data / "part").write_bytes(b"p" * 24)
    s3.upload("models", "sklearn/mnist-svm.joblib", data / "model.joblib")
    s3.upload(
        "models", "sklearn/mnist-svm.joblib.bak", data / "part"
    )  # same prefix, another object
    s3.upload("models", "folder/a/weights.bin", data / "model.joblib")
    s3.upload("models", "folder/config.json", data / "part")
    return s3


CONFIG = {
    "localMinIO": {"type": "s3", "endpoint_url": "http://127.0.0.1:1", "default_bucket": "models"},
    "default": {"type": "s3", "bucket": "fallback"},
    "pvc-key": {"type": "pvc", "name": "my-models-pvc"},
}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {},
            S3Location(
                "localMinIO",
                "models",
                "sklearn/mnist-svm.joblib",
                {"type": "s3", "bucket": "models"},
            ),
        ),
        (
            {
                "storage": {
                    "key": "localMinIO",
                    "path": "/x.joblib",
                    "parameters": {"bucket": "other"},
                }
            },
            S3Location("localMinIO", "other", "x.joblib", {"type": "s3", "bucket": "other"}),
        ),
        (
            {"storage": None, "storageUri": "s3://uri-bucket/a/b.joblib"},
            S3Location(
                "default", "uri-bucket", "a/b.joblib", {"type": "s3", "bucket": "uri-bucket"}
            ),
        ),
        (
            {"storage": {"parameters": {"type": "s3"}, "path": "p.joblib"}},
            S3Location("default", "fallback", "p.joblib", {"type": "s3", "bucket": "fallback"}),
        ),
    ],
)
def test_s3_references_resolve_to_a_key_a_bucket_and_a_path(
    model: dict[str, Any], expected: S3Location
) -> None:
    assert StorageRoots({}, CONFIG).resolve(model_of(isvc(**model))) == expected


def test_a_storage_key_may_name_a_pvc(tmp_path: Path) -> None:
    roots = StorageRoots({"my-models-pvc": tmp_path}, CONFIG)
    path = roots.resolve(model_of(isvc(storage={"key": "pvc-key", "path": "m.joblib"})))
    assert path == tmp_path.resolve() / "m.joblib"


@pytest.mark.parametrize(
    ("model", "config", "message"),
    [
        (
            {"storage": {"key": "nope", "path": "x"}},
            CONFIG,
            "unknown storage key 'nope' (the storage config has: default, localMinIO, pvc-key)",
        ),
        (
            {"storage": None, "storageUri": "s3://b/x"},
            {},
            None,
        ),  # no default entry: parameters only
        (
            {"storage": {"key": "localMinIO", "path": "x"}},
            {"localMinIO": {"type": "s3"}},
            "no bucket: give storage.parameters.bucket, or a bucket in storage key 'localMinIO'",
        ),
        (
            {"storage": {"key": "localMinIO", "path": "/"}},
            CONFIG,
            "storage.path must give the model's object path",
        ),
        (
            {"storage": {"key": "localMinIO", "path": "x"}},
            {"localMinIO": {"type": "gcs"}},
            "storage type 'gcs' is not supported",
        ),
        ({"storage": {"key": "localMinIO"}}, CONFIG, "storage.path must give"),
        (
            {"storage": None, "storageUri": "gs://b/x"},
            CONFIG,
            "use pvc://<pvc-name>/<path> or s3://<bucket>/<path>",
        ),
        ({"storage": None}, CONFIG, "the model has no storage"),
    ],
)
def test_unusable_references_say_why(
    model: dict[str, Any], config: dict[str, Any], message: str | None
) -> None:
    roots = StorageRoots({}, config)
    if message is None:
        assert roots.resolve(model_of(isvc(**model))) == S3Location(
            None, "b", "x", {"type": "s3", "bucket": "b"}
        )
        return
    with pytest.raises(StorageError) as err:
        roots.resolve(model_of(isvc(**model)))
    assert message in err.value.message


def test_the_location_travels_to_the_pod_as_modelmesh_storage_fields() -> None:
    location = S3Location("localMinIO", "models", "a/b.joblib", {"type": "s3", "bucket": "models"})
    assert json.loads(location.to_key()) == {
        "storage_key": "localMinIO",
        "storage_params": {"type": "s3", "bucket": "models"},
    }
    assert S3Location.from_request("a/b.joblib", location.to_key()) == location
    assert S3Location.from_request("/pvc/model.joblib", "") is None
    assert S3Location.from_request("/pvc/model.joblib", '{"format": "v1"}') is None
    with pytest.raises(StorageError, match="unknown storage key 'localMinIO'"):
        location.settings({})
    assert location.settings(CONFIG)["endpoint_url"] == "http://127.0.0.1:1"


def test_the_storage_config_forms(tmp_path: Path) -> None:
    entry = {
        "type": "s3",
        "access_key_id": "k",
        "secret_access_key": "s",
        "endpoint_url": "http://h:9000",
    }
    expected = {"localMinIO": entry}
    as_strings = tmp_path / "config.yaml"
    as_strings.write_text(yaml.safe_dump({"localMinIO": json.dumps(entry)}))
    as_mappings = tmp_path / "config.json"
    as_mappings.write_text(json.dumps(expected))
    secret = tmp_path / "secret.yaml"
    secret.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "storage-config"},
                "type": "Opaque",
                "data": {"localMinIO": base64.b64encode(json.dumps(entry).encode()).decode()},
            }
        )
    )
    mounted = tmp_path / "mounted"  # the secret as ModelMesh mounts it: a file per key
    mounted.mkdir()
    (mounted / "localMinIO").write_text(json.dumps(entry))
    for source in (as_strings, as_mappings, secret, mounted):
        assert load_storage_config(source) == expected, source


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "must map storage keys to their entries"),
        ("k: '{not json'", "key 'k': not valid JSON"),
        ("k: 7", "key 'k': must be a JSON object"),
        ("kind: Secret\ndata: {k: '%%%'}", "data['k'] is not base64"),
        ("k: [", "not valid YAML or JSON"),
    ],
)
def test_a_bad_storage_config_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(StorageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_storage_config(path)
    with pytest.raises(StorageError, match="cannot read storage config"):
        load_storage_config(tmp_path / "absent.yaml")


async def test_measure_lists_one_object_or_a_folder(uploaded: S3Server) -> None:
    roots = StorageRoots({}, {"k": uploaded.entry()})
    assert await roots.measure(S3Location("k", "models", "sklearn/mnist-svm.joblib")) == 1000
    assert await roots.measure(S3Location("k", "models", "folder")) == 1024
    assert await roots.measure(S3Location("k", "models", "folder/")) == 1024


@pytest.mark.parametrize(
    ("entry", "location", "error", "message"),
    [
        (
            {},
            S3Location("k", "models", "sklearn/absent.joblib"),
            ModelNotInStorage,
            "s3://models/sklearn/absent.joblib (storage key 'k'): no such object or folder in bucket 'models'",
        ),
        (
            {},
            S3Location("k", "nobucket", "x"),
            ModelNotInStorage,
            "bucket 'nobucket' does not exist",
        ),
        (
            {"access_key_id": "AKIAUNKNOWN"},
            S3Location("k", "models", "folder"),
            StorageAccessDenied,
            "access denied (InvalidAccessKeyId",
        ),
        (
            {"secret_access_key": "wrong"},
            S3Location("k", "models", "folder"),
            StorageAccessDenied,
            "access denied (SignatureDoesNotMatch",
        ),
        (
            {"endpoint_url": "http://127.0.0.1:1"},
            S3Location("k", "models", "folder"),
            StorageFailure,
            "cannot reach the storage",
        ),
    ],
)
async def test_measure_failures_say_which(
    uploaded: S3Server,
    entry: dict[str, str],
    location: S3Location,
    error: type[StorageFailure],
    message: str,
) -> None:
    roots = StorageRoots({}, {"k": uploaded.entry(**entry)})
    with pytest.raises(error) as err:
        await roots.measure(location)
    assert message in err.value.message


async def registry(
    tmp_path: Path, config: dict[str, Any], pods: FakePods | None = None
) -> Registry:
    pvc = tmp_path / "pvc"
    pvc.mkdir(exist_ok=True)
    pods = pods or FakePods(a=FakePod(capacity=1 << 20))
    placement = Placement(pods)
    for address in pods.pods:
        placement.add_pod(address)
    store = EmbeddedStore(tmp_path / "registry.db")
    reg = Registry(store, placement, StorageRoots({"my-models-pvc": pvc}, config))
    await reg.restore()
    await placement.check_pods()
    return reg


async def test_an_s3_model_is_registered_with_its_listed_size_and_location(
    tmp_path: Path, uploaded: S3Server
) -> None:
    reg = await registry(tmp_path, {"localMinIO": uploaded.entry()})
    record, action = await reg.apply(isvc())
    assert action == "created"
    assert record.target.path == "sklearn/mnist-svm.joblib"
    assert record.target.predicted_size == 1250  # 1000 bytes listed x 1.25
    assert json.loads(record.target.key) == {
        "storage_key": "localMinIO",
        "storage_params": {"type": "s3", "bucket": "models"},
    }


async def test_an_object_the_gateway_cannot_list_is_left_to_the_pods(
    tmp_path: Path, uploaded: S3Server
) -> None:
    pods = FakePods(
        a=FakePod(capacity=1 << 30, fail_loads="s3://models/absent.joblib: no such object")
    )
    reg = await registry(tmp_path, {"localMinIO": uploaded.entry()}, pods)
    record, _ = await reg.apply(isvc(storage={"key": "localMinIO", "path": "absent.joblib"}))
    assert record.target.predicted_size == 1 << 20  # the default: nothing listed
    for _ in range(50):
        ready = status_of(reg, record)["conditions"][0]
        if ready["status"] == "False" and ready.get("reason") == "ModelLoadFailed":
            break
        await asyncio.sleep(0)
    assert ready["reason"] == "ModelLoadFailed" and "no such object" in ready["message"]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"storage": {"key": "nope", "path": "m.joblib"}}, "unknown storage key 'nope'"),
        (
            {
                "storage": {
                    "parameters": {"type": "pvc", "name": "my-models-pvc"},
                    "path": "../outside.joblib",
                }
            },
            "model path '../outside.joblib' leaves PVC 'my-models-pvc'",
        ),
        (
            {
                "storage": {
                    "parameters": {"type": "pvc", "name": "my-models-pvc"},
                    "path": "link.joblib",
                }
            },
            "model path 'link.joblib' leaves PVC 'my-models-pvc'",
        ),
        (
            {"storage": {"parameters": {"type": "pvc", "name": "other-pvc"}, "path": "m.joblib"}},
            "unknown PVC 'other-pvc'",
        ),
    ],
)
async def test_unusable_storage_is_stored_not_ready_and_never_loaded(
    tmp_path: Path, model: dict[str, Any], message: str
) -> None:
    (tmp_path / "outside.joblib").write_bytes(b"secret")
    pods = FakePods(a=FakePod())
    reg = await registry(tmp_path, {}, pods)
    (tmp_path / "pvc" / "link.joblib").symlink_to(tmp_path / "outside.joblib")
    record, action = await reg.apply(isvc(**model))
    assert action == "created"
    status = status_of(reg, record)
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidPredictorSpec")
    assert message in ready["message"]
    assert status["modelStatus"]["transitionStatus"] == "InvalidSpec"
    assert status["modelStatus"]["lastFailureInfo"]["reason"] == "InvalidPredictorSpec"
    with pytest.raises(
        Exception, match="model 'from-s3' cannot be served \\(InvalidPredictorSpec\\): "
    ):
        reg.resolve("from-s3")
    assert pods.loads == []


async def test_a_fixed_storage_reference_is_served(tmp_path: Path) -> None:
    reg = await registry(tmp_path, {})
    (tmp_path / "pvc" / "m.joblib").write_bytes(b"m" * 8)
    bad = isvc(
        storage={"parameters": {"type": "pvc", "name": "my-models-pvc"}, "path": "../m.joblib"}
    )
    record, _ = await reg.apply(bad)
    assert status_of(reg, record)["conditions"][0]["status"] == "False"
    good = isvc(
        storage={"parameters": {"type": "pvc", "name": "my-models-pvc"}, "path": "m.joblib"}
    )
    record, action = await reg.apply(good)
    assert action == "configured"
    assert record.target.path == str((tmp_path / "pvc" / "m.joblib").resolve())
    assert reg.resolve("from-s3") == record.target.model_id


async def test_a_restart_with_the_missing_storage_key_configured_serves_it(
    tmp_path: Path, uploaded: S3Server
) -> None:
    reg = await registry(tmp_path, {})
    record, _ = await reg.apply(isvc())
    assert status_of(reg, record)["conditions"][0]["reason"] == "InvalidPredictorSpec"
    await reg.close()
    restarted = await registry(tmp_path, {"localMinIO": uploaded.entry()})
    record = restarted.get("from-s3")
    assert record.target.path == "sklearn/mnist-svm.joblib" and record.target.predicted_size == 1250
    assert restarted.resolve("from-s3") == record.target.model_id
