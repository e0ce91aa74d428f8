"""An Experiment through `mmgw apply` and the real Envoy (issue 15, items 2 and 6): requests
for the public name are split 70/30 between two InferenceServices; `mmgw get experiments`
shows it; /metrics, `status.served` and `mmgw get` count what each variant served (from
Envoy's access log), failures by code; a bad Experiment is refused by the CLI with the
server's reason."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.tools import launcher, samples

from .conftest import seed_body, wait_ready

REQUESTS = 1000
ISVC = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: {name}, namespace: modelmesh-serving}}
spec:
  predictor:
    model:
      modelFormat: {{name: sklearn}}
      storage: {{parameters: {{type: pvc, name: my-models-pvc}}, path: mnist-svm.joblib}}
---
"""
EXPERIMENT = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Experiment
metadata: {name: exp-ab}
spec:
  default: exp-a
  candidates:
  - {name: exp-a, weight: 70}
  - {name: exp-b, weight: 30}
"""
DOCUMENTS = ISVC.format(name="exp-a") + ISVC.format(name="exp-b") + EXPERIMENT


def _mmgw(
    deployment: launcher.Deployment, *args: str, text: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", *args],
        env={**os.environ, "MMGW_SERVER": deployment.api_url},
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )


def served_counts(api: httpx.Client, name: str) -> dict[tuple[str, str, str], int]:
    """mmgw_api_request_seconds_count for ``name``: (variant, protocol, code) -> requests."""
    return {
        (s.labels["variant"], s.labels["protocol"], s.labels["code"]): int(s.value)
        for family in text_string_to_metric_families(api.get("/metrics").text)
        for s in family.samples
        if s.name == "mmgw_api_request_seconds_count" and s.labels["name"] == name
    }


def wait_for_counts(api: httpx.Client, name: str, total: int) -> dict[tuple[str, str, str], int]:
    """The counts once ``total`` requests for ``name`` are in (Envoy sends its access log
    in batches, at most 1 s apart)."""
    deadline = time.monotonic() + 15
    while sum((counts := served_counts(api, name)).values()) < total:
        assert time.monotonic() < deadline, counts
        time.sleep(0.1)
    return counts


def test_an_experiment_splits_a_public_name_between_two_inference_services(
    deployment: launcher.Deployment,
    api: httpx.Client,
    rest: httpx.Client,
    stub: v2_grpc.GRPCInferenceServiceStub,
    tmp_path: Path,
) -> None:
    applied = _mmgw(deployment, "apply", "-f", "-", text=DOCUMENTS)
    assert applied.returncode == 0, applied.stderr
    assert "experiment.mlops.seldon.io/exp-ab created" in applied.stdout
    ids = {
        name: wait_ready(api, name)["status"]["components"]["predictor"]["latestRolledoutRevision"]
        for name in ("exp-a", "exp-b")
    }
    deadline = time.monotonic() + 60
    while "True" not in (listed := _mmgw(deployment, "get", "experiments").stdout):
        assert time.monotonic() < deadline, listed
        time.sleep(0.2)
    print(listed)
    assert "exp-a=70,exp-b=30" in listed
    body, served = samples.sample_request(), Counter[str]()
    for _ in range(REQUESTS):
        response = rest.post("/v2/models/exp-ab/infer", json=body)
        assert response.status_code == 200, response.text
        served[response.headers["x-mmgw-variant"]] += 1
    share = 100 * served[ids["exp-a"]] / REQUESTS
    print(f"70/30 experiment through Envoy: {dict(served)} ({share:.1f}% to exp-a)")
    assert set(served) == set(ids.values()) and abs(share - 70) <= 6  # 4 standard deviations

    # Item 6: what each variant served, failures by code, over REST and gRPC.
    request = v2.ModelInferRequest(model_name="exp-ab")
    tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend(samples.sample_input())
    grpc_served = Counter[str]()
    for _ in range(20):
        _, call = stub.ModelInfer.with_call(request, metadata=[("mm-vmodel-id", "exp-ab")])
        grpc_served[dict(call.initial_metadata())["x-mmgw-variant"]] += 1
    bad = rest.post("/v2/models/exp-ab/infer", json=seed_body(datatype="INT32"))
    assert bad.status_code == 400, bad.text
    with_bad = bad.headers["x-mmgw-variant"]
    counts = wait_for_counts(api, "exp-ab", REQUESTS + 20 + 1)
    expected = {(variant, "rest", "200"): n for variant, n in served.items()}
    expected |= {(variant, "grpc", "OK"): n for variant, n in grpc_served.items()}
    expected[(with_bad, "rest", "400")] = 1
    print(f"per-variant counts from Envoy's access log: {counts}")
    assert counts == expected
    # names a client makes up are never labels: each is counted under one "(unregistered)"
    refused = ("", "rest", "404")
    before = served_counts(api, "(unregistered)")  # other tests' unknown names count too
    for i in range(30):
        assert rest.post(f"/v2/models/made-up-{i}/infer", json=body).status_code == 404
    unregistered = wait_for_counts(api, "(unregistered)", sum(before.values()) + 30)
    assert unregistered[refused] >= before.get(refused, 0) + 30
    assert not any(s.startswith("made-up") for s in api.get("/metrics").text.split('"'))
    listed = _mmgw(deployment, "get", "experiments").stdout
    print(listed)
    a, b = (
        served[ids["exp-a"]] + grpc_served[ids["exp-a"]],
        served[ids["exp-b"]] + grpc_served[ids["exp-b"]],
    )
    a_failed = "(1 failed)" if with_bad == ids["exp-a"] else ""
    b_failed = "(1 failed)" if with_bad == ids["exp-b"] else ""
    assert f"exp-a={a + bool(a_failed)}{a_failed},exp-b={b + bool(b_failed)}{b_failed}" in listed
    status = yaml.safe_load(_mmgw(deployment, "get", "experiment", "exp-ab", "-o", "yaml").stdout)
    assert {row["variant"]: row["requests"] for row in status["status"]["served"]} == {
        ids["exp-a"]: a + bool(a_failed),
        ids["exp-b"]: b + bool(b_failed),
    }
    bad = EXPERIMENT.replace("weight: 30", "weight: -3")
    refused = _mmgw(deployment, "apply", "-f", "-", text=bad)
    assert refused.returncode == 1 and "candidates.1.weight" in refused.stderr, refused.stderr
    for args in (("experiment", "exp-ab"), ("isvc", "exp-a"), ("isvc", "exp-b")):
        assert _mmgw(deployment, "delete", *args).returncode == 0
