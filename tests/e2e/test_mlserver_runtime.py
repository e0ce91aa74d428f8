"""The seed's custom-runtime flow, unchanged: a user's MLServer ``MLModel``, its ServingRuntime
and InferenceService YAML, served by real MLServer processes beside the pods' adapters.

Two pods of the ServingRuntime ``digits-runtime`` (``serverType: mlserver``, the user's class
in ``MLSERVER_MODEL_IMPLEMENTATION``, imported by MLServer from the runtime's ``PYTHONPATH``;
the project itself cannot import it, as it has no mlserver). Each pod starts MLServer 1.7.1
from the virtualenv ``make mlserver`` makes. Envoy sends inference to MLServer's own ports;
its filter name_the_model writes the concrete model id into the request.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway._proto import model_runtime_pb2 as rt
from gateway._proto import model_runtime_pb2_grpc as rt_grpc
from gateway.pod.mlserver.process import VENV
from gateway.tools import launcher, samples

from .conftest import ISVCS, inference_service, seed_body, wait_ready

RUNTIME_CODE = Path(__file__).parent / "mlserver_runtime"
SRS = "/apis/serving.kserve.io/v1alpha1/namespaces/modelmesh-serving/servingruntimes"
LOAD_TIMEOUT_MS = 10_000


def serving_runtime() -> dict[str, Any]:
    """The seed's ServingRuntime (004), filled in for the digits class."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": "digits-runtime", "namespace": "modelmesh-serving"},
        "spec": {
            "supportedModelFormats": [
                {"name": "digits", "version": "1", "autoSelect": True},
                {"name": "sklearn", "version": "0", "autoSelect": False},
            ],
            "multiModel": True,
            "grpcDataEndpoint": "port:8001",
            "grpcEndpoint": "port:8085",
            "containers": [
                {
                    "name": "mlserver",
                    "image": "registry.example/digits-runtime:latest",
                    "env": [
                        {"name": "MLSERVER_MODELS_DIR", "value": "/models/_mlserver_models/"},
                        {"name": "MLSERVER_GRPC_PORT", "value": "8001"},
                        {"name": "MLSERVER_HTTP_PORT", "value": "8002"},
                        {"name": "MLSERVER_LOAD_MODELS_AT_STARTUP", "value": "false"},
                        {"name": "MLSERVER_MODEL_NAME", "value": "dummy-model"},
                        {"name": "MLSERVER_HOST", "value": "127.0.0.1"},
                        {"name": "MLSERVER_GRPC_MAX_MESSAGE_LENGTH", "value": "-1"},
                        {
                            "name": "MLSERVER_MODEL_IMPLEMENTATION",
                            "value": "digits_mlmodel.DigitsModel",
                        },
                        {"name": "PYTHONPATH", "value": str(RUNTIME_CODE)},
                    ],
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "1Gi"},
                        "limits": {"cpu": "5", "memory": "1Gi"},
                    },
                }
            ],
            "builtInAdapter": {
                "serverType": "mlserver",
                "runtimeManagementPort": 8001,
                "memBufferBytes": 134217728,
                "modelLoadingTimeoutMillis": LOAD_TIMEOUT_MS,
            },
        },
    }


def isvc(name: str, path: str, model_format: str = "digits") -> dict[str, Any]:
    document = inference_service(name, model_format, path)
    document["spec"]["predictor"]["model"]["runtime"] = "digits-runtime"  # type: ignore[index]
    return document


