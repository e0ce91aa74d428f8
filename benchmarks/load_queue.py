"""Traffic during loads: a loaded model's latency while its pod loads other models.

One pod; model M (synthetic, 1 MiB) loaded; room beside it for four 64 MiB
synthetic models that take 1 s to load (the pod really allocates and touches
their 64 MiB, then waits). Eight such models are registered: four fill the pod,
four wait Standby. Sequential REST requests to M through Envoy are timed
(perf_counter around each POST), in rounds that alternate between

    idle      nothing else happens: the pod only serves M;
    loading   a background client requests the eight models in turn, so every
              request misses (eight models cycling through four places, least
              recently used evicted) and the pod is unloading 64 MiB and loading
              64 MiB, one after another, for the whole round.

Measuring starts once the first background load is under way; the share of
each loading round's time that the pod spent in a background request (eviction,
load, answer) is printed with the figures, as are the loads and evictions. The
rounds alternate so that drift hits both alike. Figures are printed, nothing is
asserted. Run: ``python -m benchmarks.load_queue`` (under a minute on two cores).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.scale import ISVCS, MiB, isvc, percentile, pods_healthy, wait_until, write_model
from gateway.tools import launcher
from gateway.tools.launcher import metric

BODY = {
    "inputs": [
        {
            "name": "x",
            "shape": [1, 3],
            "datatype": "FP64",
            "contents": {"fp64_contents": [1.0, 2.0, 3.0]},
        }
    ]
}


class Loader:
    """Requests the background models in turn on a thread; records each request's interval."""

    def __init__(self, url: str, names: list[str], start: int) -> None:
        self.url, self.names, self.next = url, names, start
        self.intervals: list[tuple[float, float]] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)  # the request in progress finishes first (a 1 s load)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                name = self.names[self.next % len(self.names)]
                self.next += 1
                started = time.perf_counter()
                response = client.post(f"/v2/models/{name}/infer", json=BODY)
                self.intervals.append((started, time.perf_counter()))
                if response.status_code != 200:
                    self.failed.append(f"{name}: {response.status_code} {response.text[:200]}")

    def busy_share(self, start: float, end: float) -> float:
        """The share of [start, end] covered by background requests."""
        covered = sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.intervals)
        return covered / (end - start)


def measure(rest: httpx.Client, model: str, requests: int) -> tuple[list[float], float, float]:
    latencies = []
    started = time.perf_counter()
    for _ in range(requests):
        begin = time.perf_counter()
        response = rest.post(f"/v2/models/{model}/infer", json=BODY)
        latencies.append(time.perf_counter() - begin)
        if response.status_code != 200:
            raise RuntimeError(f"{model}: {response.status_code} {response.text[:300]}")
    return latencies, started, time.perf_counter()


