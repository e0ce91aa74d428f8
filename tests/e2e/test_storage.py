"""Storage end to end: an sklearn model deployed from S3 (moto's server on loopback) through
an InferenceService document and inferred over REST through Envoy; each storage failure, S3
and PVC, shows as READY False with a message that says which."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.tools import launcher, samples
from tests.s3server import S3Server, storage_config_file

from .conftest import ISVCS, inference_service, seed_body, wait_ready


@pytest.fixture(scope="module")
def s3_deployment(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[launcher.Deployment, S3Server]]:
    data = tmp_path_factory.mktemp("storage")
    models = data / "models"
    samples.train_mnist_svm(models / samples.SAMPLE_FILE)
    (models / "notes.joblib").write_text("a text file, not a joblib dump\n")
    (data / "outside.joblib").write_bytes((models / samples.SAMPLE_FILE).read_bytes())
    (models / "link-out.joblib").symlink_to(data / "outside.joblib")
    with S3Server() as s3:
        s3.upload(
            "modelmesh-example-models", "sklearn/mnist-svm.joblib", models / samples.SAMPLE_FILE
        )
        config = storage_config_file(
            data / "storage-config.json",
            {
                "localMinIO": s3.entry("modelmesh-example-models"),
                "default": s3.entry("modelmesh-example-models"),
                "bad-credentials": s3.entry("modelmesh-example-models", secret_access_key="wrong"),
            },
        )
        ports = launcher.Ports.free(pods=1)
        pod_args = {0: ["--storage-config", str(config), "--model-cache", str(data / "cache")]}
        with launcher.Deployment(
            data_dir=data,
            ports=ports,
            pod_args=pod_args,
            gateway_env={"MMGW_STORAGE_CONFIG": str(config)},
        ) as running:
            yield running, s3


@pytest.fixture(scope="module")
def api(s3_deployment: tuple[launcher.Deployment, S3Server]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=s3_deployment[0].api_url, timeout=30) as client:
        yield client


def apply(api: httpx.Client, document: dict[str, Any]) -> None:
    api.put(f"{ISVCS}/{document['metadata']['name']}", json=document).raise_for_status()


def s3_document(name: str, key: str, path: str) -> dict[str, Any]:
    """An sklearn InferenceService whose model is at ``path`` in S3 storage ``key``."""
    document = inference_service(name, "sklearn", path)
    document["spec"]["predictor"]["model"]["storage"] = {"key": key, "path": path}
    return document


def cache_of(deployment: launcher.Deployment) -> Path:
    return deployment.data_dir / "cache"


def test_an_sklearn_model_from_s3_serves_and_leaves_the_cache_when_deleted(
    s3_deployment: tuple[launcher.Deployment, S3Server], api: httpx.Client
) -> None:
    deployment, _ = s3_deployment
    apply(api, s3_document("s3-mnist", "localMinIO", "sklearn/mnist-svm.joblib"))
    ready = wait_ready(api, "s3-mnist")["status"]["conditions"][0]
    assert ready == {"type": "Ready", "status": "True"}
    with httpx.Client(base_url=deployment.url, timeout=30) as rest:
        response = rest.post("/v2/models/s3-mnist/infer", json=seed_body())
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["contents"]["int64Contents"] == ["8"]
    model_id = response.json()["modelName"]
    assert (cache_of(deployment) / model_id / "mnist-svm.joblib").is_file()
    api.delete(f"{ISVCS}/s3-mnist").raise_for_status()
    deadline = time.monotonic() + 30  # the unload is asynchronous: bounded wait for the pod
    while (cache_of(deployment) / model_id).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (cache_of(deployment) / model_id).exists()


def test_a_storage_uri_uses_the_default_storage_key(api: httpx.Client) -> None:
    document = inference_service("s3-uri", "sklearn", "unused")
    model = document["spec"]["predictor"]["model"]
    del model["storage"]
    model["storageUri"] = "s3://modelmesh-example-models/sklearn/mnist-svm.joblib"
    apply(api, document)
    assert wait_ready(api, "s3-uri")["status"]["conditions"][0]["status"] == "True"


FAILURES = {
    # name: (document, reason, words the message must have)
    "s3-missing-object": (
        s3_document("s3-missing-object", "localMinIO", "sklearn/absent.joblib"),
        "ModelLoadFailed",
        "s3://modelmesh-example-models/sklearn/absent.joblib (storage key "
        "'localMinIO'): no such object or folder",
    ),
    "s3-bad-credentials": (
        s3_document("s3-bad-credentials", "bad-credentials", "sklearn/mnist-svm.joblib"),
        "ModelLoadFailed",
        "access denied (SignatureDoesNotMatch",
    ),
    "s3-unknown-key": (
        s3_document("s3-unknown-key", "nope", "sklearn/mnist-svm.joblib"),
        "InvalidPredictorSpec",
        "unknown storage key 'nope' (the storage config has: bad-credentials, default, localMinIO)",
    ),
    "pvc-missing-file": (
        inference_service("pvc-missing-file", "sklearn", "absent.joblib"),
        "ModelLoadFailed",
        "model file not found: ",
    ),
    "pvc-wrong-format": (
        inference_service("pvc-wrong-format", "sklearn", "notes.joblib"),
        "ModelLoadFailed",
        "notes.joblib' as a scikit-learn model",
    ),
    "pvc-dot-dot": (
        inference_service("pvc-dot-dot", "sklearn", "../outside.joblib"),
        "InvalidPredictorSpec",
        "model path '../outside.joblib' leaves PVC 'my-models-pvc'",
    ),
    "pvc-symlink-out": (
        inference_service("pvc-symlink-out", "sklearn", "link-out.joblib"),
        "InvalidPredictorSpec",
        "model path 'link-out.joblib' leaves PVC 'my-models-pvc'",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_storage_failures_show_as_ready_false_saying_which(api: httpx.Client, case: str) -> None:
    document, reason, words = FAILURES[case]
    apply(api, document)  # stored, as Kubernetes stores what it cannot serve
    status = (
        wait_ready(api, case)["status"]
        if reason == "ModelLoadFailed"
        else api.get(f"{ISVCS}/{case}").json()["status"]
    )
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert words in ready["message"]
    assert status["modelStatus"]["lastFailureInfo"]["reason"] == reason


def test_requests_for_models_whose_storage_failed_say_why(
    s3_deployment: tuple[launcher.Deployment, S3Server], api: httpx.Client
) -> None:
    for case in ("s3-missing-object", "pvc-wrong-format", "s3-unknown-key"):
        apply(api, FAILURES[case][0])
    with httpx.Client(base_url=s3_deployment[0].url, timeout=30) as rest:
        missing = rest.post("/v2/models/s3-missing-object/infer", json=seed_body())
        assert (
            missing.status_code == 503 and "no such object or folder" in missing.json()["message"]
        )
        wrong = rest.post("/v2/models/pvc-wrong-format/infer", json=seed_body())
        assert wrong.status_code == 500 and "as a scikit-learn model" in wrong.json()["message"]
        unknown = rest.post("/v2/models/s3-unknown-key/infer", json=seed_body())
        assert unknown.status_code == 404
        assert unknown.json()["message"].startswith(
            "model 's3-unknown-key' cannot be served (InvalidPredictorSpec): unknown storage key 'nope'"
        )


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root reads a file whatever its mode: chmod 000 cannot make it "
    "unreadable (tests/pod/test_puller.py checks the mapping)",
)
def test_an_unreadable_model_file_shows_permission_denied(
    s3_deployment: tuple[launcher.Deployment, S3Server], api: httpx.Client
) -> None:
    locked = s3_deployment[0].data_dir / "models" / "locked.joblib"
    locked.write_bytes((s3_deployment[0].data_dir / "outside.joblib").read_bytes())
    locked.chmod(0)
    apply(api, inference_service("pvc-unreadable", "sklearn", "locked.joblib"))
    ready = wait_ready(api, "pvc-unreadable")["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "ModelLoadFailed")
    assert "locked.joblib' cannot be read: permission denied" in ready["message"]
