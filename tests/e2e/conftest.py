"""One local deployment (Envoy, gateway, 3 pods) on free loopback ports for the e2e tests."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
import yaml

from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.tools import launcher, samples

if TYPE_CHECKING:
    from .cli_helpers import CLI

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sklearn-mnist.yaml"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices"


def seed_body(**overrides: Any) -> dict[str, Any]:
    """The seed's request (protobuf JSON), its tensor's fields replaced by ``overrides``."""
    body = samples.sample_request()
    body["inputs"][0].update(overrides)
    return body


def curl_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST ``body`` with curl, as the KServe docs do (``-d``, curl's own content type)."""
    result = subprocess.run(
        ["curl", "-sS", "-w", "\\n%{http_code}", "-X", "POST", url, "-d", json.dumps(body)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    payload, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(payload)


def wait_ready(api: httpx.Client, name: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = api.get(f"{ISVCS}/{name}")
        if response.status_code == 404:  # another replica's apply, not seen here yet
            assert time.monotonic() < deadline, f"{name} never appeared: {response.text}"
            time.sleep(0.05)
            continue
        item = response.json()
        condition = item["status"]["conditions"][0]
        if condition["status"] == "True" or condition.get("reason") == "ModelLoadFailed":
            return item
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready: {condition}")
        time.sleep(0.05)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is an e2e test: `pytest -m "not e2e"` runs the rest in seconds."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@contextlib.contextmanager
def sample_deployment(data: Path, ports: launcher.Ports) -> Iterator[launcher.Deployment]:
    """A deployment on ``ports`` with the seed's sklearn-mnist applied and ready; every
    process stopped afterwards."""
    samples.train_mnist_svm(data / "models" / samples.SAMPLE_FILE)
    with launcher.Deployment(data_dir=data, ports=ports) as running:
        with httpx.Client(base_url=running.api_url, timeout=30) as api:
            api.put(
                f"{ISVCS}/sklearn-mnist", json=yaml.safe_load(EXAMPLE.read_text())
            ).raise_for_status()
            wait_ready(api, "sklearn-mnist")
        yield running
    for process in running.processes:
        assert process.popen.poll() is not None


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.Deployment]:
    with sample_deployment(tmp_path_factory.mktemp("deployment"), launcher.Ports.free()) as running:
        yield running


@pytest.fixture(scope="session")
def rest(deployment: launcher.Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def api(deployment: launcher.Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def stub(deployment: launcher.Deployment) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{deployment.ports.envoy}") as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


def inference_service(name: str, model_format: str, path: str) -> dict[str, object]:
    """An InferenceService document for a model file in PVC my-models-pvc."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": "modelmesh-serving",
            "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"},
        },
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": model_format},
                    "storage": {
                        "parameters": {"type": "pvc", "name": "my-models-pvc"},
                        "path": path,
                    },
                }
            }
        },
    }


@pytest.fixture
def cli(deployment: launcher.Deployment) -> Iterator[CLI]:
    """`mmgw` against the session deployment; what a test registers is deleted afterwards."""
    from .cli_helpers import CLI  # it imports this module's names

    runner = CLI(deployment)
    try:
        yield runner
    finally:
        runner.cleanup()