def summary(latencies: list[float]) -> tuple[float, float, float, float, float]:
    """p50, p99, p99.9, mean and max, in milliseconds."""
    ordered = sorted(latencies)
    return (
        1000 * percentile(ordered, 50),
        1000 * percentile(ordered, 99),
        1000 * percentile(ordered, 99.9),
        1000 * statistics.fmean(ordered),
        1000 * ordered[-1],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests to M per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind (idle, loading)")
    parser.add_argument(
        "--background-mib", type=int, default=64, help="size of each background model"
    )
    parser.add_argument(
        "--load-seconds", type=float, default=1.0, help="load time of each background model"
    )
    parser.add_argument(
        "--background", type=int, default=8, help="background models (half fit beside M)"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mmgw-loadq-"))
    pvc = work / "models"
    write_model(pvc, "m", MiB)
    size = args.background_mib * MiB
    names = [write_model(pvc, f"bg{i}", size, args.load_seconds) for i in range(args.background)]
    room = args.background // 2
    deployment = launcher.Deployment(
        data_dir=work,
        ports=launcher.Ports.free(pods=1),
        pod_capacity=MiB + room * size + MiB // 2,
        # The next victim was loaded about `room` loads ago; the default guard (5 s) would make the loads wait.
        gateway_env={"MMGW_CHURN_GUARD_SECONDS": "1"},
    )
    samples: dict[str, list[float]] = {"idle": [], "loading": []}
    shares: list[float] = []
    try:
        with (
            deployment as running,
            httpx.Client(base_url=running.api_url, timeout=60) as api,
            httpx.Client(base_url=running.url, timeout=60) as rest,
        ):
            wait_until(lambda: pods_healthy(api), "the pod did not become healthy", 30)
            api.put(f"{ISVCS}/m", json=isvc("m", "m")).raise_for_status()
            for name in names:  # the first `room` load proactively, in turn; the rest find no room
                api.put(f"{ISVCS}/{name}", json=isvc(name, name)).raise_for_status()

            def settled() -> bool:
                states = [
                    api.get(f"{ISVCS}/{n}").json()["status"]["modelStatus"]["states"][
                        "activeModelState"
                    ]
                    for n in ["m", *names]
                ]
                return (
                    states.count("Loaded") == room + 1
                    and states.count("Standby") == len(names) - room
                )

            wait_until(
                settled,
                "the proactive loads did not settle",
                30 + 2 * room * args.load_seconds,
                0.2,
            )
            measure(rest, "m", 100)  # warm-up
            loader = Loader(
                running.url, names, start=room
            )  # the Standby ones first: every request misses
            loads = metric(api, "mmgw_model_load_seconds_count")
            evictions = metric(api, "mmgw_model_evictions_total")
            loading_seconds = 0.0
            for _ in range(args.rounds):
                samples["idle"].extend(measure(rest, "m", args.requests)[0])
                loader.start()
                wait_until(
                    lambda: any(
                        p["load_queue"]["running"] for p in api.get("/v1/placement").json()["pods"]
                    ),
                    "no background load started",
                    10,
                    0.01,
                )
                latencies, start, end = measure(rest, "m", args.requests)
                samples["loading"].extend(latencies)
                loader.stop()  # records the request still under way
                shares.append(loader.busy_share(start, end))
                loading_seconds += end - start
            loads = int(metric(api, "mmgw_model_load_seconds_count") - loads)
            evictions = int(metric(api, "mmgw_model_evictions_total") - evictions)

        print(
            f"load queue: 1 pod, model M (1 MiB) loaded; background models of {args.background_mib} MiB loading "
            f"in {args.load_seconds:g} s, {room} fit beside M, {len(names)} requested in turn"
        )
        print(
            f"{args.rounds} alternating rounds of {args.requests} sequential REST requests to M through Envoy "
            f"per kind"
        )
        print(
            f"{'pod':<10} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'mean ms':>8} {'max ms':>8}"
        )
        stats = {}
        for kind, latencies in samples.items():
            stats[kind] = summary(latencies)
            p50, p99, p999, mean, worst = stats[kind]
            print(
                f"{kind:<10} {len(latencies):8d} {p50:8.3f} {p99:8.3f} {p999:9.3f} {mean:8.3f} {worst:8.3f}"
            )
        idle, busy = stats["idle"], stats["loading"]
        print(
            f"loading - idle: p50 {busy[0] - idle[0]:+.3f} ms (x{busy[0] / idle[0]:.2f}), "
            f"p99 {busy[1] - idle[1]:+.3f} ms (x{busy[1] / idle[1]:.2f}), "
            f"p99.9 {busy[2] - idle[2]:+.3f} ms, mean {busy[3] - idle[3]:+.3f} ms"
        )
        print(
            f"loading rounds: {loading_seconds:.1f} s measured; a background request (eviction, load, answer) "
            f"was under way {100 * min(shares):.0f}-{100 * max(shares):.0f}% of each round's time; the background "
            f"client caused {loads} loads and {evictions} evictions of {args.background_mib} MiB models"
            + (
                f"; {len(loader.failed)} background requests failed: {loader.failed[:3]}"
                if loader.failed
                else ""
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
