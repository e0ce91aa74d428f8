"""Envoy and the ext_proc service: its health as Envoy checks it, and a clear 503 / UNAVAILABLE
(never a pod) when it is unreachable."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.tools import launcher

from .conftest import seed_body


@pytest.fixture(scope="module")
def envoy_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.Deployment]:
    deployment = launcher.Deployment(
        data_dir=tmp_path_factory.mktemp("envoy-alone"), ports=launcher.Ports.free(pods=0)
    )
    try:
        deployment.start_envoy()  # ports.extproc is free: nothing listens there
        deployment.wait_for_envoy()
        yield deployment
    finally:
        deployment.stop()


def test_rest_gets_503_saying_why(envoy_alone: launcher.Deployment) -> None:
    response = httpx.post(
        f"{envoy_alone.url}/v2/models/sklearn-mnist/infer", json=seed_body(), timeout=30
    )
    assert response.status_code == 503
    assert response.json() == {
        "code": 14,
        "message": "the gateway's routing service (ext_proc) is unavailable",
    }


def test_grpc_gets_unavailable_saying_why(envoy_alone: launcher.Deployment) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{envoy_alone.ports.envoy}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ServerLive(v2.ServerLiveRequest(), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "ext_proc" in info.value.details()


def ext_proc_health(deployment: launcher.Deployment) -> str:
    """The ext_proc host's health flags as Envoy's admin /clusters reports them."""
    clusters = httpx.get(f"http://127.0.0.1:{deployment.ports.envoy_admin}/clusters", timeout=5)
    host = f"127.0.0.1:{deployment.ports.extproc}"  # where the launcher runs the gateway
    prefix = f"ext_proc::{host}::health_flags::"
    (line,) = [line for line in clusters.text.splitlines() if line.startswith(prefix)]
    return line.removeprefix(prefix)


def test_envoy_health_checks_the_gateway_over_grpc(deployment: launcher.Deployment) -> None:
    deadline = time.monotonic() + 10  # the first check runs within an interval (2 s)
    while ext_proc_health(deployment) != "healthy":
        assert time.monotonic() < deadline, ext_proc_health(deployment)
        time.sleep(0.2)


def test_envoy_marks_an_absent_gateway_failed_by_its_health_check(
    envoy_alone: launcher.Deployment,
) -> None:
    deadline = time.monotonic() + 10
    while "/failed_active_hc" not in ext_proc_health(envoy_alone):
        assert time.monotonic() < deadline, ext_proc_health(envoy_alone)
        time.sleep(0.2)
