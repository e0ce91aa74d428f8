"""The commands, ports, environment and paths docker-compose.yml gives the gateway and a pod
are ones the program accepts.

The gateway, a runtime pod and Envoy start here with exactly the compose
file's settings, addresses rewritten to loopback and ports to free ones, and
answer the seed's request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from gateway.tools import envoy_config, launcher, samples
from gateway.tools.launcher import EtcdServer

ROOT = Path(__file__).resolve().parents[2]
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices"
TOKEN = "compose-token"


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def test_the_compose_settings_answer_the_seed_request(tmp_path: Path) -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    models = tmp_path / "models"
    samples.train_mnist_svm(models / samples.SAMPLE_FILE)
    api, extproc, envoy, admin, pod = (launcher.free_port() for _ in range(5))
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(tmp_path / f"{name}.log", "wb")
        processes.append(
            subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        )

    with EtcdServer(tmp_path / "etcd") as etcd:
        try:
            gateway = services["gateway"]
            env = {
                k: str(v).replace("etcd://etcd:2379", etcd.url).replace("0.0.0.0", "127.0.0.1")
                for k, v in gateway["environment"].items()
            }
            assert json.loads(env["MMGW_PVCS"]) == {"my-models-pvc": "/models"}
            env.update(
                MMGW_API_TOKEN=TOKEN,
                MMGW_API_PORT=str(api),
                MMGW_EXTPROC_PORT=str(extproc),
                MMGW_DATA_DIR=str(tmp_path / "gateway"),
                MMGW_PVCS=json.dumps({"my-models-pvc": str(models)}),
            )
            start("gateway", [sys.executable, "-m", "gateway.tools.cli", *gateway["command"]], env)

            args = _replace(services["pod-1"]["command"], "--host", "127.0.0.1")
            args = _replace(_replace(args, "--port", str(pod)), "--store", etcd.url)
            start(
                "pod-1",
                [
                    sys.executable,
                    "-m",
                    "gateway.tools.cli",
                    *args,
                    "--advertise",
                    f"127.0.0.1:{pod}",
                ],
            )

            config = envoy_config.render(
                envoy_config.EnvoyPorts(
                    listen_host="127.0.0.1",
                    listen_port=envoy,
                    admin_port=admin,
                    extproc_port=extproc,
                    pods=(f"127.0.0.1:{pod}",),
                )
            )
            path = envoy_config.write(config, tmp_path / "envoy.yaml")
            start("envoy", [str(launcher.envoy_binary()), "-c", str(path), "--disable-hot-restart"])

            deadline = time.monotonic() + 60
            with httpx.Client(
                base_url=f"http://127.0.0.1:{api}",
                timeout=30,
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as client:
                while not (
                    launcher.listening(api)
                    and launcher.listening(envoy)
                    and any(p["healthy"] for p in client.get("/v1/placement").json()["pods"])
                ):
                    assert all(p.poll() is None for p in processes), "a process exited; see its log"
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
                apply = _replace(
                    services["apply"]["command"], "--server", f"http://127.0.0.1:{api}"
                )
                apply = _replace(apply, "-f", str(ROOT / "examples" / "sklearn-mnist.yaml"))
                result = subprocess.run(
                    [sys.executable, "-m", "gateway.tools.cli", *apply],
                    env={**os.environ, "MMGW_TOKEN": TOKEN},
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert (
                    result.stdout == "inferenceservice.serving.kserve.io/sklearn-mnist created\n"
                ), result.stderr

            body = {
                "inputs": [
                    {
                        "name": "predict",
                        "shape": [1, 64],
                        "datatype": "FP32",
                        "contents": {"fp32_contents": samples.sample_input()},
                    }
                ]
            }
            answer = httpx.post(
                f"http://127.0.0.1:{envoy}/v2/models/sklearn-mnist/infer", json=body, timeout=60
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"][0]["contents"]["int64Contents"] == ["8"]
        finally:
            for process in reversed(processes):
                launcher._stop(process, 15, 10.0)  # noqa: SLF001 - SIGTERM, then SIGKILL after 10 s
