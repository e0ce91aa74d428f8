"""The management API's bearer token: required off loopback, checked on every request but probes and metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from gateway.tools import cli, launcher

TOKEN = "s3cret-token"
ROOT = Path(__file__).resolve().parents[2]
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway"])
def test_settings_refuse_a_non_loopback_api_without_a_token(host: str) -> None:
    with pytest.raises(
        ValidationError, match="not a loopback address, without a token.*MMGW_API_TOKEN"
    ):
        GatewaySettings(api_host=host)
    with pytest.raises(ValidationError, match="MMGW_API_TOKEN"):
        GatewaySettings(api_host=host, api_token="")  # an empty MMGW_API_TOKEN is no token
    assert GatewaySettings(api_host=host, api_token=TOKEN).api_token.get_secret_value() == TOKEN


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    assert GatewaySettings(api_host=host).api_token is None


def test_the_gateway_refuses_to_start_on_0_0_0_0_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MMGW_API_TOKEN"}
    for args, extra in ((["--api-host", "0.0.0.0"], {}), ([], {"MMGW_API_HOST": "0.0.0.0"})):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.tools.cli",
                "serve",
                "--data-dir",
                str(tmp_path),
                *args,
            ],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("error: the management API would listen on 0.0.0.0"), (
            result.stderr
        )
        assert "set MMGW_API_TOKEN" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with a token (no pod needed: nothing here loads a model)."""
    data = tmp_path_factory.mktemp("token")
    deployment = launcher.Deployment(
        data_dir=data, ports=launcher.Ports.free(pods=1), gateway_env={"MMGW_API_TOKEN": TOKEN}
    )
    try:
        deployment.start_gateway()
        deployment._wait(
            "gateway",
            lambda: launcher.listening(deployment.ports.api),  # noqa: SLF001
            time.monotonic() + 60,
        )
        yield deployment.api_url
    finally:
        deployment.stop()


def test_requests_without_the_token_get_401_as_a_kubernetes_status(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=30) as api:
        for headers, problem in (
            ({}, "needs a bearer token"),
            ({"Authorization": "Bearer wrong"}, "not valid"),
            ({"Authorization": TOKEN}, "not valid"),
        ):  # no "Bearer " scheme
            for method, path in (
                ("GET", ISVCS),
                ("PUT", f"{ISVCS}/x"),
                ("DELETE", f"{ISVCS}/x"),
                ("GET", "/v1/placement"),
                ("GET", "/docs"),
                ("GET", "/openapi.json"),
            ):
                response = api.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                body = response.json()
                assert {k: body[k] for k in ("kind", "apiVersion", "status", "reason", "code")} == {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "Unauthorized",
                    "code": 401,
                }
                assert problem in body["message"] and "MMGW_TOKEN" in body["message"]
                assert TOKEN not in body["message"]


def test_probes_and_metrics_need_no_token_and_the_rest_accepts_it(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=30) as api:
        assert api.get("/healthz").json() == {"status": "ok"}
        assert "mmgw_requests_total" in api.get("/metrics").text
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert api.get(ISVCS, headers=auth).json()["items"] == []
        assert api.get("/v1/placement", headers=auth).status_code == 200


def test_the_cli_sends_the_token(
    gateway: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("MMGW_TOKEN", raising=False)
    assert cli.main(["get", "isvc", "--server", gateway]) == 1
    assert capsys.readouterr().err.startswith(
        "Error from server (Unauthorized): the management API needs a bearer"
    )
    assert cli.main(["get", "isvc", "--server", gateway, "--token", "wrong"]) == 1
    assert "(Unauthorized): the bearer token is not valid" in capsys.readouterr().err

    sample = tmp_path / "isvc.yaml"
    sample.write_text((ROOT / "examples" / "sklearn-mnist.yaml").read_text())
    assert cli.main(["apply", "-f", str(sample), "--server", gateway, "--token", TOKEN]) == 0
    assert capsys.readouterr().out == "inferenceservice.serving.kserve.io/sklearn-mnist created\n"
    monkeypatch.setenv("MMGW_TOKEN", TOKEN)
    assert cli.main(["get", "isvc", "sklearn-mnist", "--server", gateway, "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["name"] == "sklearn-mnist"
    assert cli.main(["delete", "isvc", "sklearn-mnist", "--server", gateway]) == 0
    assert capsys.readouterr().out == 'inferenceservice.serving.kserve.io "sklearn-mnist" deleted\n'
