"""The pod's puller: models loaded from a real S3-compatible server (moto) on loopback into
the pod's cache folder, which nothing half-written or unloaded is left in; the gRPC codes
of storage failures."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import model_runtime_pb2 as rt
from gateway.core.errors import ModelFormatError, StorageFailure
from gateway.kserve import s3 as s3_module
from gateway.kserve.locations import S3Location
from gateway.pod.model import ModelConfig
from gateway.pod.puller import Puller, confine
from tests.s3server import S3Server

from .harness import Pod, StartPod, rpc_error


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(scope="module")
def uploaded(s3: S3Server, svc_file: Path, tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    readme = tmp_path_factory.mktemp("objects") / "README"
    readme.write_text("the seed's SVC")
    s3.upload("models", "sklearn/mnist-svm.joblib", svc_file)
    s3.upload("models", "folder/mnist/model.joblib", svc_file)
    s3.upload("models", "folder/mnist/README", readme)
    s3.upload("models", "fake/model.bin", readme)
    return s3


def s3_key(storage_key: str = "localMinIO", bucket: str = "models", **rest: Any) -> str:
    return json.dumps(
        {"storage_key": storage_key, "storage_params": {"type": "s3", "bucket": bucket}, **rest}
    )


@pytest.fixture
async def s3_pod(start_pod: StartPod, uploaded: S3Server, tmp_path: Path) -> Pod:
    config = {
        "localMinIO": uploaded.entry(),
        "bad-secret": uploaded.entry(secret_access_key="wrong"),
        "unreachable": uploaded.entry(endpoint_url="http://127.0.0.1:1"),
    }
    return await start_pod(storage_config=config, model_cache=tmp_path / "cache")


def cached(pod: Pod) -> list[str]:
    cache = pod.server.puller.cache
    assert cache is not None
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))


async def predict(pod: Pod, model_id: str, row: np.ndarray) -> list[int]:
    request = v2.ModelInferRequest(
        model_name=model_id,
        inputs=[
            v2.ModelInferRequest.InferInputTensor(
                name="predict",
                datatype="FP32",
                shape=list(row.shape),
                contents=v2.InferTensorContents(fp32_contents=row.ravel().tolist()),
            )
        ],
    )
    return list((await pod.infer.ModelInfer(request)).outputs[0].contents.int64_contents)


async def test_a_model_is_pulled_into_the_cache_served_and_removed_on_unload(
    s3_pod: Pod, digit_898: np.ndarray
) -> None:
    size = await s3_pod.load("m1", "sklearn/mnist-svm.joblib", model_key=s3_key())
    assert size > 0
    assert cached(s3_pod) == ["m1", "m1/mnist-svm.joblib"]
    assert await predict(s3_pod, "m1", digit_898) == [8]
    await s3_pod.load("m2", "folder/mnist", model_key=s3_key())  # a folder: every object under it
    assert cached(s3_pod) == [
        "m1",
        "m1/mnist-svm.joblib",
        "m2",
        "m2/mnist",
        "m2/mnist/README",
        "m2/mnist/model.joblib",
    ]
    assert await predict(s3_pod, "m2", digit_898) == [8]
    await s3_pod.runtime.UnloadModel(rt.UnloadModelRequest(model_id="m1"))
    assert cached(s3_pod) == ["m2", "m2/mnist", "m2/mnist/README", "m2/mnist/model.joblib"]


async def test_the_runtime_gets_the_local_path_and_the_key_without_storage_fields(
    s3_pod: Pod,
) -> None:
    await s3_pod.load("f", "fake/model.bin", "fake", model_key=s3_key(size=77))
    model = s3_pod.server.models.get("f")
    assert model.config.path == s3_pod.server.puller.cache / "f" / "model.bin"  # type: ignore[operator]
    assert json.loads(model.config.key) == {"size": 77}
    assert model.size_bytes() == 77


async def test_concurrent_loads_of_one_model_download_once(
    s3_pod: Pod, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads: list[str] = []
    real = s3_module.download

    def counted(client: Any, location: S3Location, *args: Any) -> Path:
        downloads.append(location.path)
        return real(client, location, *args)

    monkeypatch.setattr(s3_module, "download", counted)
    sizes = await asyncio.gather(
        *(s3_pod.load("m", "sklearn/mnist-svm.joblib", model_key=s3_key()) for _ in range(6))
    )
    assert len(set(sizes)) == 1 and downloads == ["sklearn/mnist-svm.joblib"]


@pytest.mark.parametrize(
    ("path", "model_key", "code", "message"),
    [
        (
            "sklearn/absent.joblib",
            s3_key(),
            grpc.StatusCode.NOT_FOUND,
            "s3://models/sklearn/absent.joblib (storage key 'localMinIO'): no such object or folder in bucket 'models'",
        ),
        (
            "x.joblib",
            s3_key(bucket="nobucket"),
            grpc.StatusCode.NOT_FOUND,
            "bucket 'nobucket' does not exist",
        ),
        (
            "sklearn/mnist-svm.joblib",
            s3_key("bad-secret"),
            grpc.StatusCode.PERMISSION_DENIED,
            "s3://models/sklearn/mnist-svm.joblib (storage key 'bad-secret'): access denied (SignatureDoesNotMatch",
        ),
        (
            "sklearn/mnist-svm.joblib",
            s3_key("nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown storage key 'nope' (the storage config has: bad-secret, localMinIO, unreachable)",
        ),
        (
            "sklearn/mnist-svm.joblib",
            s3_key("unreachable"),
            grpc.StatusCode.UNAVAILABLE,
            "cannot reach the storage",
        ),
        (
            "fake/model.bin",
            s3_key(),
            grpc.StatusCode.FAILED_PRECONDITION,
            "is not a .joblib/.pkl/.pickle file",
        ),
    ],
)
async def test_storage_failures_have_their_code_and_leave_nothing(
    s3_pod: Pod, path: str, model_key: str, code: grpc.StatusCode, message: str
) -> None:
    err = await rpc_error(s3_pod.load("bad", path, model_key=model_key))
    assert err.code() == code
    assert message in (err.details() or "")
    assert cached(s3_pod) == []
    assert list((await s3_pod.status()).loaded_models) == []


async def test_a_download_that_fails_halfway_leaves_nothing(
    uploaded: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half(client: Any, location: S3Location, objects: Any, into: Path) -> Path:
        (into / "mnist").mkdir()
        (into / "mnist" / "model.joblib").write_bytes(b"half")
        raise StorageFailure("connection reset")

    monkeypatch.setattr(s3_module, "download", half)
    puller = Puller(tmp_path / "cache", {"localMinIO": uploaded.entry()})
    with pytest.raises(StorageFailure, match="connection reset"):
        await puller.fetch(ModelConfig("m", "sklearn", Path("folder/mnist"), s3_key()))
    assert list((tmp_path / "cache").iterdir()) == []


async def test_a_download_that_outlives_the_loading_timeout_is_dropped(
    start_pod: StartPod, uploaded: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = s3_module.download

    def slow(*args: Any) -> Path:
        local = real(*args)
        release.wait(30)  # until the load has failed
        return local

    monkeypatch.setattr(s3_module, "download", slow)
    cache = tmp_path / "cache"
    pod = await start_pod(
        storage_config={"localMinIO": uploaded.entry()},
        model_cache=cache,
        model_loading_timeout_ms=300,
    )
    err = await rpc_error(pod.load("m", "sklearn/mnist-svm.joblib", model_key=s3_key()))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    release.set()
    deadline = time.monotonic() + 10
    while any(cache.iterdir()) and time.monotonic() < deadline:  # the worker thread finishes
        await asyncio.sleep(0.02)
    assert list(cache.iterdir()) == []


async def test_the_cache_is_the_pods_own(start_pod: StartPod, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "stale-model").mkdir(parents=True)
    (cache / ".partial-x").mkdir()
    pod = await start_pod(model_cache=cache)
    assert list(cache.iterdir()) == []  # emptied at start
    await pod.server.stop(grace=0)
    assert cache.is_dir() and list(cache.iterdir()) == []
    temporary = await start_pod()  # no cache folder given: a temporary one, removed at stop
    folder = temporary.server.puller.cache
    assert folder is not None and folder.is_dir()
    await temporary.server.stop(grace=0)
    assert not folder.exists()


async def test_predict_model_size_lists_s3_objects(s3_pod: Pod, svc_file: Path) -> None:
    request = rt.PredictModelSizeRequest(model_path="sklearn/mnist-svm.joblib", model_key=s3_key())
    size = (await s3_pod.runtime.PredictModelSize(request)).size_in_bytes
    assert size == -(-svc_file.stat().st_size * 125 // 100)


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root reads a file whatever its mode: chmod 000 cannot make "
    "it unreadable (the mapping is tested with os.access below)",
)
async def test_an_unreadable_local_file_is_permission_denied(
    pod: Pod, tmp_path: Path, svc: Any
) -> None:
    file = tmp_path / "locked.joblib"
    joblib.dump(svc, file)
    file.chmod(0)
    err = await rpc_error(pod.load("locked", file))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == f"model file '{file}' cannot be read: permission denied"


async def test_a_file_the_pod_may_not_read_is_permission_denied(
    pod: Pod, svc_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if Path(path) == svc_file else real(path, mode)
    )
    err = await rpc_error(pod.load("locked", svc_file))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == f"model file '{svc_file}' cannot be read: permission denied"


def test_confine_refuses_what_resolves_outside_the_pvc(tmp_path: Path) -> None:
    pvc, outside = tmp_path / "pvc", tmp_path / "outside"
    (pvc / "folder").mkdir(parents=True)
    outside.mkdir()
    (outside / "other.joblib").write_bytes(b"x")
    (pvc / "model.joblib").write_bytes(b"x")
    (pvc / "inside-link.joblib").symlink_to(pvc / "model.joblib")
    confine(pvc / "model.joblib", pvc)
    confine(pvc / "inside-link.joblib", pvc)  # a link that stays inside is fine
    (pvc / "swapped.joblib").symlink_to(outside / "other.joblib")
    with pytest.raises(ModelFormatError, match="outside its PVC folder"):
        confine(pvc / "swapped.joblib", pvc)
    (pvc / "folder" / "weights.bin").symlink_to(outside / "other.joblib")
    with pytest.raises(ModelFormatError, match="weights.bin"):
        confine(pvc / "folder", pvc)  # a folder model: every file under it is checked


async def test_a_load_whose_file_was_swapped_for_a_link_out_of_the_pvc_fails(
    start_pod: StartPod, svc_file: Path, tmp_path: Path
) -> None:
    """#13 item 4: the gateway checked the path at apply; the file became a symlink out of the
    PVC afterwards. The pod refuses it at load (FAILED_PRECONDITION: retrying will not help)."""
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    (pvc / "model.joblib").symlink_to(svc_file)  # svc_file lives outside this PVC
    pod = await start_pod()
    key = json.dumps({"pvc_root": str(pvc)})
    err = await rpc_error(pod.load("m__isvc-1", pvc / "model.joblib", model_key=key))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "outside its PVC folder" in err.details()
    (pvc / "model.joblib").unlink()
    (pvc / "model.joblib").write_bytes(svc_file.read_bytes())
    assert await pod.load("m__isvc-1", pvc / "model.joblib", model_key=key) > 0