def native_folder(models: Path, name: str, implementation: str) -> str:
    """A model folder in MLServer's own layout: its model-settings.json and the joblib file."""
    folder = models / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.joblib").write_bytes((models / samples.SAMPLE_FILE).read_bytes())
    settings = {
        "name": name,
        "implementation": implementation,
        "parameters": {"uri": "./model.joblib"},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return name


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.Deployment]:
    if not (VENV / "bin" / "mlserver").exists():
        pytest.fail("MLServer's virtualenv is missing: `make mlserver` makes it (`make test` does)")
    data = tmp_path_factory.mktemp("mlserver")
    models = data / "models"
    samples.train_mnist_svm(models / samples.SAMPLE_FILE)
    native_folder(models, "digits-request", "digits_mlmodel.DigitsRequestModel")
    native_folder(models, "broken", "digits_mlmodel.BrokenModel")
    native_folder(models, "slow", "digits_mlmodel.SlowModel")
    native_folder(models, "not-importable", "nowhere_to_be_found.Model")
    deployment = launcher.Deployment(
        data_dir=data,
        ports=launcher.Ports.free(pods=2),
        pod_args={i: ["--runtime-name", "digits-runtime"] for i in range(2)},
        later_pods=frozenset({0, 1}),
    )
    with deployment, httpx.Client(base_url=deployment.api_url, timeout=30) as api:
        api.put(f"{SRS}/digits-runtime", json=serving_runtime()).raise_for_status()
        for name, path, fmt in (
            ("digits", samples.SAMPLE_FILE, "digits"),
            ("digits-request", "digits-request", "digits"),
            ("mnist-mls", samples.SAMPLE_FILE, "sklearn"),
        ):
            api.put(f"{ISVCS}/{name}", json=isvc(name, path, fmt)).raise_for_status()
        for name in ("digits", "digits-request", "mnist-mls"):
            item = wait_ready(api, name, timeout=120)
            assert item["status"]["conditions"][0]["status"] == "True", item["status"]
        deadline = time.monotonic() + 120  # both pods up: the tests move models between them
        while sum(p["healthy"] for p in pods(api)) < 2:
            assert time.monotonic() < deadline, pods(api)
            time.sleep(0.2)
        yield deployment
    for process in deployment.processes:
        assert process.popen.poll() is not None


def pods(api: httpx.Client) -> list[dict[str, Any]]:
    return list(api.get("/v1/placement").json()["pods"])


def runtime_status(address: str) -> rt.RuntimeStatusResponse:
    with grpc.insecure_channel(address) as channel:
        return rt_grpc.ModelRuntimeStub(channel).RuntimeStatus(rt.RuntimeStatusRequest(), timeout=5)


def model_id(api: httpx.Client, name: str) -> str:
    """The concrete id the gateway loads ``name`` as (the name MLServer serves it under)."""
    for model in api.get("/v1/placement").json()["models"]:
        if model.startswith(name + "__isvc-"):
            return str(model)
    raise AssertionError(f"no concrete model for {name}")


def pod_of(api: httpx.Client, concrete: str) -> dict[str, Any]:
    (pod,) = (
        p
        for p in pods(api)
        if any(c["model_id"] == concrete and c["state"] == "LOADED" for c in p["models"])
    )
    return pod


def seed_oip(request_id: str) -> dict[str, Any]:
    return {"id": request_id, **samples.sample_request(oip=True)}


def test_a_pod_of_the_runtime_is_an_adapter_beside_a_real_mlserver(
    mesh: launcher.Deployment,
) -> None:
    with httpx.Client(base_url=mesh.api_url, timeout=30) as api:
        concrete = model_id(api, "digits")
        pod = pod_of(api, concrete)
        status = runtime_status(pod["pod"])
        # inference goes to MLServer's own ports, and the model is named in the request
        assert status.model_named_in_request
        assert status.data_grpc_port and status.rest_port
        assert pod["data_address"] == f"127.0.0.1:{status.data_grpc_port}" != pod["pod"]
        assert pod["rest_address"] == f"127.0.0.1:{status.rest_port}"
        assert pod["capacity_bytes"] == (1 << 30) - 134217728  # limits.memory - memBufferBytes
        ready = httpx.get(f"http://{pod['rest_address']}/v2/health/ready", timeout=5)
        assert ready.status_code == 200  # MLServer's own REST
        served = httpx.get(f"http://{pod['rest_address']}/v2", timeout=5).json()
        assert served["name"] == "mlserver" and served["version"] == "1.7.1"


@pytest.mark.parametrize("name", ["digits", "digits-request", "mnist-mls"])
def test_rest_in_the_oip_form_answers_as_mlserver_does(
    mesh: launcher.Deployment, name: str
) -> None:
    with httpx.Client(base_url=mesh.api_url, timeout=30) as api:
        concrete = model_id(api, name)
        pod = pod_of(api, concrete)
    through = httpx.post(f"{mesh.url}/v2/models/{name}/infer", json=seed_oip("r-1"), timeout=30)
    assert through.status_code == 200, through.text
    assert through.headers["x-mmgw-variant"] == concrete
    direct = httpx.post(
        f"http://{pod['rest_address']}/v2/models/{concrete}/infer", json=seed_oip("r-1"), timeout=30
    )
    assert direct.status_code == 200, direct.text
    assert through.json() == direct.json()
    (output,) = through.json()["outputs"]
    assert output["data"] == [8]
    assert through.json()["model_name"] == concrete  # as ModelMesh's MLServer answers


