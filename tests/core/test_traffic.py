"""The served-request tally: latency buckets, the bound on label sets, totals per variant."""

from __future__ import annotations

from gateway.core.traffic import LATENCY_BUCKETS, OTHER, Labels, Tally


def labels(name: str = "m", variant: str = "m__isvc-1", code: str = "200") -> Labels:
    return Labels(name, variant, "rest", code)


def test_each_request_falls_in_the_first_bucket_at_or_above_its_latency() -> None:
    tally = Tally()
    for seconds in (0.0004, 0.001, 0.0017, 0.2, 500.0):
        tally.add(labels(), seconds, ok=True)
    [(_, series)] = list(tally.series())
    cumulative = dict(series.cumulative())
    assert cumulative[0.001] == 2  # 0.4 ms, and 1 ms exactly (the bound is inclusive)
    assert cumulative[0.0025] == 3
    assert cumulative[0.25] == 4
    assert cumulative[LATENCY_BUCKETS[-1]] == 4
    assert cumulative[float("inf")] == series.count == 5
    assert abs(series.seconds - 500.2031) < 1e-9


def test_label_sets_past_the_bound_are_counted_under_other() -> None:
    tally = Tally(max_series=3)
    for i in range(10):
        tally.add(labels(variant=f"m__isvc-{i}"), 0.01, ok=True)
    tally.add(labels(variant="m__isvc-0"), 0.01, ok=True)  # a known set keeps its own series
    assert len(tally) == 4  # three, and the one "(other)" set of this protocol and code
    got = {(k[0], k[1]): s.count for k, s in tally.series()}
    assert got == {
        ("m", "m__isvc-0"): 2,
        ("m", "m__isvc-1"): 1,
        ("m", "m__isvc-2"): 1,
        (OTHER, OTHER): 7,
    }


def test_variants_sum_protocols_and_codes_and_count_failures() -> None:
    tally = Tally()
    tally.add(labels(code="200"), 0.002, ok=True)
    tally.add(labels(code="200"), 0.004, ok=True)
    tally.add(Labels("m", "m__isvc-1", "grpc", "OK"), 0.003, ok=True)
    tally.add(labels(code="400"), 0.001, ok=False)
    tally.add(labels(variant="", code="404"), 0.001, ok=False)
    tally.add(labels(name="other"), 1.0, ok=True)
    got = tally.variants("m")
    assert list(got) == ["", "m__isvc-1"]
    assert (got["m__isvc-1"].requests, got["m__isvc-1"].errors) == (4, 1)
    assert abs(got["m__isvc-1"].mean_ms - 2.5) < 1e-9
    assert (got[""].requests, got[""].errors) == (1, 1)
    assert tally.variants("nothing") == {}
