"""Scale: 10,000 registered synthetic models over 4 pods, measured side by side in one run.

    routing     ExternalProcessor.answer timed inside the process, time.perf_counter_ns
                around each call, for REST request headers /v2/models/<name>/infer
                of uniformly random registered names. Two worlds of real core
                objects (EmbeddedStore, Placement over 4 in-memory pods whose loads
                finish at once, Registry, Router, ExternalProcessor), one with 10
                models and one with 10,000, every model loaded, in the same process.
                A third case sends the 10,000-model world requests for 10 of its
                names only: the size of the tables apart from the working set.
                Each case runs in batches of its own; the batches take turns, so
                drift hits all cases alike. The buffered hits are counted every
                1,024 calls, as the server drains them between requests, timed
                apart and reported per hit. p50 and p99 are given over all calls
                and as the median of each batch's, which bursts of noise on a
                shared machine move less. Target: p50 and p99 within 10%.
    register    a real deployment (launcher.Deployment: Envoy, the gateway, 4 pods
                of 32 MiB): 10,000 InferenceServices PUT through the management
                API by 8 concurrent clients. Total time, registrations/s, and the
                gateway process's VmRSS before and after (bytes per registered
                model). Registering starts a proactive load that uses free space
                only: about 4 x 32 of the 1 MiB models get loaded, the rest stay
                Standby until a request asks for them.

The synthetic models (gateway.pod.runtimes.synthetic) declare 1 MiB and load in
0 s. The registry predicts a model's size as its bytes on disk x 1.25, so each
model is a folder holding its JSON file and a sparse padding file that brings
the prediction to the declared size (as real weights on disk would), without
using disk space. Figures are printed, nothing is asserted. Run:
``python -m benchmarks.scale`` (about two minutes on two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from gateway.adapters.extproc.processor import Answer, ExternalProcessor
from gateway.control.records import RegistrySettings
from gateway.control.registry import Registry
from gateway.control.router import Router
from gateway.core.domain import ModelSpec
from gateway.core.placement import Placement, PodStatus
from gateway.kserve.storage import StorageRoots
from gateway.pod.runtimes.synthetic import write_synthetic
from gateway.store import EmbeddedStore
from gateway.tools import launcher

MiB = 1 << 20
PVC = "my-models-pvc"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices"
SIZE_MULTIPLIER = RegistrySettings().size_multiplier
SETTLE_EVERY = 1024  # as gateway.core.placement asks for a drain (_DRAIN_AT)


# -- helpers shared with benchmarks.cold_start and benchmarks.load_queue -------------------


def write_model(pvc: Path, name: str, size_bytes: int, load_seconds: float = 0.0) -> str:
    """A synthetic model folder ``<pvc>/<name>``; its path inside the PVC.

    The folder holds ``model.json`` (what the pod reads) and a sparse
    ``weights.bin`` sized so that bytes on disk x 1.25, the registry's
    prediction, is the declared ``size_bytes``: placement then sees the size
    a real model of that size would show before its first load.
    """
    folder = pvc / name
    spec = write_synthetic(folder / "model.json", size_bytes, load_seconds)
    padding = math.ceil(size_bytes / SIZE_MULTIPLIER) - spec.stat().st_size
    if padding > 0:
        with open(folder / "weights.bin", "wb") as sparse:
            sparse.truncate(padding)
    return name


def isvc(name: str, path: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "synthetic"},
                    "storage": {"parameters": {"type": "pvc", "name": PVC}, "path": path},
                }
            }
        },
    }


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (after {timeout:g} s)")
        time.sleep(interval)


def pods_healthy(api: httpx.Client) -> bool:
    try:
        pods = api.get("/v1/placement").json()["pods"]
    except httpx.HTTPError:
        return False
    return bool(pods) and all(p["healthy"] for p in pods)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    return sorted_values[
        min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    ]


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- routing decision time, in process ------------------------------------------------------


class MemoryPods:
    """A PodClient in memory: every load finishes at once with the predicted size."""

    def __init__(self, addresses: list[str], capacity: int) -> None:
        self.capacity = capacity
        self.loaded: dict[str, dict[str, int]] = {address: {} for address in addresses}

    async def load(self, address: str, spec: ModelSpec, timeout: float, expected: int) -> int:
        self.loaded[address][spec.model_id] = spec.predicted_size
        return spec.predicted_size

    async def unload(self, address: str, model_id: str) -> None:
        self.loaded[address].pop(model_id, None)

    def on_disconnect(self, callback: Callable[[str], None]) -> None:
        """Simulated pods never disconnect."""

    async def status(self, address: str, timeout: float) -> PodStatus:
        return PodStatus(self.capacity, ("synthetic",), dict(self.loaded[address]))


def rest_headers(name: str) -> pb.ProcessingRequest:
    """What Envoy sends ext_proc for a REST inference request (tests/adapters/test_extproc.py)."""
    values = [
        (":path", f"/v2/models/{name}/infer"),
        (":method", "POST"),
        ("content-type", "application/json"),
    ]
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values]
            ),
            end_of_stream=False,
        )
    )


@dataclass
class World:
    models: int
    processor: ExternalProcessor
    placement: Placement
    requests: list[bytes]  # serialized ProcessingRequests, one per registered name
    store: EmbeddedStore
    setup_seconds: float
    unsettled: int = 0  # calls since the last Placement.settle
    settled: int = 0  # calls counted by the timed settles
    settle_ns: int = 0


async def build_world(root: Path, pvc: Path, models: int, pods: int = 4) -> World:
    """Real core objects with ``models`` registered (m0, m1, ... in ``pvc``) and loaded."""
    started = time.perf_counter()
    addresses = [f"10.0.0.{i + 1}:9000" for i in range(pods)]
    placement = Placement(MemoryPods(addresses, capacity=1 << 40))  # room for every model
    for address in addresses:
        placement.add_pod(address)
    await placement.check_pods()
    store = EmbeddedStore(root / "registry.db")
    registry = Registry(store, placement, StorageRoots({PVC: pvc}))
    ids = []
    for i in range(models):
        record, _ = await registry.apply(isvc(f"m{i}", f"m{i}"))
        ids.append(record.serving.model_id)
    for model_id in ids:  # registering started a proactive load of each; wait for them all
        await placement.ensure_loaded(model_id, urgent=False)
    processor = ExternalProcessor(Router(registry, placement), miss_timeout=100)
    requests = [rest_headers(f"m{i}").SerializeToString() for i in range(models)]
    for raw in requests:  # every name must be a hit that forwards to a pod
        answer = processor.answer(pb.ProcessingRequest.FromString(raw))
        if not isinstance(answer, Answer):
            answer.close()  # type: ignore[union-attr]
            raise RuntimeError("a registered model is not loaded: the answer would wait for a load")
        response = pb.ProcessingResponse.FromString(answer)
        if response.WhichOneof("response") != "request_headers":
            raise RuntimeError(f"ext_proc did not forward: {response}")
    return World(models, processor, placement, requests, store, time.perf_counter() - started)


@dataclass
class Case:
    label: str
    world: World
    names: list[int]  # indices of the names requested
    ns: list[int]
    weights: list[float] | None = None  # None: uniformly
    batches: list[tuple[float, float]] = field(
        default_factory=list
    )  # each batch's (p50, p99) in us

    def draw(self, rng: random.Random, k: int) -> list[int]:
        return rng.choices(self.names, weights=self.weights, k=k)


async def time_calls(case: Case, order: list[int], settle_every: int) -> None:
    """Time each ExternalProcessor.answer call of ``case``, for the names in ``order``.

    Each request is parsed from its bytes just before the call, untimed, as the
    transport (gateway.adapters.extproc.server) does: the message is fresh in memory,
    whichever of the 10 or 10,000 names it carries. A world's buffered hits are
    counted (Placement.settle) every ``settle_every`` of its calls, as the server
    drains them between requests, timed apart from the calls; then the event
    loop turns, as it does between the server's requests.
    """
    clock = time.perf_counter_ns
    parse = pb.ProcessingRequest.FromString
    world = case.world
    answer, requests, ns = world.processor.answer, world.requests, case.ns
    for i in order:
        request = parse(requests[i])
        start = clock()
        answer(request)
        ns.append(clock() - start)
        world.unsettled += 1
        if world.unsettled >= settle_every:
            start = clock()
            world.placement.settle()
            world.settle_ns += clock() - start
            world.settled += world.unsettled
            world.unsettled = 0
            await asyncio.sleep(0)


async def routing(
    work: Path, pvc: Path, small: int, large: int, calls: int, warmup: int, batch: int, seed: int
) -> None:
    rng = random.Random(seed)
    few, many = [await build_world(work / f"world-{n}", pvc, n) for n in (small, large)]
    hot = rng.sample(range(large), small)
    popularity = list(range(large))
    rng.shuffle(popularity)  # Zipf(1.0) ranks, in no particular name order
    cases = [
        Case(f"{small}", few, list(range(small)), []),
        Case(f"{large}", many, list(range(large)), []),
        Case(
            f"{large}, Zipf(1.0)", many, popularity, [], [1 / rank for rank in range(1, large + 1)]
        ),
        Case(f"{large}, {small} hot", many, hot, []),
    ]
    for case in cases:  # warm-up, same distribution, not recorded
        await time_calls(case, case.draw(rng, warmup), SETTLE_EVERY)
        case.ns.clear()
    for world in (few, many):
        world.settle_ns = world.settled = 0
    # Each case in batches of its own, as a gateway holding only that table would run;
    # the batches take turns (who goes first rotates), so drift hits all cases alike.
    rounds = math.ceil(calls / batch)
    for r in range(rounds):
        for k in range(len(cases)):
            case = cases[(r + k) % len(cases)]
            first = len(case.ns)
            await time_calls(case, case.draw(rng, batch), SETTLE_EVERY)
            timed = sorted(case.ns[first:])
            case.batches.append((percentile(timed, 50) / 1000, percentile(timed, 99) / 1000))
    for world in (few, many):
        await world.store.close()

    print(
        "routing decision: ExternalProcessor.answer on REST request headers (/v2/models/<name>/infer), "
        "in process,"
    )
    print(
        f"4 in-memory pods, every model loaded, names drawn uniformly unless said; {rounds} rotating batches of "
        f"{batch} calls per case after {warmup} warm-up calls; perf_counter_ns around each call"
    )
    print(f"{'':<20} {'':>8} {'all calls pooled':^35}  {'median over batches':^17}")
    print(
        f"{'registered models':<20} {'calls':>8} {'p50 us':>8} {'p99 us':>8} {'mean us':>8} {'max us':>9}  "
        f"{'p50 us':>8} {'p99 us':>8}"
    )
    pooled: dict[str, tuple[float, float]] = {}
    batched: dict[str, tuple[float, float]] = {}
    for case in cases:
        ns = sorted(case.ns)
        p50, p99 = percentile(ns, 50) / 1000, percentile(ns, 99) / 1000
        pooled[case.label] = (p50, p99)
        batched[case.label] = (
            statistics.median(b[0] for b in case.batches),
            statistics.median(b[1] for b in case.batches),
        )
        print(
            f"{case.label:<20} {len(ns):8d} {p50:8.2f} {p99:8.2f} {statistics.fmean(ns) / 1000:8.2f} "
            f"{ns[-1] / 1000:9.1f}  {batched[case.label][0]:8.2f} {batched[case.label][1]:8.2f}"
        )
    for case in cases[1:]:
        ratios = []
        for stats in (pooled, batched):
            (p50, p99), (base50, base99) = stats[case.label], stats[cases[0].label]
            ratios.append(f"p50 x{p50 / base50:.3f}, p99 x{p99 / base99:.3f}")
        print(
            f"{case.label} vs {cases[0].label}: pooled {ratios[0]}; median over batches {ratios[1]}"
            + ("   (target: within 10%)" if case is cases[1] else "")
        )
    print(
        "(pooled: every call of the case; median over batches: each batch's p50 and p99, then their median,\n"
        " which a burst of noise on the machine moves less)"
    )
    print(
        f"('{large}, Zipf(1.0)': request popularity as in benchmarks/cache_quality; '{large}, {small} hot': "
        f"requests for {small} of them only, the table's size with a small working set)"
    )
    print(
        f"buffered hits counted by Placement.settle every {SETTLE_EVERY} calls, as the server drains them between "
        f"requests, timed apart: "
        + ", ".join(
            f"{world.settle_ns / max(1, world.settled) / 1000:.2f} us per hit with {world.models} models"
            for world in (few, many)
        )
    )
    print(
        f"setup, in process (register through Registry.apply, then load, loads taking no time): "
        f"{few.setup_seconds:.2f} s for {small}, {many.setup_seconds:.1f} s for {large}"
    )


# -- registration through a real deployment -------------------------------------------------


async def register_all(
    api_url: str, names: list[str], clients: int
) -> tuple[float, list[float], list[str]]:
    """PUT every InferenceService with ``clients`` concurrent connections.

    Returns the total seconds, each PUT's seconds, and the failures.
    """
    queue = iter(names)
    latencies: list[float] = []
    failures: list[str] = []

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=api_url, timeout=60) as client:
            for name in queue:  # a shared iterator: each name goes to one worker
                started = time.perf_counter()
                response = await client.put(f"{ISVCS}/{name}", json=isvc(name, name))
                latencies.append(time.perf_counter() - started)
                if response.status_code not in (200, 201):
                    failures.append(f"{name}: {response.status_code} {response.text[:200]}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started, latencies, failures


def registration(
    data: Path, models: int, pods: int, capacity: int, clients: int, settle: float
) -> None:
    names = [f"m{i}" for i in range(models)]  # written by main into data/models
    with launcher.Deployment(
        data_dir=data, ports=launcher.Ports.free(pods=pods), pod_capacity=capacity
    ) as running:
        gateway_pid = running.process("gateway").popen.pid
        with httpx.Client(base_url=running.api_url, timeout=120) as api:
            wait_until(lambda: pods_healthy(api), "the pods did not become healthy", 30)
            # Exercise the API's code paths once (a refused PUT registers nothing) before the baseline.
            api.put(f"{ISVCS}/warm-up", json={**isvc("warm-up", "m0"), "kind": "Nope"})
            api.get(ISVCS)
            api.get("/metrics")
            time.sleep(settle)
            rss_before = vm_rss(gateway_pid)

            seconds, latencies, failures = asyncio.run(
                register_all(running.api_url, names, clients)
            )

            def loads_done() -> bool:
                return all(
                    p["load_queue"]["running"] == 0 and p["load_queue"]["waiting"] == 0
                    for p in api.get("/v1/placement").json()["pods"]
                )

            wait_until(loads_done, "the proactive loads did not finish", 120, interval=0.5)
            time.sleep(settle)
            rss_after = vm_rss(gateway_pid)
            table = api.get("/v1/placement").json()
            listed = time.perf_counter()
            items = api.get(ISVCS).json()["items"]
            list_seconds = time.perf_counter() - listed
            scraped = time.perf_counter()
            page = api.get("/metrics").text
            scrape_seconds = time.perf_counter() - scraped
            samples = sum(1 for line in page.splitlines() if line and not line.startswith("#"))

    registered = models - len(failures)
    loaded = sum(len(p["models"]) for p in table["pods"])
    states: dict[str, int] = {}
    for item in items:
        state = item["status"]["modelStatus"]["states"]["activeModelState"]
        states[state] = states.get(state, 0) + 1
    print(
        f"\nregistration: {models} InferenceServices PUT through the management API, "
        f"{clients} concurrent clients; {pods} pods of {capacity // MiB} MiB, models of 1 MiB"
    )
    put = sorted(latencies)
    print(
        f"  registered {registered} in {seconds:.1f} s: {registered / seconds:.0f} registrations/s; "
        f"PUT latency p50 {1000 * percentile(put, 50):.1f} ms, p99 {1000 * percentile(put, 99):.1f} ms; "
        f"{len(failures)} failed"
    )
    for failure in failures[:5]:
        print(f"    {failure}")
    print(
        f"  gateway VmRSS {rss_before / MiB:.1f} MiB before, {rss_after / MiB:.1f} MiB after "
        f"({settle:g} s settle): {(rss_after - rss_before) / max(1, registered):.0f} bytes per registered model"
    )
    print(
        "  (the RSS includes the embedded SQLite store's page cache, which lives in the gateway process)"
    )
    print(
        f"  loaded copies: {loaded} ({', '.join(str(len(p['models'])) for p in table['pods'])} per pod); "
        f"states: {', '.join(f'{k} {v}' for k, v in sorted(states.items()))}"
    )
    print(
        f"  (registering triggers a proactive load that uses free space only: about {pods} x "
        f"{capacity // MiB} models are loaded, the rest stay Standby until a request asks for them)"
    )
    print(
        f"  GET the list of {len(items)} InferenceServices: {list_seconds * 1000:.0f} ms; "
        f"GET /metrics: {scrape_seconds * 1000:.0f} ms, {len(page.encode()) / 1024:.0f} KiB, "
        f"{samples} samples"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", type=int, default=10_000, help="registered models in the large case"
    )
    parser.add_argument("--small", type=int, default=10, help="registered models in the small case")
    parser.add_argument("--calls", type=int, default=200_000, help="timed answer() calls per case")
    parser.add_argument("--warmup", type=int, default=20_000)
    parser.add_argument(
        "--batch", type=int, default=5_000, help="calls per batch; the cases take turns"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent registering clients")
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--pod-capacity-mib", type=int, default=32)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before each RSS reading")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--skip-deployment", action="store_true", help="only the in-process routing figures"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mmgw-scale-"))
    try:
        data = work / "deployment"
        started = time.perf_counter()
        for i in range(args.models):  # one set of files: the deployment's PVC, also read in process
            write_model(data / "models", f"m{i}", MiB)
        print(
            f"scale: {args.models} registered synthetic models (1 MiB, loaded in 0 s) over {args.pods} pods; "
            f"model files written in {time.perf_counter() - started:.1f} s\n"
        )
        asyncio.run(
            routing(
                work,
                data / "models",
                args.small,
                args.models,
                args.calls,
                args.warmup,
                args.batch,
                args.seed,
            )
        )
        if not args.skip_deployment:
            registration(
                data, args.models, args.pods, args.pod_capacity_mib * MiB, args.clients, args.settle
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
