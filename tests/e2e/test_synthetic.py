"""A synthetic model (memory and time only) through the whole deployment: apply, infer
through Envoy's REST, its real size in the placement table, delete."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway.pod.runtimes.synthetic import write_synthetic
from gateway.tools import launcher

from .conftest import ISVCS, wait_ready

NAME = "synthetic-2mib"
SIZE = 2 * 1024 * 1024


def _isvc(path: str) -> dict[str, object]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": NAME,
            "namespace": "modelmesh-serving",
            "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"},
        },
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "synthetic"},
                    "storage": {
                        "parameters": {"type": "pvc", "name": "my-models-pvc"},
                        "path": path,
                    },
                }
            }
        },
    }


@pytest.fixture
def synthetic(deployment: launcher.Deployment, api: httpx.Client) -> Iterator[str]:
    """The InferenceService's name; deleted afterwards (the deployment is shared)."""
    write_synthetic(deployment.data_dir / "models" / "synthetic" / "2mib.json", SIZE)
    api.put(f"{ISVCS}/{NAME}", json=_isvc("synthetic/2mib.json")).raise_for_status()
    try:
        yield NAME
    finally:
        assert api.delete(f"{ISVCS}/{NAME}").status_code in (200, 404)


def test_a_synthetic_model_serves_row_sums_and_takes_its_declared_size(
    synthetic: str, rest: httpx.Client, api: httpx.Client
) -> None:
    item = wait_ready(api, synthetic)
    assert item["status"]["conditions"][0]["status"] == "True", item["status"]

    body = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [2, 3],
                "datatype": "FP32",
                "contents": {"fp32_contents": [1, 2, 3, 4.5, 5, 6]},
            }
        ]
    }
    response = rest.post(f"/v2/models/{synthetic}/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("predict", "FP64", ["2", "1"])
    assert output["contents"]["fp64Contents"] == [6.0, 15.5]

    model_id = answer["modelName"]
    assert model_id.startswith(f"{synthetic}__isvc-")
    placement = api.get("/v1/placement").json()
    copies = [
        (pod["pod"], model["size_bytes"])
        for pod in placement["pods"]
        for model in pod["models"]
        if model["model_id"] == model_id
    ]
    assert copies and all(size == SIZE for _, size in copies), placement
