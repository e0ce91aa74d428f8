"""Does etcd behind the gateway cost request throughput? Embedded store vs etcd, side by side.

Two deployments, each Envoy + gateway + 1 pod with sklearn-mnist loaded: one on
the embedded store, one on a real etcd (Debian's etcd-server on loopback). The
ext_proc answers from its in-memory table in both; etcd is only on the control
path. h2load drives REST through each full gateway path, rounds interleaved so
drift hits both alike; prints throughput, p50 and p99 and the ratio etcd /
embedded at concurrency 1 and 16 (target: within 5%).
Run: ``python -m benchmarks.etcd_store`` (``make bench`` runs it too).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from benchmarks.gateway_overhead import ISVCS, ROOT, Result, Target, _median, check, h2load
from gateway.tools import launcher, samples

INFER = "/v2/models/sklearn-mnist/infer"


def deploy(work: Path, store: str) -> launcher.Deployment:
    samples.train_mnist_svm(work / "models" / samples.SAMPLE_FILE)
    deployment = launcher.Deployment(data_dir=work, ports=launcher.Ports.free(pods=1), store=store)
    deployment.start()
    with httpx.Client(base_url=deployment.api_url, timeout=30) as api:
        api.put(
            f"{ISVCS}/sklearn-mnist",
            json=yaml.safe_load((ROOT / "examples/sklearn-mnist.yaml").read_text()),
        )
    return deployment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs per store; the median is reported"
    )
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client (make bench does)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="mmgw-bench-etcd-"))
    body = work / "rest.json"
    body.write_text(json.dumps(samples.sample_request()))
    with launcher.EtcdServer(work / "etcd") as etcd:
        embedded = deploy(work / "embedded", "embedded")
        on_etcd = deploy(work / "on-etcd", etcd.url)
        try:
            targets = {
                name: Target(
                    name, f"{d.url}{INFER}", body, ("content-type: application/json",), True
                )
                for name, d in (("embedded", embedded), ("etcd", on_etcd))
            }
            pids = {
                name: {
                    "pod": d.process("pod-0").popen.pid,
                    "gateway": d.process("gateway").popen.pid,
                }
                for name, d in (("embedded", embedded), ("etcd", on_etcd))
            }
            for target in targets.values():
                _wait_answers(target)
            print(
                f"gateway path, embedded store vs etcd: 1 pod each, sklearn-mnist, "
                f"{args.rounds} x {args.seconds:g} s per run, h2load -t1, median of rounds"
            )
            for concurrency in (1, 16):
                runs: dict[str, list[Result]] = {name: [] for name in targets}
                for _ in range(args.rounds):
                    for name, target in targets.items():
                        runs[name].append(
                            h2load(target, concurrency, args.seconds, args.warmup, work, pids[name])
                        )
                median = {name: _median(r) for name, r in runs.items()}
                print(f"\nconcurrency {concurrency}")
                print(
                    f"{'store':<9} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}  gateway CPU us/request"
                )
                for name, r in median.items():
                    print(
                        f"{name:<9} {r.rps:7.0f} {r.p50_ms:7.3f} {r.p99_ms:7.3f} {r.failed:6d}  "
                        f"{r.cpu_us['gateway']:8.0f}"
                    )
                ratio = median["etcd"].rps / median["embedded"].rps
                spread = statistics.pstdev(r.rps for r in runs["embedded"]) / median["embedded"].rps
                print(
                    f"etcd / embedded: {ratio:.3f}x throughput (embedded's own run-to-run spread "
                    f"{100 * spread:.1f}%; target: within 5%)"
                )
        finally:
            on_etcd.stop()
            embedded.stop()
    return 0


def _wait_answers(target: Target, attempts: int = 600) -> None:
    """The model loads in the background after apply; wait until the path answers 8."""
    for _ in range(attempts):
        try:
            check(target, b'"8"')
            return
        except (RuntimeError, httpx.HTTPError):
            time.sleep(0.1)
    check(target, b'"8"')


if __name__ == "__main__":
    raise SystemExit(main())
