"""``mmgw demo``: the seed's walkthrough on one machine, in the foreground.

Trains the sample model into the local PVC folder, starts the runtime pods,
the gateway and Envoy (on :8008 unless told otherwise), applies
examples/sklearn-mnist.yaml, waits until it is ready and prints what to try.
Ctrl-C or SIGTERM stops every process it started and exits with status 0.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from gateway.tools import launcher, samples

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sklearn-mnist.yaml"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices"
LISTEN_HOST = "0.0.0.0"  # Envoy's listener; every other process binds 127.0.0.1

say = functools.partial(print, flush=True)  # stdout may be a pipe: each line as it happens


def _complain(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


class _Stop(BaseException):
    """SIGTERM or SIGINT arrived: stop every process and exit 0.

    A BaseException, as KeyboardInterrupt, so that no ``except Exception`` on the
    way swallows it.
    """


def _on_signal(signum: int, frame: object) -> None:
    # The first signal starts an orderly stop; later ones must not cut it short
    # (each child gets SIGTERM, then SIGKILL after 10 s, so it is bounded).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_ports(ports: launcher.Ports) -> str | None:
    """Why the demo cannot run on ``ports`` (repeated or taken ports), or None."""
    named = [
        ("Envoy", ports.envoy, LISTEN_HOST),
        ("Envoy admin", ports.envoy_admin, "127.0.0.1"),
        ("API", ports.api, "127.0.0.1"),
        ("ext_proc", ports.extproc, "127.0.0.1"),
        *((f"pod {i}", port, "127.0.0.1") for i, port in enumerate(ports.pods)),
        *((f"pod {i} REST", port, "127.0.0.1") for i, port in enumerate(ports.pod_rest)),
    ]
    seen: dict[int, str] = {}
    for name, port, _ in named:
        if port in seen:
            return f"port {port} is given twice ({seen[port]}, {name}): each process needs its own"
        seen[port] = name
    taken = [f"{port} ({name})" for name, port, host in named if launcher.port_taken(port, host)]
    if taken:
        return (
            f"port(s) {', '.join(taken)} already in use; another demo running? "
            "(mmgw demo --help shows how to choose ports)"
        )
    return None


def run(data_dir: Path, ports: launcher.Ports | None = None, *, store: str = "embedded") -> int:
    ports = ports or launcher.Ports()
    data_dir = data_dir.resolve()
    with _stop_on_signals():
        try:
            return _run(data_dir, ports, store)
        except _Stop:
            say("stopped")  # a signal before anything was started
            return 0


def _run(data_dir: Path, ports: launcher.Ports, store: str) -> int:
    problem = check_ports(ports)
    if problem:
        _complain(problem)
        return 1
    model = samples.train_mnist_svm(data_dir / "models" / samples.SAMPLE_FILE)
    say(f"sample model: {model}")
    deployment = launcher.Deployment(
        data_dir=data_dir, ports=ports, listen_host=LISTEN_HOST, store=store
    )
    say(f"starting {len(ports.pods)} runtime pods, the gateway and Envoy ...")
    try:
        with deployment:
            pods = ", :".join(map(str, ports.pods))
            say(
                f"started Envoy :{ports.envoy}, gateway (API :{ports.api}, store {store}), pods :{pods}"
            )
            say(
                f"logs: {data_dir / 'logs'} (Envoy's access log: access.log, a JSON line per request)"
            )
            _apply_and_wait(deployment.api_url)
            _print_help(ports)
            _watch(deployment)
    except _Stop as stop:
        say(f"{stop}: stopped every process")
        return 0
    except (TimeoutError, RuntimeError, httpx.HTTPError) as exc:
        _complain(f"{exc}; stopped every process")
        return 1
    return 0  # unreachable: _watch returns only by raising


def _apply_and_wait(api_url: str, timeout: float = 120.0) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    name = document["metadata"]["name"]
    with httpx.Client(base_url=api_url, timeout=30) as client:
        client.put(f"{ISVCS}/{name}", json=document).raise_for_status()
        example = EXAMPLE.relative_to(EXAMPLE.parent.parent)
        say(f"applied {example}; waiting for {name} to be ready ...")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = client.get(f"{ISVCS}/{name}").json()["status"]["conditions"][0]
            if ready["status"] == "True":
                say(f"{name} is ready")
                return
            if ready.get("reason") == "ModelLoadFailed":
                raise RuntimeError(f"{name} failed to load: {ready.get('message')}")
            time.sleep(0.2)
    raise TimeoutError(f"{name} was not ready after {timeout:g} s")


def curl_command(envoy_port: int, *, oip: bool = False) -> str:
    """The seed's curl (protobuf JSON), or with ``oip`` the KServe docs' (the Open Inference
    Protocol's "data"), pointed at this demo's Envoy."""
    body = json.dumps(samples.sample_request(oip=oip))
    url = f"http://127.0.0.1:{envoy_port}/v2/models/sklearn-mnist/infer"
    return f"""curl -X POST -k "{url}" -d '{body}'"""


def _print_help(ports: launcher.Ports) -> None:
    server = "" if ports.api == launcher.Ports().api else f" -s http://127.0.0.1:{ports.api}"
    say(
        f"""
Try it (in another terminal), the seed's request and the Open Inference Protocol's:

  {curl_command(ports.envoy)}

  {curl_command(ports.envoy, oip=True)}

  .venv/bin/mmgw get isvc{server}
  .venv/bin/mmgw describe isvc sklearn-mnist{server}
  .venv/bin/mmgw get placement{server}
  curl http://127.0.0.1:{ports.envoy}/v2/models/sklearn-mnist

The placement, live: http://127.0.0.1:{ports.api}/   Metrics: http://127.0.0.1:{ports.api}/metrics

Ctrl-C stops the demo and every process it started.
"""
    )


def _watch(deployment: launcher.Deployment) -> None:
    """Until a signal: a pod that dies is started again, as Kubernetes restarts a pod's
    container (its models load again on demand, on it or elsewhere); Envoy or the gateway
    dying ends the demo."""
    while True:
        for process in list(deployment.processes):
            if process.popen.poll() is None:
                continue
            code = process.popen.returncode
            index = _pod_index(process.name, deployment)
            if index is None:
                raise RuntimeError(f"{process.name} exited with {code}; see {process.log}")
            say(f"{process.name} exited with {code} (see {process.log}); starting it again")
            deployment.processes.remove(process)
            deployment.start_pod(index)
        time.sleep(0.5)


def _pod_index(name: str, deployment: launcher.Deployment) -> int | None:
    """The index of the deployment's pod called ``name`` ("pod-<i>"), None for another process."""
    prefix, _, number = name.partition("-")
    if prefix == "pod" and number.isdigit() and int(number) < len(deployment.ports.pods):
        return int(number)
    return None
