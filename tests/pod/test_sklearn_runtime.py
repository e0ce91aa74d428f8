"""The scikit-learn runtime, without any transport."""

from __future__ import annotations

import asyncio
import pickle
import threading
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from gateway.core.errors import InvalidInput, LoadFailed, ModelFormatError, ModelNotInStorage
from gateway.pod.model import InferenceRequest, ModelConfig, Tensor, TensorSpec
from gateway.pod.runtimes.sklearn import SKLearnModel


async def _loaded(path: Path) -> SKLearnModel:
    model = SKLearnModel(ModelConfig("m__isvc-1", "sklearn", path))
    await model.load()
    return model


def _request(array: Any, datatype: str = "FP32", *outputs: str) -> InferenceRequest:
    return InferenceRequest((Tensor.of("predict", array, datatype),), tuple(outputs))


@pytest.fixture(scope="module")
def proba_file(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier with predict_proba (GaussianNB: quick to train)."""
    half = len(digits.data) // 2
    model = GaussianNB().fit(digits.data[:half], digits.target[:half])
    path = tmp_path_factory.mktemp("nb") / "model.pkl"
    path.write_bytes(pickle.dumps(model))  # a plain pickle, not joblib
    return path


async def test_predicts_the_seed_digit(svc_file: Path, digit_898: np.ndarray) -> None:
    model = await _loaded(svc_file)
    (out,) = await model.predict(_request(digit_898))
    assert out.name == "predict" and out.datatype == "INT64"
    assert out.array.shape == (1, 1) and out.array.dtype == np.int64
    assert out.array.item() == 8


async def test_batch_matches_the_estimators_own_predict(
    svc: SVC, svc_file: Path, digits: Any
) -> None:
    rows = digits.data[900:940].astype(np.float32)
    (out,) = await (await _loaded(svc_file)).predict(_request(rows))
    assert out.array.shape == (40, 1)
    assert out.array.ravel().tolist() == svc.predict(rows).tolist()


async def test_metadata_and_size(svc_file: Path) -> None:
    model = await _loaded(svc_file)
    meta = model.metadata()
    assert meta.platform == "sklearn"
    assert meta.inputs == (TensorSpec("input-0", "FP32", (-1, 64)),)
    assert meta.outputs == (TensorSpec("predict", "INT64", (-1, 1)),)
    # Size is the protocol-5 pickle length, counted without building the bytes.
    pickled = len(pickle.dumps(joblib.load(svc_file), protocol=5))
    assert model.size_bytes() == pytest.approx(pickled, rel=0.01)


async def test_predict_proba(proba_file: Path, digits: Any) -> None:
    model = await _loaded(proba_file)
    assert [s.name for s in model.metadata().outputs] == ["predict", "predict_proba"]
    assert model.metadata().outputs[1] == TensorSpec("predict_proba", "FP64", (-1, 10))
    rows = digits.data[898:901].astype(np.float32)
    proba, label = await model.predict(_request(rows, "FP32", "predict_proba", "predict"))
    assert proba.name == "predict_proba" and proba.datatype == "FP64"
    assert proba.array.shape == (3, 10)
    np.testing.assert_allclose(proba.array.sum(axis=1), 1.0)
    assert label.array.ravel().tolist() == proba.array.argmax(axis=1).tolist()


async def test_unknown_output_names_the_available_ones(
    svc_file: Path, digit_898: np.ndarray
) -> None:
    model = await _loaded(svc_file)  # SVC without probability=True has no predict_proba
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(digit_898, "FP32", "predict_proba"))
    assert err.value.message == "output 'predict_proba' is not available; model offers 'predict'"


@pytest.mark.parametrize("datatype", ["INT32", "FP64"])
async def test_wrong_datatype(svc_file: Path, digit_898: np.ndarray, datatype: str) -> None:
    model = await _loaded(svc_file)
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(digit_898, datatype))
    assert err.value.message == (
        f"input 'predict': datatype '{datatype}' given, model expects 'FP32'"
    )


@pytest.mark.parametrize(
    ("array", "shape"),
    [
        (np.zeros((1, 63)), "[1, 63]"),
        (np.zeros((2, 65)), "[2, 65]"),
        (np.zeros(64), "[64]"),  # rank must be 2: one row is [1, 64]
        (np.zeros((1, 1, 64)), "[1, 1, 64]"),
    ],
)
async def test_wrong_shape(svc_file: Path, array: np.ndarray, shape: str) -> None:
    model = await _loaded(svc_file)
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(array))
    assert err.value.message == f"input 'predict': shape {shape} given, model expects [-1, 64]"


async def test_exactly_one_input(svc_file: Path, digit_898: np.ndarray) -> None:
    model = await _loaded(svc_file)
    two = InferenceRequest((Tensor.of("a", digit_898), Tensor.of("b", digit_898)))
    with pytest.raises(InvalidInput, match="model expects 1 input, got 2"):
        await model.predict(two)


async def test_regressor_answers_fp64(digits: Any, tmp_path: Path) -> None:
    reg = LinearRegression().fit(digits.data[:500], digits.target[:500].astype(float))
    joblib.dump(reg, tmp_path / "reg.joblib")
    model = await _loaded(tmp_path / "reg.joblib")
    assert model.metadata().outputs == (TensorSpec("predict", "FP64", (-1, 1)),)
    rows = digits.data[600:602].astype(np.float32)
    (out,) = await model.predict(_request(rows))
    assert out.datatype == "FP64" and out.array.dtype == np.float64
    np.testing.assert_allclose(out.array.ravel(), reg.predict(rows))


async def test_string_labels_answer_bytes(digits: Any, tmp_path: Path) -> None:
    labels = np.where(digits.target[:300] % 2 == 0, "even", "odd")
    tree = DecisionTreeClassifier(random_state=0).fit(digits.data[:300], labels)
    joblib.dump(tree, tmp_path / "tree.joblib")
    model = await _loaded(tmp_path / "tree.joblib")
    assert model.metadata().outputs[0] == TensorSpec("predict", "BYTES", (-1, 1))
    (out,) = await model.predict(_request(digits.data[:2]))
    assert out.array.ravel().tolist() == [s.encode() for s in tree.predict(digits.data[:2])]


async def test_a_folder_with_one_model_file(
    svc: SVC, tmp_path: Path, digit_898: np.ndarray
) -> None:
    (tmp_path / "README.txt").write_text("not a model")
    joblib.dump(svc, tmp_path / "model.pickle")
    (out,) = await (await _loaded(tmp_path)).predict(_request(digit_898))
    assert out.array.item() == 8


async def test_a_folder_needs_exactly_one_model_file(svc: SVC, tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"must hold exactly one .* found none"):
        await _loaded(tmp_path)
    joblib.dump(svc, tmp_path / "a.joblib")
    joblib.dump(svc, tmp_path / "b.pkl")
    with pytest.raises(ModelFormatError, match=r"found a\.joblib, b\.pkl"):
        await _loaded(tmp_path)


async def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.joblib"
    with pytest.raises(LoadFailed) as err:
        await _loaded(path)
    assert type(err.value) is ModelNotInStorage  # a LoadFailed
    assert err.value.message == f"model file not found: {path}"


async def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(b"\x00this is not a pickle\xff" * 10)
    with pytest.raises(ModelFormatError, match=r"cannot read '.*model.joblib' as a scikit-learn"):
        await _loaded(path)


async def test_a_pickle_without_predict(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelFormatError, match="holds a dict, which has no predict method"):
        await _loaded(path)


async def test_an_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx")
    with pytest.raises(ModelFormatError, match=r"is not a .joblib/.pkl/.pickle file"):
        await _loaded(path)


async def test_unload_drops_the_estimator(svc_file: Path) -> None:
    model = await _loaded(svc_file)
    await model.unload()
    assert model._estimator is None


async def test_loading_runs_in_a_worker_thread(
    svc_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = joblib.load
    started, loop_ran = threading.Event(), threading.Event()

    def blocking_load(path: Any) -> Any:
        # Finishes only once the event loop has run while this load blocks:
        # a load on the loop's own thread would wait here until the timeout.
        started.set()
        assert loop_ran.wait(30), "the event loop did not run during the load"
        return real_load(path)

    async def loop_side() -> None:
        while not started.is_set():
            await asyncio.sleep(0.001)
        loop_ran.set()

    monkeypatch.setattr(joblib, "load", blocking_load)
    witness = asyncio.create_task(loop_side())
    await _loaded(svc_file)
    await witness


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
async def test_nan_and_infinity_are_the_requests_fault(svc_file: Path, value: float) -> None:
    """scikit-learn's SVC refuses them (ValueError): a client error, 400 / INVALID_ARGUMENT."""
    model = SKLearnModel(ModelConfig("m", "sklearn", svc_file))
    await model.load()
    row = np.zeros((1, 64), np.float32)
    row[0, 3] = value
    with pytest.raises(InvalidInput, match="NaN or infinite values"):
        await model.predict(InferenceRequest((Tensor.of("predict", row),)))
