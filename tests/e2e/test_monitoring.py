"""The Grafana dashboard against a real /metrics: after traffic (hits, a miss, a failure,
gRPC and REST), every metric a panel queries is exposed, with the labels it groups by."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.tools import launcher, samples

from ..deploy.test_monitoring import METRIC, expressions, labels_used, metric_names
from .conftest import seed_body


def test_every_metric_the_dashboard_queries_is_in_a_real_metrics_page(
    deployment: launcher.Deployment, api: httpx.Client, rest: httpx.Client
) -> None:
    for _ in range(5):
        assert rest.post("/v2/models/sklearn-mnist/infer", json=samples.sample_request()).is_success
    assert (
        rest.post("/v2/models/sklearn-mnist/infer", json=seed_body(shape=[1, 3])).status_code == 400
    )
    deadline = time.monotonic() + 15
    while True:  # Envoy's access log arrives in batches, at most 1 s apart
        text = api.get("/metrics").text
        if "mmgw_invoke_model_seconds_count{" in text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    families = list(text_string_to_metric_families(text))
    exposed = {s.name for f in families for s in f.samples} | {
        f"{f.name}{suffix}"  # a labelled family that has no sample yet (no failure so far)
        for f in families
        for suffix in (("_total",) if f.type == "counter" else ("",))
    }
    missing = sorted(metric_names() - exposed)
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"
    labels: dict[str, set[str]] = {}
    for family in families:
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    for expr in expressions():
        for name in set(METRIC.findall(expr)):
            if name in labels:  # the labels this query groups or matches by are the metric's
                assert labels_used(expr) <= labels[name] | {"le"}, (expr, labels[name])
