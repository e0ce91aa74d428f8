"""XGBoost and LightGBM models through the whole deployment: trained here on iris,
written into the PVC folder, applied as InferenceServices (modelFormat xgboost /
lightgbm), asked through Envoy's REST and native gRPC, deleted at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import lightgbm
import numpy as np
import pytest
import tritonclient.http as triton
import xgboost
from sklearn.datasets import load_iris

from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.pod import tensors
from gateway.pod.model import Tensor
from gateway.tools import launcher

from .conftest import ISVCS, curl_json, inference_service, wait_ready

XGB_NAME = "xgboost-iris"
LGB_NAME = "lightgbm-iris"
# name -> (model format, folder under the PVC, output datatype, its REST contents field)
FORMATS = {
    XGB_NAME: ("xgboost", "xgboost-iris", "FP32", "fp32Contents"),
    LGB_NAME: ("lightgbm", "lightgbm-iris", "FP64", "fp64Contents"),
}
ROWS = load_iris().data[::30].astype(np.float32)  # 5 rows, all three classes


@pytest.fixture(scope="module")
def expected(deployment: launcher.Deployment, api: httpx.Client) -> Iterator[dict[str, np.ndarray]]:
    """Both models trained, saved (xgboost as .ubj in a folder, lightgbm as the
    folder's model.bst, KServe's name) and applied; name -> the library's own
    class probabilities for ROWS. Deleted afterwards: the deployment is shared."""
    x, y = load_iris(return_X_y=True)
    models = deployment.data_dir / "models"
    xgb = xgboost.XGBClassifier(n_estimators=5, max_depth=2).fit(x, y)
    lgb = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(x, y)
    for _, folder, _, _ in FORMATS.values():
        (models / folder).mkdir(parents=True, exist_ok=True)
    xgb.save_model(models / "xgboost-iris" / "model.ubj")
    lgb.booster_.save_model(models / "lightgbm-iris" / "model.bst")
    try:
        for name, (model_format, folder, _, _) in FORMATS.items():
            api.put(
                f"{ISVCS}/{name}", json=inference_service(name, model_format, folder)
            ).raise_for_status()
        for name in FORMATS:
            item = wait_ready(api, name)
            assert item["status"]["conditions"][0]["status"] == "True", item["status"]
        yield {XGB_NAME: xgb.predict_proba(ROWS), LGB_NAME: lgb.predict_proba(ROWS)}
    finally:
        for name in FORMATS:
            assert api.delete(f"{ISVCS}/{name}").status_code in (200, 404)


def _rest_body(**extra: Any) -> dict[str, Any]:
    tensor = {
        "name": "input-0",
        "shape": list(ROWS.shape),
        "datatype": "FP32",
        "contents": {"fp32_contents": ROWS.ravel().tolist()},
    }
    return {"inputs": [tensor], **extra}


@pytest.mark.parametrize("name", FORMATS)
def test_rest_infer_answers_the_librarys_probabilities(
    expected: dict[str, np.ndarray], rest: httpx.Client, name: str
) -> None:
    _, _, datatype, field = FORMATS[name]
    response = rest.post(f"/v2/models/{name}/infer", json=_rest_body())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["modelName"].startswith(f"{name}__isvc-")
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"]) == ("predict", datatype)
    assert output["shape"] == ["5", "3"]
    got = np.array(output["contents"][field]).reshape(5, 3)
    np.testing.assert_allclose(got, expected[name], rtol=1e-6)


@pytest.mark.parametrize("name", FORMATS)
def test_rest_metadata(expected: dict[str, np.ndarray], rest: httpx.Client, name: str) -> None:
    model_format, _, datatype, _ = FORMATS[name]
    metadata = rest.get(f"/v2/models/{name}").json()
    assert metadata["platform"] == model_format
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [
        {"name": "predict", "datatype": datatype, "shape": [-1, 3]},
        {"name": "predict_proba", "datatype": datatype, "shape": [-1, 3]},
    ]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("raw", [False, True])
def test_grpc_infer_with_requested_outputs(
    expected: dict[str, np.ndarray], stub: v2_grpc.GRPCInferenceServiceStub, name: str, raw: bool
) -> None:
    _, _, datatype, _ = FORMATS[name]
    request = tensors.make_request(
        name, [Tensor.of("x", ROWS)], outputs=("predict_proba", "predict"), raw=raw
    )
    proba, predict = tensors.decode_response(stub.ModelInfer(request, timeout=30))
    assert (proba.name, predict.name) == ("predict_proba", "predict")
    assert proba.datatype == predict.datatype == datatype and proba.shape == (5, 3)
    np.testing.assert_allclose(proba.array, expected[name], rtol=1e-6)
    np.testing.assert_array_equal(proba.array, predict.array)


@pytest.mark.parametrize("name", FORMATS)
def test_bad_requests_are_invalid_argument(
    expected: dict[str, np.ndarray], stub: v2_grpc.GRPCInferenceServiceStub, name: str
) -> None:
    cases = [
        (
            tensors.make_request(name, [Tensor.of("x", np.zeros((1, 5), np.float32))]),
            "shape [1, 5] given, model expects [-1, 4]",
        ),
        (
            tensors.make_request(name, [Tensor.of("x", ROWS.astype(np.float64))]),
            "datatype 'FP64' given, model expects 'FP32'",
        ),
        (
            tensors.make_request(name, [Tensor.of("x", ROWS)], outputs=("labels",)),
            "output 'labels' is not available; model offers 'predict', 'predict_proba'",
        ),
    ]
    for request, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()


def test_a_cut_short_model_fails_to_load_and_the_pods_go_on(
    expected: dict[str, np.ndarray],
    deployment: launcher.Deployment,
    api: httpx.Client,
    rest: httpx.Client,
) -> None:
    """A truncated file would crash XGBoost (and LightGBM) inside the pod; the
    runtimes reject it first, and every pod keeps serving."""
    folder: Path = deployment.data_dir / "models" / "xgboost-cut"
    folder.mkdir(parents=True, exist_ok=True)
    whole = (deployment.data_dir / "models" / "xgboost-iris" / "model.ubj").read_bytes()
    (folder / "model.ubj").write_bytes(whole[:65])
    api.put(f"{ISVCS}/xgboost-cut", json=inference_service("xgboost-cut", "xgboost", "xgboost-cut"))
    try:
        item = wait_ready(api, "xgboost-cut")
        condition = item["status"]["conditions"][0]
        assert condition["status"] != "True" and condition["reason"] == "ModelLoadFailed"
        assert "not a complete UBJSON document" in str(item["status"])
        for name in FORMATS:
            assert rest.post(f"/v2/models/{name}/infer", json=_rest_body()).status_code == 200
        assert all(process.popen.poll() is None for process in deployment.processes)
    finally:
        assert api.delete(f"{ISVCS}/xgboost-cut").status_code in (200, 404)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_with_requested_outputs(
    expected: dict[str, np.ndarray], deployment: launcher.Deployment, name: str, binary: bool
) -> None:
    """The OIP REST form, as tritonclient.http sends it (binary by default)."""
    _, _, datatype, _ = FORMATS[name]
    client = triton.InferenceServerClient(deployment.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("input-0", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS, binary_data=binary)
        wanted = [triton.InferRequestedOutput("predict_proba", binary_data=binary)]
        result = client.infer(name, [tensor], outputs=wanted)
    finally:
        client.close()
    (output,) = result.get_response()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "predict_proba",
        datatype,
        [5, 3],
    )
    np.testing.assert_allclose(result.as_numpy("predict_proba"), expected[name], rtol=1e-6)


@pytest.mark.parametrize("name", FORMATS)
def test_curl_with_the_kserve_docs_body(
    expected: dict[str, np.ndarray], deployment: launcher.Deployment, name: str
) -> None:
    body = {
        "inputs": [{"name": "input-0", "shape": [5, 4], "datatype": "FP32", "data": ROWS.tolist()}]
    }
    status, answer = curl_json(f"{deployment.url}/v2/models/{name}/infer", body)
    assert status == 200, answer
    assert answer["model_name"].startswith(f"{name}__isvc-")
    (output,) = answer["outputs"]  # the default output: the class probabilities
    assert (output["name"], output["shape"]) == ("predict", [5, 3])
    np.testing.assert_allclose(np.array(output["data"]).reshape(5, 3), expected[name], rtol=1e-6)
