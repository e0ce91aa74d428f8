"""ServingRuntimes through ``mmgw``: the seed's runtime applied and listed, runtime selection shown.

Everything created here is deleted again, so the other tests sharing the
deployment see only sklearn-mnist and the built-in runtimes.
"""

from __future__ import annotations

import json
import re

import httpx

from gateway.tools import launcher

from .cli_helpers import isvc_yaml, mmgw
from .conftest import ISVCS, seed_body

SRS = "/apis/serving.kserve.io/v1alpha1/namespaces/modelmesh-serving/servingruntimes"

SEED_RUNTIME = """\
apiVersion: serving.kserve.io/v1alpha1
kind: ServingRuntime
metadata:
  name: peft-model-server
  namespace: modelmesh-serving
spec:
  supportedModelFormats:
    - name: peft-model
      version: "1"
      autoSelect: true
  multiModel: true
  grpcDataEndpoint: port:8001
  grpcEndpoint: port:8085
  containers:
    - name: mlserver
      image: registry.example/peft-model-server:latest
      env:
        - name: MLSERVER_MODEL_IMPLEMENTATION
          value: peft_model_server.PeftModelServer
      resources:
        requests: {cpu: 500m, memory: 4Gi}
        limits: {cpu: "5", memory: 5Gi}
  builtInAdapter:
    serverType: mlserver
    runtimeManagementPort: 8001
    memBufferBytes: 134217728
    modelLoadingTimeoutMillis: 90000
"""


def test_servingruntimes_and_runtime_selection(deployment: launcher.Deployment) -> None:
    server = deployment.api_url

    def ok(*args: str, stdin: str | None = None) -> str:
        result = mmgw(*args, server=server, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result.stdout

    no_runtime = isvc_yaml("sr-no-runtime").replace("name: sklearn", "name: tensorrt")
    missing = isvc_yaml("sr-missing").replace(
        "        name: sklearn\n", "        name: sklearn\n      runtime: nowhere\n"
    )
    try:
        # Runtimes go first, whatever the order in the file.
        assert ok(
            "apply", "-f", "-", stdin=no_runtime + "---\n" + SEED_RUNTIME + "---\n" + missing
        ) == (
            "servingruntime.serving.kserve.io/peft-model-server created\n"
            "inferenceservice.serving.kserve.io/sr-no-runtime created\n"
            "inferenceservice.serving.kserve.io/sr-missing created\n"
        )
        assert (
            ok("apply", "-f", "-", stdin=SEED_RUNTIME)
            == "servingruntime.serving.kserve.io/peft-model-server unchanged\n"
        )

        lines = ok("get", "servingruntimes").splitlines()
        assert lines[0].split() == ["NAME", "DISABLED", "MODELTYPE", "CONTAINERS", "AGE"]
        assert re.fullmatch(r"peft-model-server +peft-model +mlserver +\d+[smhd]", lines[1]), lines
        assert ok("get", "sr").splitlines()[1].split()[:3] == [
            "peft-model-server",
            "peft-model",
            "mlserver",
        ]
        item = json.loads(ok("get", "servingruntime", "peft-model-server", "-o", "json"))
        assert item["spec"]["builtInAdapter"]["memBufferBytes"] == 134217728
        assert (
            item["spec"]["containers"][0]["env"][0]["value"] == "peft_model_server.PeftModelServer"
        )
        cluster = ok("get", "clusterservingruntimes").splitlines()
        assert [line.split()[:2] for line in cluster[1:]] == [
            ["huggingface-peft", "peft-model"],
            ["mlserver-1.x", "sklearn"],
            ["mmgw-synthetic", "synthetic"],
            ["triton-2.x", "onnx"],
        ]

        with httpx.Client(base_url=server, timeout=30) as api:
            ready = api.get(f"{ISVCS}/sr-no-runtime").json()["status"]["conditions"][0]
            assert (ready["status"], ready["reason"]) == ("False", "NoSupportingRuntime")
            assert "model format 'tensorrt'" in ready["message"]
            ready = api.get(f"{ISVCS}/sr-missing").json()["status"]["conditions"][0]
            assert (ready["status"], ready["reason"]) == ("False", "RuntimeNotRecognized")
            seed = api.get(f"{ISVCS}/sklearn-mnist").json()["status"]
            assert seed["conditions"][0]["status"] == "True"
            assert seed["runtime"] == {"kind": "ClusterServingRuntime", "name": "mlserver-1.x"}

        table = ok("get", "isvc", "-o", "wide")  # wide has the Ready condition's REASON
        assert re.search(r"sr-no-runtime +\S+ +False .* NoSupportingRuntime", table), table
        assert re.search(r"sr-missing +\S+ +False .* RuntimeNotRecognized", table), table

        with httpx.Client(base_url=deployment.url, timeout=30) as rest:
            response = rest.post("/v2/models/sr-no-runtime/infer", json=seed_body())
            assert response.status_code == 404
            assert response.json()["message"].startswith(
                "model 'sr-no-runtime' has no serving runtime (NoSupportingRuntime)"
            )
            response = rest.post("/v2/models/sklearn-mnist/infer", json=seed_body())
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["contents"]["int64Contents"] == ["8"]

        assert (
            ok("delete", "sr", "peft-model-server")
            == 'servingruntime.serving.kserve.io "peft-model-server" deleted\n'
        )
        assert (
            "No resources found in modelmesh-serving namespace."
            in mmgw("get", "sr", server=server).stderr
        )
    finally:
        with httpx.Client(base_url=server, timeout=30) as api:
            for name in ("sr-no-runtime", "sr-missing"):
                assert api.delete(f"{ISVCS}/{name}").status_code in (200, 404)
            assert api.delete(f"{SRS}/peft-model-server").status_code in (200, 404)
