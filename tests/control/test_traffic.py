"""Which labels a served request is counted under: only registered names, and the
InferenceService a variant belongs to when the name was not seen."""

from __future__ import annotations

from pathlib import Path

from gateway.control.traffic import TrafficBook
from gateway.core.traffic import GRPC, REST, UNREGISTERED, Labels, Served, Tally

from ..core.harness import harness, isvc
from .test_experiments import experiment


def served(name: str | None, variant: str | None, code: str = "200", ok: bool = True) -> Served:
    return Served(name, variant, REST, code, 0.003, ok)


async def test_names_become_labels_only_when_registered(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    a, _ = await h.registry.apply(isvc("mnist-a"))
    await h.registry.apply(isvc("mnist-b", "v2.joblib"))
    await h.registry.apply_experiment(experiment(("mnist-a", 50), ("mnist-b", 50)))
    book = TrafficBook(h.registry, h.placement, Tally())
    variant = a.serving.model_id
    book.record(served("mnist-a", variant))
    book.record(served("mnist-ab", variant))  # the Experiment's public name
    book.record(served("no-such-model", None, "404", ok=False))
    book.record(served("a-made-up-name-per-request-7", None, "404", ok=False))
    # a gRPC call naming its model in the body only: the variant's InferenceService
    book.record(Served(None, variant, GRPC, "OK", 0.001, True))
    book.record(served(None, None))  # names no model at all: not counted
    got = {labels: series.count for labels, series in book.tally.series()}
    assert got == {
        Labels("mnist-a", variant, REST, "200"): 1,
        Labels("mnist-a", variant, GRPC, "OK"): 1,
        Labels("mnist-ab", variant, REST, "200"): 1,
        Labels(UNREGISTERED, "", REST, "404"): 2,
    }
    assert book.variants("mnist-a")[variant].requests == 2


async def test_a_deleted_name_is_no_longer_a_label(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    record, _ = await h.registry.apply(isvc("mnist-a"))
    book = TrafficBook(h.registry, h.placement, Tally())
    await h.registry.delete("mnist-a")
    book.record(served("mnist-a", record.serving.model_id))
    assert [labels[0] for labels, _ in book.tally.series()] == [UNREGISTERED]


async def test_time_at_a_pod_is_counted_under_the_pod_also_when_reached_by_its_rest_port(
    tmp_path: Path,
) -> None:
    h = await harness(tmp_path)
    record, _ = await h.registry.apply(isvc("mnist-a"))
    [(pod, _, _)] = h.placement.endpoints()
    h.placement._table.pods[pod].rest_address = "10.0.0.1:9111"  # noqa: SLF001 - as reported
    book = TrafficBook(h.registry, h.placement, Tally())
    variant = record.serving.model_id
    for address in (pod, "10.0.0.1:9111"):
        book.record(Served("mnist-a", variant, REST, "200", 0.003, True, address, 0.002))
    book.record(Served("mnist-a", None, REST, "404", 0.001, False))  # no pod: not counted
    got = {labels: series.count for labels, series in book.at_pods.series()}
    assert got == {(pod,): 2}
