"""The same model served three ways, side by side: our sklearn pod through :8008, a pod backed by
a real MLServer through :8008, and that MLServer directly.

    mmgw-rest       the OIP REST form through :8008 to our own pod (sklearn-mnist)
    mesh-mls-rest   the same through :8008 to the MLServer-backed pod (mnist-mls: Envoy's
                    filter name_the_model writes the concrete id into the path)
    mls-rest        that MLServer's own REST port, directly, naming the concrete id
    mmgw-grpc       native gRPC through :8008 to our pod (mm-vmodel-id header)
    mesh-mls-grpc   the same to the MLServer-backed pod (the filter rewrites field 1)
    mls-grpc        that MLServer's own gRPC port, directly

The MLServer-backed pod is a pod of istio/samples/mlserver-runtime.yaml's ServingRuntime,
started by the adapter from MLServer's virtualenv (`make mlserver`), with MLServer's defaults
(one inference worker process). Load from h2load as in benchmarks.gateway_overhead (whose
measuring code this reuses): one thread, fixed duration, c=1 and c=16, every path checked
to answer 8 first. Prints each path and the ratios: the mesh in front of MLServer against
MLServer alone, and our pod against MLServer, both behind :8008.
Run: ``make bench`` (or ``python -m benchmarks.mlserver_runtime``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from benchmarks.gateway_overhead import Result, Target, _median, check, grpc_frame, h2load
from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway.tools import launcher, samples

ROOT = Path(__file__).resolve().parent.parent
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices"
SRS = "/apis/serving.kserve.io/v1alpha1/namespaces/modelmesh-serving/servingruntimes"
RUNTIME = ROOT / "istio" / "samples" / "mlserver-runtime.yaml"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
JSON = ("content-type: application/json",)


def isvc(name: str, runtime: str | None) -> dict[str, object]:
    document = yaml.safe_load((ROOT / "examples" / "sklearn-mnist.yaml").read_text())
    document["metadata"]["name"] = name
    if runtime is not None:
        document["spec"]["predictor"]["model"]["runtime"] = runtime
    return dict(document)


def wait_ready(api: httpx.Client, name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while api.get(f"{ISVCS}/{name}").json()["status"]["conditions"][0]["status"] != "True":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not become ready")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2, help="runs per path; the median")
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client (make bench does)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="mmgw-bench-mlserver-"))
    samples.train_mnist_svm(work / "models" / samples.SAMPLE_FILE)
    runtime = yaml.safe_load(RUNTIME.read_text())
    name = runtime["metadata"]["name"]
    deployment = launcher.Deployment(
        data_dir=work,
        ports=launcher.Ports.free(pods=2),
        pod_args={0: ["--runtime-name", "mlserver-1.x"], 1: ["--runtime-name", name]},
        later_pods=frozenset({1}),
        envoy_access_log=False,
    )
    with deployment, httpx.Client(base_url=deployment.api_url, timeout=30) as api:
        api.put(f"{SRS}/{name}", json=runtime).raise_for_status()
        api.put(f"{ISVCS}/sklearn-mnist", json=isvc("sklearn-mnist", None)).raise_for_status()
        api.put(f"{ISVCS}/mnist-mls", json=isvc("mnist-mls", name)).raise_for_status()
        wait_ready(api, "sklearn-mnist")
        wait_ready(api, "mnist-mls")
        placement = api.get("/v1/placement").json()
        mls_id = next(m for m in placement["models"] if m.startswith("mnist-mls__"))
        (mls_pod,) = (p for p in placement["pods"] if p["name"] == "pod-1")
        pids = {
            "pod": deployment.process("pod-0").popen.pid,
            "adapter": deployment.process("pod-1").popen.pid,  # and MLServer, its child
            "envoy": deployment.process("envoy").popen.pid,
            "gateway": deployment.process("gateway").popen.pid,
        }
        return run(args, work, deployment, mls_id, mls_pod, pids)


def run(
    args: argparse.Namespace,
    work: Path,
    deployment: launcher.Deployment,
    mls_id: str,
    mls_pod: dict[str, str],
    pids: dict[str, int],
) -> int:
    oip = work / "oip.json"
    oip.write_text(json.dumps(samples.sample_request(oip=True)))
    request = v2.ModelInferRequest(model_name=mls_id)
    tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend(samples.sample_input())
    direct_grpc = work / "direct.bin"
    direct_grpc.write_bytes(grpc_frame(request.SerializeToString()))
    request.model_name = "(named by the header)"
    mesh_grpc = work / "mesh.bin"
    mesh_grpc.write_bytes(grpc_frame(request.SerializeToString()))
    answer = b'"data":[8]'
    targets = [
        Target(
            "mmgw-rest", f"{deployment.url}/v2/models/sklearn-mnist/infer", oip, JSON, True, answer
        ),
        Target(
            "mesh-mls-rest", f"{deployment.url}/v2/models/mnist-mls/infer", oip, JSON, True, answer
        ),
        Target(
            "mls-rest",
            f"http://{mls_pod['rest_address']}/v2/models/{mls_id}/infer",
            oip,
            JSON,
            True,
            answer,
            envoy="",
        ),
        Target(
            "mmgw-grpc",
            f"{deployment.url}{METHOD}",
            mesh_grpc,
            (*GRPC_HEADERS, "mm-vmodel-id: sklearn-mnist"),
            False,
        ),
        Target(
            "mesh-mls-grpc",
            f"{deployment.url}{METHOD}",
            mesh_grpc,
            (*GRPC_HEADERS, "mm-vmodel-id: mnist-mls"),
            False,
        ),
        Target(
            "mls-grpc",
            f"http://{mls_pod['data_address']}{METHOD}",
            direct_grpc,
            GRPC_HEADERS,
            False,
            envoy="",
        ),
    ]
    for target in targets:
        check(target)
    print(
        f"MLServer-backed pods: sklearn-mnist (SVC) on our pod and on MLServer 1.7.1, "
        f"{args.rounds} x {args.seconds:g} s per run, h2load -t1, median of rounds"
    )
    for concurrency in (1, 16):
        results: dict[str, list[Result]] = {t.name: [] for t in targets}
        for _ in range(args.rounds):
            for target in targets:  # interleaved: drift hits every path alike
                results[target.name].append(
                    h2load(target, concurrency, args.seconds, args.warmup, work, pids)
                )
        median = {name: _median(runs) for name, runs in results.items()}
        print(f"\nconcurrency {concurrency}")
        print(
            f"{'path':<14} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}"
            f"   CPU us/request: {'pod':>5} {'mlserver':>9} {'envoy':>6} {'gateway':>8}"
        )
        for target in targets:
            r = median[target.name]
            envoy = r.cpu_us[target.envoy] if target.envoy else 0.0
            print(
                f"{target.name:<14} {r.rps:7.0f} {r.p50_ms:7.3f} {r.p99_ms:7.3f} {r.failed:6d}   "
                f"{'':16}{r.cpu_us['pod']:5.0f} {r.cpu_us['adapter']:9.0f} {envoy:6.0f} "
                f"{r.cpu_us['gateway']:8.0f}"
            )
        for form in ("rest", "grpc"):
            mesh, alone, ours = (median[f"{p}-{form}"] for p in ("mesh-mls", "mls", "mmgw"))
            print(
                f"{form}: MLServer through :8008 vs MLServer alone {mesh.rps / alone.rps:.2f}x "
                f"throughput, p50 {1000 * (mesh.p50_ms - alone.p50_ms):+.0f} us; our pod vs "
                f"MLServer, both through :8008: {ours.rps / mesh.rps:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
