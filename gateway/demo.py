"""``mmgw demo``: the seed's walkthrough on one machine, in the foreground.

Trains the sample model into the local PVC folder, starts three runtime pods,
the gateway and Envoy on :8008, applies examples/sklearn-mnist.yaml, waits
until it is ready and prints what to try. Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import yaml

from gateway import launcher, samples

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sklearn-mnist.yaml"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices"


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run(data_dir: Path) -> int:
    data_dir = data_dir.resolve()
    ports = launcher.Ports()
    busy = [p for p in (ports.envoy, ports.envoy_admin, ports.api, ports.extproc, *ports.pods) if launcher.listening(p)]
    if busy:
        print(f"error: port(s) {', '.join(map(str, busy))} already in use; is another demo running?")
        return 1
    model = samples.train_mnist_svm(data_dir / "models" / samples.SAMPLE_FILE)
    print(f"sample model: {model}")
    signal.signal(signal.SIGTERM, _stop)
    deployment = launcher.Deployment(data_dir=data_dir, ports=ports, listen_host="0.0.0.0")
    try:
        with deployment:
            print(f"started Envoy :{ports.envoy}, gateway (API :{ports.api}), pods :{', :'.join(map(str, ports.pods))}")
            print(f"logs: {data_dir / 'logs'}")
            _apply_and_wait(deployment.api_url)
            _print_help(ports)
            _watch(deployment)
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        pass
    print("stopped every process")
    return 0


def _apply_and_wait(api_url: str, timeout: float = 120.0) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    name = document["metadata"]["name"]
    with httpx.Client(base_url=api_url, timeout=30) as client:
        client.put(f"{ISVCS}/{name}", json=document).raise_for_status()
        print(f"applied {EXAMPLE.relative_to(EXAMPLE.parent.parent)}; waiting for {name} to be ready ...")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = client.get(f"{ISVCS}/{name}").json()["status"]["conditions"][0]
            if ready["status"] == "True":
                print(f"{name} is ready")
                return
            if ready.get("reason") == "ModelLoadFailed":
                raise RuntimeError(f"{name} failed to load: {ready.get('message')}")
            time.sleep(0.2)
    raise TimeoutError(f"{name} was not ready after {timeout:g} s")


def _print_help(ports: launcher.Ports) -> None:
    pixels = ", ".join(f"{v:.1f}" for v in samples.sample_input())
    body = '{"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32", "contents": {"fp32_contents": [' + pixels + "]}}]}"
    print(
        f"""
Try it (in another terminal):

  curl -X POST -k "http://127.0.0.1:{ports.envoy}/v2/models/sklearn-mnist/infer" -d '{body}'

  .venv/bin/mmgw get isvc
  .venv/bin/mmgw get placement
  curl http://127.0.0.1:{ports.envoy}/v2/models/sklearn-mnist

Ctrl-C stops the demo and every process it started.
"""
    )


def _watch(deployment: launcher.Deployment) -> None:
    while True:
        for process in deployment.processes:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode}; see {process.log}")
        time.sleep(0.5)
