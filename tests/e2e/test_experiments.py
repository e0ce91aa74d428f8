"""An Experiment through `mmgw apply` and the real Envoy (issue 15, item 2): requests for
the public name are split 70/30 between two InferenceServices; `mmgw get experiments`
shows it; a bad Experiment is refused by the CLI with the server's reason."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from gateway.tools import launcher, samples

from .conftest import wait_ready

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


def test_an_experiment_splits_a_public_name_between_two_inference_services(
    deployment: launcher.Deployment, api: httpx.Client, rest: httpx.Client, tmp_path: Path
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
    bad = EXPERIMENT.replace("weight: 30", "weight: -3")
    refused = _mmgw(deployment, "apply", "-f", "-", text=bad)
    assert refused.returncode == 1 and "candidates.1.weight" in refused.stderr, refused.stderr
    for args in (("experiment", "exp-ab"), ("isvc", "exp-a"), ("isvc", "exp-b")):
        assert _mmgw(deployment, "delete", *args).returncode == 0
