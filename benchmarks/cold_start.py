"""Cold start: time to first answer for a model not yet loaded, minus the model's own load time.

Two pods of 64 MiB; K (100) synthetic models of 1 MiB that each take 0.2 s to load
(gateway.pod.runtimes.synthetic: the pod really allocates and waits). Each
target is registered while the pods are full, so its proactive load (which
uses free space only) is deferred and the model stays Standby: nothing is
loaded, nothing was ever loaded, until the first request. Then, one model at a
time, a REST request through Envoy:

    free space   the pods are emptied first (the fillers that kept them full are
                 deleted): the request-driven load goes straight to a pod.
    evicting     the pods are full again (new fillers; the free-space targets are
                 the least recently used copies): each load first evicts one.

Per request: ``wall``, the request's time to answer (perf_counter around the
POST); ``load``, the load as the gateway timed it around the pod's LoadModel
call (the difference of ``mmgw_model_load_seconds_sum`` on GET <api>/metrics
before and after, with the count checked to have moved by one); overhead =
wall - load (target: under 20 ms), and wall - 0.2 s (the declared load time, so
the LoadModel RPC's own cost counts as overhead too). ``warm`` is a second
request to the same model just after: what any request costs on this machine,
part of every first answer too. Figures are printed, nothing is asserted.
Run: ``python -m benchmarks.cold_start`` (under a minute on two cores).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.scale import ISVCS, MiB, isvc, percentile, pods_healthy, wait_until, write_model
from gateway.tools import launcher
from gateway.tools.launcher import metric

ROW = [1.0, 2.0, 3.0]
BODY = {
    "inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP64", "contents": {"fp64_contents": ROW}}
    ]
}


@dataclass(frozen=True)
class Sample:
    wall: float
    load: float
    warm: float
    loads: int  # loads the request caused (mmgw_model_load_seconds_count moved by this)


def state(api: httpx.Client, name: str) -> str:
    return api.get(f"{ISVCS}/{name}").json()["status"]["modelStatus"]["states"]["activeModelState"]


def register(api: httpx.Client, name: str, *, until: str, timeout: float = 60.0) -> None:
    api.put(f"{ISVCS}/{name}", json=isvc(name, name)).raise_for_status()
    wait_until(lambda: state(api, name) == until, f"{name} did not become {until}", timeout)


def placement(api: httpx.Client) -> list[dict[str, Any]]:
    return api.get("/v1/placement").json()["pods"]


def fill(api: httpx.Client, pvc: Path, prefix: str, load_seconds: float) -> list[str]:
    """One filler model per pod, each as large as that pod's free space minus half a MiB.

    Fillers go in largest first: a proactive load picks the pod with the most
    free space, so each lands where it was sized for. Afterwards no 1 MiB model
    fits anywhere without an eviction.
    """
    names = []
    for i in range(len(placement(api))):
        free = max(p["capacity_bytes"] - p["used_bytes"] for p in placement(api))
        name = write_model(pvc, f"{prefix}-{i}", free - MiB // 2, load_seconds)
        register(api, name, until="Loaded")
        names.append(name)
    return names


def first_requests(rest: httpx.Client, api: httpx.Client, names: Sequence[str]) -> list[Sample]:
    samples = []
    for name in names:
        load_sum = metric(api, "mmgw_model_load_seconds_sum")
        load_count = metric(api, "mmgw_model_load_seconds_count")
        started = time.perf_counter()
        response = rest.post(f"/v2/models/{name}/infer", json=BODY)
        wall = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
        load = metric(api, "mmgw_model_load_seconds_sum") - load_sum
        loads = int(metric(api, "mmgw_model_load_seconds_count") - load_count)
        started = time.perf_counter()
        rest.post(f"/v2/models/{name}/infer", json=BODY).raise_for_status()
        samples.append(Sample(wall, load, time.perf_counter() - started, loads))
    return samples


def report(label: str, samples: list[Sample], declared: float) -> None:
    def ms(values: list[float]) -> str:
        ordered = sorted(values)
        return (
            f"{1000 * percentile(ordered, 50):8.1f} {1000 * percentile(ordered, 99):8.1f} "
            f"{1000 * ordered[-1]:8.1f}"
        )

    odd = [s for s in samples if s.loads != 1]
    print(
        f"\n{label}: {len(samples)} models, one first request each"
        + (
            f" ({len(odd)} requests saw {sorted({s.loads for s in odd})} loads instead of 1)"
            if odd
            else ""
        )
    )
    print(f"{'ms':<30} {'p50':>8} {'p99':>8} {'max':>8}")
    print(f"{'first answer (wall)':<30} {ms([s.wall for s in samples])}")
    print(f"{'load, as the gateway timed it':<30} {ms([s.load for s in samples])}")
    print(
        f"{'overhead: wall - load':<30} {ms([s.wall - s.load for s in samples])}   (target < 20 ms)"
    )
    print(
        f"{'overhead: wall - declared':<30} {ms([s.wall - declared for s in samples])}   "
        f"(declared load {declared:g} s)"
    )
    print(f"{'warm request, same model':<30} {ms([s.warm for s in samples])}")
    beyond = statistics.median(s.wall - s.load for s in samples) - statistics.median(
        s.warm for s in samples
    )
    print(f"overhead beyond a warm request (p50 - p50): {1000 * beyond:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100, help="target models per phase (K)")
    parser.add_argument(
        "--load-seconds", type=float, default=0.2, help="each target's declared load time"
    )
    parser.add_argument("--pod-capacity-mib", type=int, default=64)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mmgw-cold-"))
    pvc = work / "models"
    free_targets = [write_model(pvc, f"a{i}", MiB, args.load_seconds) for i in range(args.models)]
    evict_targets = [write_model(pvc, f"b{i}", MiB, args.load_seconds) for i in range(args.models)]
    deployment = launcher.Deployment(
        data_dir=work,
        ports=launcher.Ports.free(pods=2),
        pod_capacity=args.pod_capacity_mib * MiB,
        # A copy loaded 1 s ago may be evicted (5 s by default): phase two's victims are older anyway.
        gateway_env={"MMGW_CHURN_GUARD_SECONDS": "1"},
    )
    try:
        with (
            deployment as running,
            httpx.Client(base_url=running.api_url, timeout=60) as api,
            httpx.Client(base_url=running.url, timeout=60) as rest,
        ):
            wait_until(lambda: pods_healthy(api), "the pods did not become healthy", 30)
            rest.get(
                "/v2/health/ready"
            ).raise_for_status()  # the client's connection to Envoy is open

            # Free space: register the targets behind fillers (deferred: Standby), then delete the fillers.
            fillers = fill(api, pvc, "fill-a", 0.0)
            for name in free_targets:
                register(api, name, until="Standby")
            for name in fillers:
                api.delete(f"{ISVCS}/{name}").raise_for_status()
            wait_until(
                lambda: all(p["used_bytes"] == 0 for p in placement(api)),
                "the fillers were not unloaded",
                30,
            )
            free = first_requests(rest, api, free_targets)

            # Evicting: fill what the targets left free, register new targets (Standby), request them.
            fill(api, pvc, "fill-b", 0.0)
            for name in evict_targets:
                register(api, name, until="Standby")
            time.sleep(
                1.2
            )  # past the churn guard (1 s) and the recent-use guard (1 s) for every old copy
            evictions = metric(api, "mmgw_model_evictions_total")
            evicting = first_requests(rest, api, evict_targets)
            evictions = int(metric(api, "mmgw_model_evictions_total") - evictions)

        print(
            f"cold start: 2 pods of {args.pod_capacity_mib} MiB, synthetic models of 1 MiB loading in "
            f"{args.load_seconds:g} s, each registered while the pods were full (Standby, never loaded);"
        )
        print("one REST request through Envoy per model, in sequence")
        report("free space (no eviction needed)", free, args.load_seconds)
        report(
            f"evicting (pods full: {evictions} least recently used copies evicted)",
            evicting,
            args.load_seconds,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
