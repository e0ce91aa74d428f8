"""Traffic control's own cost in the gateway process, measured side by side in one run.

    decision    ExternalProcessor.answer for REST request headers, timed inside the
                process (time.perf_counter_ns around each call), over real core objects
                (EmbeddedStore, Placement over in-memory pods, Registry, Router): a
                plain InferenceService name, the same name with a 10% canary held, an
                Experiment splitting 50/50 between two InferenceServices, and that
                Experiment with a 10% mirror. The cases take turns in batches, so drift
                hits them all alike; p50 and p99 are the medians of each batch's.
    access log  AccessLogReader.message on batches of 64 HTTPAccessLogEntry as Envoy
                sends them (REST and gRPC, two variants, a few failures), through
                TrafficBook into the tally: the CPU the gateway spends per served
                request to count it, off the request path.

Targets (issue 15): the split's decision costs no more than a few microseconds over a
plain name. Figures are printed, nothing is asserted. Run: ``python -m
benchmarks.traffic_split`` (a few seconds); ``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from benchmarks.scale import PVC, MemoryPods, isvc, rest_headers, write_model
from gateway.adapters.extproc.accesslog import AccessLogReader
from gateway.adapters.extproc.processor import Answer, ExternalProcessor
from gateway.control.registry import Registry
from gateway.control.router import Router
from gateway.control.traffic import TrafficBook
from gateway.core.placement import Placement
from gateway.core.traffic import Tally
from gateway.kserve.storage import StorageRoots
from gateway.store import EmbeddedStore

BATCH = 2_000
ENTRIES_PER_MESSAGE = 64


@dataclass
class Case:
    label: str
    request: bytes
    batches: list[tuple[float, float]] = field(default_factory=list)  # (p50, p99) in us


def experiment(mirror: bool) -> dict[str, object]:
    spec: dict[str, object] = {
        "candidates": [{"name": "mnist-a", "weight": 50}, {"name": "mnist-b", "weight": 50}]
    }
    if mirror:
        spec["mirror"] = {"name": "mnist-c", "percent": 10}
    name = "mnist-ab-mirrored" if mirror else "mnist-ab"
    return {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": spec,
    }


async def world(root: Path) -> tuple[ExternalProcessor, Placement, Registry]:
    pvc = root / "pvc"
    for name in ("v1", "v2", "a", "b", "c", "plain"):
        write_model(pvc, name, 1 << 20)
    addresses = ["10.0.0.1:9000", "10.0.0.2:9000"]
    placement = Placement(MemoryPods(addresses, capacity=1 << 40))
    for address in addresses:
        placement.add_pod(address)
    await placement.check_pods()
    registry = Registry(EmbeddedStore(root / "registry.db"), placement, StorageRoots({PVC: pvc}))
    await registry.apply(isvc("plain", "plain"))
    await registry.apply(isvc("canaried", "v1"))
    canary = isvc("canaried", "v2")
    canary["spec"]["predictor"]["canaryTrafficPercent"] = 10  # type: ignore[index]
    for name in ("a", "b", "c"):
        await registry.apply(isvc(f"mnist-{name}", name))
    for record in registry.records():
        await placement.ensure_loaded(record.serving.model_id, urgent=False)
    await registry.apply(canary)
    latest = registry.record("canaried")
    assert latest is not None
    await placement.ensure_loaded(latest.target.model_id, urgent=False)
    await registry.apply_experiment(experiment(mirror=False))
    await registry.apply_experiment(experiment(mirror=True))
    return ExternalProcessor(Router(registry, placement), miss_timeout=100), placement, registry


async def decision(processor: ExternalProcessor, placement: Placement, rounds: int) -> None:
    cases = [
        Case("plain name", rest_headers("plain").SerializeToString()),
        Case("10% canary", rest_headers("canaried").SerializeToString()),
        Case("50/50 experiment", rest_headers("mnist-ab").SerializeToString()),
        Case("50/50 + 10% mirror", rest_headers("mnist-ab-mirrored").SerializeToString()),
    ]
    parse = pb.ProcessingRequest.FromString
    clock = time.perf_counter_ns
    for case in cases:  # every case must forward at once (no load to wait for)
        answer = processor.answer(parse(case.request))
        assert isinstance(answer, Answer), case.label
    for round_ in range(rounds):
        for case in cases[round_ % len(cases) :] + cases[: round_ % len(cases)]:
            ns = []
            for _ in range(BATCH):
                request = parse(case.request)
                start = clock()
                processor.answer(request)
                ns.append(clock() - start)
            placement.settle()
            await asyncio.sleep(0)
            q = statistics.quantiles(ns, n=100)
            case.batches.append((q[49] / 1000, q[98] / 1000))
    plain = statistics.median(b[0] for b in cases[0].batches)
    print(f"routing decision (ExternalProcessor.answer, REST headers), {rounds} batches of {BATCH}")
    print(f"{'case':<20} {'p50 us':>7} {'p99 us':>7} {'p50 - plain':>11}")
    for case in cases:
        p50 = statistics.median(b[0] for b in case.batches)
        p99 = statistics.median(b[1] for b in case.batches)
        print(f"{case.label:<20} {p50:7.2f} {p99:7.2f} {p50 - plain:+11.2f}")


def log_message(ids: list[str]) -> bytes:
    """One StreamAccessLogsMessage as Envoy sends them: REST and gRPC entries for the
    Experiment's two variants, one in 16 a failure."""
    message = als_pb2.StreamAccessLogsMessage()
    message.identifier.log_name = "mmgw"
    for i in range(ENTRIES_PER_MESSAGE):
        entry = accesslog_pb2.HTTPAccessLogEntry()
        entry.common_properties.upstream_cluster = "pods"
        entry.common_properties.time_to_last_downstream_tx_byte.FromMicroseconds(2_000 + i * 50)
        entry.request.request_headers["mm-model-id"] = ids[i % 2]
        entry.common_properties.upstream_remote_address.socket_address.address = "10.0.0.1"
        entry.common_properties.upstream_remote_address.socket_address.port_value = 9000
        entry.common_properties.time_to_first_upstream_tx_byte.FromMicroseconds(200)
        entry.common_properties.time_to_last_upstream_rx_byte.FromMicroseconds(1_800 + i * 50)
        if i % 3:
            entry.request.path = "/v2/models/mnist-ab/infer"
            entry.response.response_code.value = 400 if i % 16 == 0 else 200
        else:
            entry.request.path = "/inference.GRPCInferenceService/ModelInfer"
            entry.request.request_headers["mm-vmodel-id"] = "mnist-ab"
            entry.response.response_code.value = 200
            entry.response.response_trailers["grpc-status"] = "0"
        message.http_logs.log_entry.append(entry)
    return message.SerializeToString()


def access_log(registry: Registry, placement: Placement, messages: int) -> None:
    ids = []
    for name in ("mnist-a", "mnist-b"):
        record = registry.record(name)
        assert record is not None
        ids.append(record.serving.model_id)
    book = TrafficBook(registry, placement, Tally())
    reader = AccessLogReader(book.record)
    data = log_message(ids)
    started = time.process_time()
    for _ in range(messages):
        reader.message(data)
    cpu = time.process_time() - started
    entries = messages * ENTRIES_PER_MESSAGE
    assert sum(series.count for _, series in book.tally.series()) == entries
    print(
        f"\naccess log: {entries} entries in batches of {ENTRIES_PER_MESSAGE}: "
        f"{1e6 * cpu / entries:.2f} us of gateway CPU per served request "
        f"({len(book.tally)} label sets)"
    )


async def run(rounds: int, messages: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mmgw-split-") as root:
        processor, placement, registry = await world(Path(root))
        await decision(processor, placement, rounds)
        access_log(registry, placement, messages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="batches of each case")
    parser.add_argument("--messages", type=int, default=2_000, help="access log messages")
    args = parser.parse_args(argv)
    asyncio.run(run(args.rounds, args.messages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