@pytest.mark.parametrize("name", ["digits", "digits-request", "mnist-mls"])
def test_rest_in_the_seeds_protobuf_json_form_is_transcoded_to_mlserver(
    mesh: launcher.Deployment, name: str
) -> None:
    response = httpx.post(f"{mesh.url}/v2/models/{name}/infer", json=seed_body(), timeout=30)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["contents"]["int64Contents"] == ["8"]


@pytest.mark.parametrize("name", ["digits", "digits-request", "mnist-mls"])
def test_grpc_answers_as_mlserver_does(mesh: launcher.Deployment, name: str) -> None:
    with httpx.Client(base_url=mesh.api_url, timeout=30) as api:
        concrete = model_id(api, name)
        pod = pod_of(api, concrete)
    pixels = np.array([samples.sample_input()], dtype=np.float32)

    def infer(address: str, model: str) -> triton_grpc.InferResult:
        client = triton_grpc.InferenceServerClient(address)
        tensor = triton_grpc.InferInput("predict", [1, 64], "FP32")
        tensor.set_data_from_numpy(pixels)
        try:
            return client.infer(model, [tensor], request_id="g-1", client_timeout=30)
        finally:
            client.close()

    through = infer(f"127.0.0.1:{mesh.ports.envoy}", name)
    direct = infer(pod["data_address"], concrete)
    assert through.get_response() == direct.get_response()
    (output,) = through.get_response().outputs
    assert through.as_numpy(output.name).ravel().tolist() == [8]


def test_a_native_grpc_call_naming_its_model_only_in_the_body(mesh: launcher.Deployment) -> None:
    """No mm-model-id header: ext_proc reads field 1, Envoy rewrites it for MLServer."""
    request = v2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend(samples.sample_input())
    with grpc.insecure_channel(f"127.0.0.1:{mesh.ports.envoy}") as channel:
        answer = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert list(answer.outputs[0].contents.int64_contents) == [8]
    assert answer.model_name.startswith("digits__isvc-")


def test_envoy_replaces_every_model_name_wherever_it_is_in_the_message(
    mesh: launcher.Deployment,
) -> None:
    """Protobuf allows fields in any order and a repeated scalar (the last wins): the filter
    scans the message and leaves exactly one field 1, the concrete id."""
    request = v2.ModelInferRequest(id="spliced")
    tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend(samples.sample_input())

    def name_field(name: bytes) -> bytes:
        return b"\x0a" + bytes([len(name)]) + name

    body = name_field(b"first") + request.SerializeToString() + name_field(b"no-such-model")
    with grpc.insecure_channel(f"127.0.0.1:{mesh.ports.envoy}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda raw: raw,
            response_deserializer=v2.ModelInferResponse.FromString,
        )
        answer = call(body, metadata=[("mm-vmodel-id", "digits")], timeout=30)
    assert list(answer.outputs[0].contents.int64_contents) == [8]
    assert answer.id == "spliced" and answer.model_name.startswith("digits__isvc-")


def test_triton_http_client_through_the_mesh(mesh: launcher.Deployment) -> None:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{mesh.ports.envoy}")
    try:
        tensor = triton_http.InferInput("predict", [1, 64], "FP32")
        # JSON tensors: Triton's binary extension is Triton's, and MLServer answers it 422
        pixels = np.array([samples.sample_input()], dtype=np.float32)
        tensor.set_data_from_numpy(pixels, binary_data=False)
        result = client.infer("digits", [tensor])
        assert result.as_numpy(result.get_response()["outputs"][0]["name"]).ravel().tolist() == [8]
        assert client.is_model_ready("digits")
    finally:
        client.close()


def test_an_mlserver_that_dies_takes_its_pod_out_until_it_is_back(
    mesh: launcher.Deployment,
) -> None:
    """SIGKILL the MLServer that holds digits: the pod reports itself not ready and leaves
    the pool, digits is loaded again, and the pod restarts MLServer and comes back."""
    with httpx.Client(base_url=mesh.api_url, timeout=30) as api:
        concrete = model_id(api, "digits")
        victim = pod_of(api, concrete)["name"]
        pod_pid = mesh.process(victim).popen.pid
        killed = mlserver_pid(pod_pid)
        os.killpg(killed, signal.SIGKILL)
        failed = answered = 0
        left_the_pool = False
        served_after = False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (left_the_pool and served_after):
            victim_pod = next(p for p in pods(api) if p["name"] == victim)
            left_the_pool |= not victim_pod["healthy"]
            response = httpx.post(
                f"{mesh.url}/v2/models/digits/infer", json=seed_oip("d"), timeout=30
            )
            if response.status_code == 200:
                answered += 1
                served_after = left_the_pool
                assert response.json()["outputs"][0]["data"] == [8]
            else:
                failed += 1
            time.sleep(0.02)
        print(f"\nMLServer killed: {failed} requests failed, {answered} answered meanwhile")
        assert left_the_pool, "the pod never reported itself not ready"
        assert served_after, "digits was not served again"
        assert failed <= 2  # those in flight when MLServer died, and one waiting for it
        # the pod restarts MLServer (a new process) and rejoins the pool
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if next(p for p in pods(api) if p["name"] == victim)["healthy"]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the pod did not come back once MLServer was restarted")
        assert mlserver_pid(pod_pid) != killed


