"""Envoy with its ext_proc service unreachable: a clear 503 / UNAVAILABLE, never a pod."""

from __future__ import annotations

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
