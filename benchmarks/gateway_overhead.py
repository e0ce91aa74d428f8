"""What the gateway costs: one pod, one model, every way in, and MLServer, side by side.

    direct      native gRPC straight to the pod (mm-model-id header)
    pod-rest    the OIP REST form straight to the pod's REST listener
    static      the seed's REST through Envoy + transcoder with a static route to that
                pod (no ext_proc, no Lua): the floor for any Envoy-based REST gateway
    gateway     the seed's REST (protobuf JSON) through the full gateway (Lua tells
                the form, ext_proc picks the pod, the transcoder makes it gRPC)
    oip         the OIP REST form ("data") through the full gateway, to the pod's
                REST listener
    split       the same, for an Experiment's public name split 50/50 between two
                InferenceServices of the same model (issue 15's target: at least 0.97x
                oip's throughput at c=16, p50 within 50 us at c=1)
    grpc        native gRPC through the full gateway, mm-vmodel-id header
    grpc-body   native gRPC through the full gateway, model named in the body only
    mls-rest    MLServer's own REST (mlserver + mlserver-sklearn, the same model file,
                its own virtualenv: benchmarks.mlserver_peer)
    mls-grpc    MLServer's own gRPC

Load comes from h2load (Debian's nghttp2-client), one thread, fixed duration,
at concurrency 1 and 16. REST runs over HTTP/1.1 as curl would; gRPC over
HTTP/2. Every path is checked to answer "8" before it is measured. Prints
throughput, p50 and p99, each path's throughput as a ratio of direct and of
static, and the OIP path against MLServer's REST. ``--no-mlserver`` leaves
MLServer out. Run: ``make bench`` (or ``python -m benchmarks.gateway_overhead``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import yaml

from benchmarks import mlserver_peer
from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway.tools import launcher, samples

ROOT = Path(__file__).resolve().parent.parent
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices"
EXPERIMENTS = "/apis/mlops.seldon.io/v1alpha1/namespaces/modelmesh-serving/experiments"
SPLIT = {
    "apiVersion": "mlops.seldon.io/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "mnist-ab"},
    "spec": {
        "candidates": [
            {"name": "sklearn-mnist", "weight": 50},
            {"name": "sklearn-mnist-b", "weight": 50},
        ]
    },
}


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    body: Path
    headers: tuple[str, ...]
    http1: bool
    expect: bytes = b'"8"'  # what the answer must contain
    envoy: str = "envoy"  # the Envoy process it goes through, for its CPU ("": none)


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int
    cpu_us: dict[str, float]  # CPU per request of each process, in microseconds


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of its live children (MLServer's inference workers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def h2load(
    target: Target,
    concurrency: int,
    seconds: float,
    warmup: float,
    work: Path,
    pids: dict[str, int],
) -> Result:
    log = Path(tempfile.mktemp(prefix=f"{target.name}-c{concurrency}-", suffix=".log", dir=work))
    args = [
        "h2load",
        "-t",
        "1",
        "-c",
        str(concurrency),
        "-m",
        "1",
        "-D",
        f"{seconds * 1000:.0f}ms",
        "--warm-up-time",
        f"{warmup * 1000:.0f}ms",
        "-d",
        str(target.body),
        f"--log-file={log}",
    ]
    if target.http1:
        args.append("--h1")
    for header in target.headers:
        args += ["-H", header]
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    out = subprocess.run(
        [*args, target.url], capture_output=True, text=True, timeout=seconds + warmup + 60
    ).stdout
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    # log lines (h2load appends, hence one file per run): start time, status, microseconds
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    log.unlink()
    latencies = sorted(int(r[2]) / 1000 for r in rows)
    failed = sum(1 for r in rows if r[1] != "200")
    if not latencies:
        raise RuntimeError(f"h2load made no request on {target.name}:\n{out}")
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    rps = len(latencies) / seconds
    # CPU was counted over warm-up and measurement alike; so are the requests here.
    requests = rps * (seconds + warmup)
    return Result(
        rps, q[49], q[98], failed, {name: 1e6 * sec / requests for name, sec in used.items()}
    )


def check(target: Target) -> None:
    """One request by curl/grpc before measuring: the path must answer 8."""
    body = target.body.read_bytes()
    headers = dict(h.split(": ", 1) for h in target.headers)
    if target.http1:
        response = httpx.post(target.url, content=body, headers=headers, timeout=30)
        ok = response.status_code == 200 and target.expect in response.content
        detail = response.text
    else:
        address = target.url.removeprefix("http://").split("/", 1)[0]
        metadata = tuple((k, v) for k, v in headers.items() if k.startswith("mm-"))
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                response_deserializer=v2.ModelInferResponse.FromString,
            )
            reply = call(body[5:], metadata=metadata, timeout=30)
        ok = list(reply.outputs[0].contents.int64_contents) == [8]
        detail = str(reply)
    if not ok:
        raise RuntimeError(f"{target.name} does not answer 8: {detail[:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs per path; the median is reported"
    )
    parser.add_argument(
        "--no-mlserver", action="store_true", help="leave MLServer (and its virtualenv) out"
    )
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client (make bench does)", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="mmgw-bench-"))
    samples.train_mnist_svm(work / "models" / samples.SAMPLE_FILE)
    ports = launcher.Ports.free(pods=1)
    static_port, static_admin = launcher.free_port(), launcher.free_port()
    # Envoy's JSON file log off: the figures are the request path's, as a deployment has it
    with launcher.Deployment(data_dir=work, ports=ports, envoy_access_log=False) as deployment:
        with httpx.Client(base_url=deployment.api_url, timeout=30) as api:
            example = yaml.safe_load((ROOT / "examples/sklearn-mnist.yaml").read_text())
            for name in ("sklearn-mnist", "sklearn-mnist-b"):
                example["metadata"]["name"] = name
                api.put(f"{ISVCS}/{name}", json=example).raise_for_status()
                deadline = time.monotonic() + 60
                while (
                    api.get(f"{ISVCS}/{name}").json()["status"]["conditions"][0]["status"] != "True"
                ):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name} did not become ready")
                    time.sleep(0.1)
            api.put(f"{EXPERIMENTS}/mnist-ab", json=SPLIT).raise_for_status()
        model_id = httpx.get(f"{deployment.url}/v2/models/sklearn-mnist", timeout=30).json()["name"]
        pod = ports.pod_addresses[0]
        static = launcher.Deployment(
            data_dir=work / "static",
            ports=launcher.Ports(static_port, static_admin, 0, 0, (), ()),
            envoy_access_log=False,
        )
        static.start_envoy(static_upstream=pod)
        static.wait_for_envoy()
        pids = {
            "pod": deployment.process("pod-0").popen.pid,
            "envoy": deployment.process("envoy").popen.pid,
            "static envoy": static.process("envoy").popen.pid,
            "gateway": deployment.process("gateway").popen.pid,
        }
        try:
            with contextlib.ExitStack() as stack:
                peer = None
                if not args.no_mlserver:
                    model = work / "models" / samples.SAMPLE_FILE
                    peer = stack.enter_context(mlserver_peer.running(model, work))
                    pids["mlserver"] = peer.pid
                return run(args, work, pids, deployment, static, pod, model_id, peer)
        finally:
            static.stop()


def run(
    args: argparse.Namespace,
    work: Path,
    pids: dict[str, int],
    deployment: launcher.Deployment,
    static: launcher.Deployment,
    pod: str,
    model_id: str,
    peer: mlserver_peer.MLServer | None,
) -> int:
    oip_body = work / "oip.json"
    oip_body.write_text(json.dumps(samples.sample_request(oip=True)))
    rest_body = work / "rest.json"
    rest_body.write_text(json.dumps(samples.sample_request()))
    request = v2.ModelInferRequest(model_name="sklearn-mnist")
    tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend(samples.sample_input())
    grpc_body = work / "grpc.bin"
    grpc_body.write_bytes(grpc_frame(request.SerializeToString()))
    request.model_name = mlserver_peer.MODEL_NAME
    mls_grpc_body = work / "mls-grpc.bin"
    mls_grpc_body.write_bytes(grpc_frame(request.SerializeToString()))
    pod_rest = deployment.ports.pod_rest_addresses[0]
    grpc_headers = ("content-type: application/grpc", "te: trailers")
    infer = "/v2/models/sklearn-mnist/infer"
    method = "/inference.GRPCInferenceService/ModelInfer"
    targets = [
        Target(
            "direct",
            f"http://{pod}{method}",
            grpc_body,
            (*grpc_headers, f"mm-model-id: {model_id}"),
            False,
            envoy="",
        ),
        Target(
            "pod-rest",
            f"http://{pod_rest}{infer}",
            oip_body,
            ("content-type: application/json", f"mm-model-id: {model_id}"),
            True,
            expect=b'"data":[8]',
            envoy="",
        ),
        Target(
            "static",
            f"{static.url}{infer}",
            rest_body,
            ("content-type: application/json", f"mm-model-id: {model_id}"),
            True,
            envoy="static envoy",
        ),
        Target(
            "gateway",
            f"{deployment.url}{infer}",
            rest_body,
            ("content-type: application/json",),
            True,
        ),
        Target(
            "oip",
            f"{deployment.url}{infer}",
            oip_body,
            ("content-type: application/json",),
            True,
            expect=b'"data":[8]',
        ),
        Target(
            "split",
            f"{deployment.url}/v2/models/mnist-ab/infer",
            oip_body,
            ("content-type: application/json",),
            True,
            expect=b'"data":[8]',
        ),
        Target(
            "grpc",
            f"{deployment.url}{method}",
            grpc_body,
            (*grpc_headers, "mm-vmodel-id: sklearn-mnist"),
            False,
        ),
        Target("grpc-body", f"{deployment.url}{method}", grpc_body, grpc_headers, False),
    ]
    if peer is not None:
        targets += [
            Target(
                "mls-rest",
                peer.infer_url,
                oip_body,
                ("content-type: application/json",),
                True,
                expect=b'"data":[8]',
                envoy="",
            ),
            Target("mls-grpc", peer.grpc_url, mls_grpc_body, grpc_headers, False, envoy=""),
        ]
    for target in targets:
        check(target)
    if peer is not None:
        peer.pause()

    print(
        f"gateway overhead: 1 pod, sklearn-mnist (SVC), {args.rounds} x {args.seconds:g} s per run, "
        f"h2load -t1, median of rounds"
    )
    for concurrency in (1, 16):
        results: dict[str, list[Result]] = {p.name: [] for p in targets}
        for _ in range(args.rounds):
            for target in targets:  # interleaved, so drift hits every target alike
                if peer is not None:
                    (peer.resume if target.name.startswith("mls-") else peer.pause)()
                results[target.name].append(
                    h2load(target, concurrency, args.seconds, args.warmup, work, pids)
                )
        median = {name: _median(runs) for name, runs in results.items()}
        print(f"\nconcurrency {concurrency}")
        print(
            f"{'path':<10} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'x direct':>8} {'x static':>8} {'failed':>6}"
            f"   CPU us/request: {'pod':>5} {'envoy':>6} {'gateway':>8} {'mlserver':>9}"
        )
        for target in targets:
            r = median[target.name]
            envoy = r.cpu_us[target.envoy] if target.envoy else 0.0
            peer_run = target.name.startswith("mls-")
            mlserver = r.cpu_us.get("mlserver", 0.0) if peer_run else 0.0
            pod_cpu = 0.0 if peer_run else r.cpu_us["pod"]
            print(
                f"{target.name:<10} {r.rps:7.0f} {r.p50_ms:7.3f} {r.p99_ms:7.3f} "
                f"{r.rps / median['direct'].rps:8.2f} {r.rps / median['static'].rps:8.2f} "
                f"{r.failed:6d}   {'':16}{pod_cpu:5.0f} {envoy:6.0f} {r.cpu_us['gateway']:8.0f} "
                f"{mlserver:9.0f}"
            )
        added = median["gateway"].p50_ms - median["static"].p50_ms
        print(
            f"seed REST (gateway) vs static: {median['gateway'].rps / median['static'].rps:.2f}x "
            f"throughput, {added * 1000:+.0f} us p50"
        )
        split, oip = median["split"], median["oip"]
        print(
            f"OIP REST through a 50/50 Experiment vs the plain name: "
            f"{split.rps / oip.rps:.2f}x throughput, p50 {1000 * (split.p50_ms - oip.p50_ms):+.0f} us"
        )
        if peer is not None:
            oip, mls = median["oip"], median["mls-rest"]
            print(
                f"OIP REST through :8008 vs MLServer REST: {oip.rps / mls.rps:.2f}x throughput, "
                f"p50 {oip.p50_ms - mls.p50_ms:+.3f} ms"
            )
    return 0


def _median(runs: list[Result]) -> Result:
    return Result(
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.failed for r in runs),
        {name: statistics.median(r.cpu_us[name] for r in runs) for name in runs[0].cpu_us},
    )


if __name__ == "__main__":
    raise SystemExit(main())