def failure(api: httpx.Client, name: str, path: str) -> dict[str, Any]:
    api.put(f"{ISVCS}/{name}", json=isvc(name, path)).raise_for_status()
    item = wait_ready(api, name, timeout=120)
    ready = item["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "ModelLoadFailed"), ready
    return dict(ready)


def test_a_load_that_raises_is_tried_on_the_other_pod_with_mlservers_message(
    mesh: launcher.Deployment,
) -> None:
    with httpx.Client(base_url=mesh.api_url, timeout=30) as api:
        ready = failure(api, "broken", "broken")
        assert "the weights are corrupt" in ready["message"]
        tried = {
            pod["name"]
            for pod in pods(api)
            for copy in pod["models"]
            if copy["model_id"].startswith("broken__") and copy["state"] == "FAILED"
        }
        assert tried == {"pod-0", "pod-1"}  # ModelMesh's retry on another pod
        response = httpx.post(f"{mesh.url}/v2/models/broken/infer", json=seed_oip("b"), timeout=30)
        assert response.status_code == 503 and "the weights are corrupt" in response.text
        api.delete(f"{ISVCS}/broken")


def test_a_class_that_cannot_be_imported_fails_the_load_naming_it(
    mesh: launcher.Deployment,
) -> None:
    with httpx.Client(base_url=mesh.api_url, timeout=30) as api:
        ready = failure(api, "not-importable", "not-importable")
        assert "nowhere_to_be_found" in ready["message"]
        api.delete(f"{ISVCS}/not-importable")


def test_a_load_past_model_loading_timeout_millis_fails(mesh: launcher.Deployment) -> None:
    with httpx.Client(base_url=mesh.api_url, timeout=30) as api:
        started = time.monotonic()
        ready = failure(api, "slow", "slow")
        assert f"took longer than {LOAD_TIMEOUT_MS} ms" in ready["message"]
        assert time.monotonic() - started < 60  # two pods tried, each bounded by the timeout
        api.delete(f"{ISVCS}/slow")


def mlserver_pid(pod_pid: int) -> int:
    """The MLServer process a pod started (its child, in a process group of its own)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pod_pid and int(fields[2]) == int(entry.name):  # ppid, pgrp
                return int(entry.name)
    raise AssertionError(f"pod {pod_pid} has no MLServer child")


async def test_a_port_taken_before_mlserver_binds_it_costs_one_start_then_new_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pods picking ports at once can pick the same one: MLServer then runs without its
    REST listener. That start fails (both ports must answer), and the next takes new ports."""
    from gateway.pod.mlserver import process

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    picks = iter([launcher.free_port(), busy])  # the first start's gRPC port, then REST

    def first_busy(host: str) -> int:
        return next(picks, None) or launcher.free_port(host)

    monkeypatch.setattr(process, "free_port", first_busy)
    ups: list[int] = []
    server = process.MLServerProcess(
        str(VENV / "bin" / "mlserver"),
        tmp_path / "models",
        {},
        work_dir=tmp_path,
        host="127.0.0.1",
        on_up=lambda: ups.append(server.http_port),
        on_down=lambda reason: None,
        max_message_bytes=1 << 20,
        start_timeout_s=10,
    )
    (tmp_path / "models").mkdir()
    assert server.http_port == busy
    running = asyncio.create_task(server.run())
    try:
        for _ in range(600):
            if ups:
                break
            await asyncio.sleep(0.1)
        assert ups and ups[0] != busy  # up, on a port of its own
        answer = httpx.get(f"http://127.0.0.1:{server.http_port}/v2/health/ready", timeout=5)
        assert answer.status_code == 200
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await server.close()
        taken.close()
    assert server.pid is None  # stopped with the task
