"""The XGBoost runtime, without any transport: small boosters trained here on iris
and diabetes, saved as JSON and UBJSON."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost
from sklearn.datasets import load_diabetes, load_iris

from gateway.core.errors import InvalidInput, LoadFailed, ModelFormatError, ModelNotInStorage
from gateway.pod.model import InferenceRequest, ModelConfig, Tensor, TensorSpec
from gateway.pod.runtimes import RuntimeRegistry
from gateway.pod.runtimes.xgboost import XGBoostModel

SUFFIXES = (".json", ".ubj")


async def _loaded(path: Path) -> XGBoostModel:
    model = XGBoostModel(ModelConfig("m__isvc-1", "xgboost", path))
    await model.load()
    return model


def _request(array: Any, datatype: str = "FP32", *outputs: str) -> InferenceRequest:
    return InferenceRequest((Tensor.of("input-0", array, datatype),), tuple(outputs))


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def rows(iris: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Rows of all three classes, as a request sends them."""
    return iris[0][::15]


@pytest.fixture(scope="module")
def classifier(iris: tuple[np.ndarray, np.ndarray]) -> xgboost.XGBClassifier:
    return xgboost.XGBClassifier(n_estimators=5, max_depth=2).fit(*iris)


@pytest.fixture(scope="module")
def saved(
    classifier: xgboost.XGBClassifier, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The iris classifier in each supported format: suffix -> file."""
    folder = tmp_path_factory.mktemp("xgb-iris")
    files = {suffix: folder / f"model{suffix}" for suffix in SUFFIXES}
    for path in files.values():
        classifier.save_model(path)
    return files


@pytest.mark.parametrize("suffix", SUFFIXES)
async def test_multiclass_answers_the_librarys_probabilities(
    suffix: str, saved: dict[str, Path], classifier: xgboost.XGBClassifier, rows: np.ndarray
) -> None:
    model = await _loaded(saved[suffix])
    (out,) = await model.predict(_request(rows))
    assert (out.name, out.datatype, out.array.dtype) == ("predict", "FP32", np.float32)
    assert out.array.shape == (len(rows), 3)
    np.testing.assert_allclose(out.array, classifier.predict_proba(rows), rtol=1e-6)
    np.testing.assert_allclose(
        out.array, xgboost.Booster(model_file=saved[suffix]).inplace_predict(rows), rtol=1e-6
    )
    assert out.array.argmax(axis=1).tolist() == classifier.predict(rows).tolist()


@pytest.mark.parametrize("suffix", SUFFIXES)
async def test_metadata_and_size(suffix: str, saved: dict[str, Path]) -> None:
    model = await _loaded(saved[suffix])
    meta = model.metadata()
    assert meta.platform == "xgboost"
    assert meta.inputs == (TensorSpec("input-0", "FP32", (-1, 4)),)
    assert meta.outputs == (
        TensorSpec("predict", "FP32", (-1, 3)),
        TensorSpec("predict_proba", "FP32", (-1, 3)),
    )
    # The UBJSON serialisation: the same for both files, though the JSON file is larger.
    ubj = xgboost.Booster(model_file=saved[".ubj"]).save_raw(raw_format="ubj")
    assert model.size_bytes() == len(ubj) > 0


async def test_both_outputs_in_the_order_asked(
    saved: dict[str, Path], classifier: xgboost.XGBClassifier, rows: np.ndarray
) -> None:
    model = await _loaded(saved[".json"])
    proba, predict = await model.predict(_request(rows, "FP32", "predict_proba", "predict"))
    assert (proba.name, proba.datatype, predict.name) == ("predict_proba", "FP32", "predict")
    np.testing.assert_allclose(proba.array, classifier.predict_proba(rows), rtol=1e-6)
    np.testing.assert_array_equal(proba.array, predict.array)


async def test_binary_classifier(
    iris: tuple[np.ndarray, np.ndarray], rows: np.ndarray, tmp_path: Path
) -> None:
    x, y = iris
    clf = xgboost.XGBClassifier(n_estimators=4, max_depth=2).fit(x, (y == 1).astype(int))
    clf.save_model(tmp_path / "binary.ubj")
    model = await _loaded(tmp_path / "binary.ubj")
    assert model.metadata().outputs == (
        TensorSpec("predict", "FP32", (-1, 1)),
        TensorSpec("predict_proba", "FP32", (-1, 2)),
    )
    predict, proba = await model.predict(_request(rows, "FP32", "predict", "predict_proba"))
    assert predict.array.shape == (len(rows), 1) and proba.array.shape == (len(rows), 2)
    expected = clf.predict_proba(rows)
    np.testing.assert_allclose(predict.array.ravel(), expected[:, 1], rtol=1e-6)
    np.testing.assert_allclose(proba.array, expected, rtol=1e-6)


@pytest.mark.parametrize("suffix", SUFFIXES)
async def test_regressor(suffix: str, tmp_path: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    reg = xgboost.XGBRegressor(n_estimators=5, max_depth=3).fit(x, y)
    reg.save_model(tmp_path / f"reg{suffix}")
    model = await _loaded(tmp_path / f"reg{suffix}")
    assert model.metadata().inputs == (TensorSpec("input-0", "FP32", (-1, 10)),)
    assert model.metadata().outputs == (TensorSpec("predict", "FP32", (-1, 1)),)
    (out,) = await model.predict(_request(x[:7]))
    assert out.datatype == "FP32" and out.array.shape == (7, 1)
    np.testing.assert_allclose(out.array.ravel(), reg.predict(x[:7]), rtol=1e-6)


async def test_a_booster_from_xgboost_train_with_softmax(
    iris: tuple[np.ndarray, np.ndarray], rows: np.ndarray, tmp_path: Path
) -> None:
    """multi:softmax answers the class index as a float; no predict_proba."""
    x, y = iris
    params = {"objective": "multi:softmax", "num_class": 3, "max_depth": 2}
    booster = xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=3)
    booster.save_model(tmp_path / "softmax.json")
    model = await _loaded(tmp_path / "softmax.json")
    assert model.metadata().outputs == (TensorSpec("predict", "FP32", (-1, 1)),)
    (out,) = await model.predict(_request(rows))
    np.testing.assert_array_equal(out.array.ravel(), booster.predict(xgboost.DMatrix(rows)))
    assert set(out.array.ravel().tolist()) == {0.0, 1.0, 2.0}


async def test_an_empty_batch(saved: dict[str, Path]) -> None:
    model = await _loaded(saved[".json"])
    predict, proba = await model.predict(
        _request(np.zeros((0, 4)), "FP32", "predict", "predict_proba")
    )
    assert predict.array.shape == proba.array.shape == (0, 3)


async def test_unknown_output_names_the_available_ones(
    saved: dict[str, Path], rows: np.ndarray
) -> None:
    model = await _loaded(saved[".json"])
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(rows, "FP32", "predict_log_proba"))
    assert err.value.message == (
        "output 'predict_log_proba' is not available; model offers 'predict', 'predict_proba'"
    )


@pytest.mark.parametrize("datatype", ["FP64", "INT32"])
async def test_wrong_datatype(saved: dict[str, Path], rows: np.ndarray, datatype: str) -> None:
    model = await _loaded(saved[".json"])
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(rows, datatype))
    assert err.value.message == (
        f"input 'input-0': datatype '{datatype}' given, model expects 'FP32'"
    )


@pytest.mark.parametrize(
    ("array", "shape"),
    [
        (np.zeros((1, 3)), "[1, 3]"),  # too few features
        (np.zeros((2, 5)), "[2, 5]"),  # too many
        (np.zeros(4), "[4]"),  # rank must be 2: one row is [1, 4]
        (np.zeros((1, 1, 4)), "[1, 1, 4]"),
    ],
)
async def test_wrong_shape(saved: dict[str, Path], array: np.ndarray, shape: str) -> None:
    model = await _loaded(saved[".json"])
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(array))
    assert err.value.message == f"input 'input-0': shape {shape} given, model expects [-1, 4]"


async def test_exactly_one_input(saved: dict[str, Path], rows: np.ndarray) -> None:
    model = await _loaded(saved[".json"])
    two = InferenceRequest((Tensor.of("a", rows), Tensor.of("b", rows)))
    with pytest.raises(InvalidInput, match="model expects 1 input, got 2"):
        await model.predict(two)


async def test_a_folder_with_one_model_file(
    classifier: xgboost.XGBClassifier, rows: np.ndarray, tmp_path: Path
) -> None:
    (tmp_path / "README.md").write_text("not a model")
    classifier.save_model(tmp_path / "model.ubj")
    (out,) = await (await _loaded(tmp_path)).predict(_request(rows))
    np.testing.assert_allclose(out.array, classifier.predict_proba(rows), rtol=1e-6)


async def test_a_folder_needs_exactly_one_model_file(
    classifier: xgboost.XGBClassifier, tmp_path: Path
) -> None:
    with pytest.raises(ModelFormatError, match=r"exactly one .json/.ubj file; found none"):
        await _loaded(tmp_path)
    classifier.save_model(tmp_path / "a.json")
    classifier.save_model(tmp_path / "b.ubj")
    with pytest.raises(ModelFormatError, match=r"found a\.json, b\.ubj"):
        await _loaded(tmp_path)


async def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(LoadFailed) as err:
        await _loaded(path)
    assert type(err.value) is ModelNotInStorage  # a LoadFailed
    assert err.value.message == f"model file not found: {path}"


async def test_unreadable_file(saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a format error: the file is there but cannot be read (root ignores chmod)."""
    real_open = Path.open

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == saved[".json"]:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(LoadFailed) as err:
        await _loaded(saved[".json"])
    assert type(err.value) is LoadFailed
    assert err.value.message == f"cannot read model file '{saved['.json']}': Permission denied"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("model.json", b"", "not a JSON or UBJSON object"),
        ("model.json", b"not json at all", "not a JSON or UBJSON object"),
        ("model.ubj", b"\x00\xffgarbage", "not a JSON or UBJSON object"),
        ("model.json", b"tree\nversion=v4\nnum_class=1\n", "not a JSON"),  # LightGBM's text
        ("model.json", b'{"weights": [1, 2, 3]}', "Invalid cast"),  # JSON, not a model
        ("model.json", b'{"learner": {', "raw_str_.size():13"),  # cut short
        ("model.ubj", b"{\x00\xff\x01", "complete UBJSON document (no length at byte 1)"),
    ],
)
async def test_not_an_xgboost_model(name: str, content: bytes, reason: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelFormatError) as err:
        await _loaded(path)
    message = err.value.message
    assert message.startswith(f"cannot read '{path}' as an XGBoost model: ")
    assert reason in message
    assert "\n" not in message and "Stack trace" not in message and "c_api.cc" not in message


@pytest.mark.parametrize("suffix", SUFFIXES)
async def test_a_file_cut_short_is_a_format_error_not_a_crash(
    suffix: str, saved: dict[str, Path], tmp_path: Path
) -> None:
    """XGBoost itself segfaults on some cut UBJSON files (e.g. 65 bytes of this one)."""
    data = saved[suffix].read_bytes()
    path = tmp_path / f"cut{suffix}"
    for length in [1, 2, 10, 65, 100, len(data) // 2, len(data) - 1]:
        path.write_bytes(data[:length])
        with pytest.raises(ModelFormatError, match=r"as an XGBoost model: "):
            await _loaded(path)


async def test_bytes_after_a_ubjson_document(saved: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "model.ubj"
    path.write_bytes(saved[".ubj"].read_bytes() + b"xx")
    with pytest.raises(ModelFormatError, match=r"not a UBJSON document: 2 bytes follow its end"):
        await _loaded(path)


@pytest.mark.parametrize("name", ["model.bst", "model.txt", "model.pkl"])
async def test_an_unsupported_suffix(
    name: str, classifier: xgboost.XGBClassifier, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(ModelFormatError) as err:
        await _loaded(path)
    assert err.value.message == f"'{path}' is not a .json/.ubj file"


async def test_unload_drops_the_booster(saved: dict[str, Path]) -> None:
    model = await _loaded(saved[".json"])
    await model.unload()
    assert model._booster is None


async def test_loading_runs_in_a_worker_thread(
    saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = xgboost.Booster.load_model
    started, loop_ran = threading.Event(), threading.Event()

    def blocking_load(self: xgboost.Booster, fname: Any) -> None:
        # Finishes only once the event loop has run while this load blocks.
        started.set()
        assert loop_ran.wait(30), "the event loop did not run during the load"
        real_load(self, fname)

    async def loop_side() -> None:
        while not started.is_set():
            await asyncio.sleep(0.001)
        loop_ran.set()

    monkeypatch.setattr(xgboost.Booster, "load_model", blocking_load)
    witness = asyncio.create_task(loop_side())
    await _loaded(saved[".json"])
    await witness


def test_registered_as_a_builtin_runtime() -> None:
    assert RuntimeRegistry().get("xgboost") is XGBoostModel


async def test_a_json_model_saved_before_1_6_loads_converted_with_a_warning(
    saved: dict[str, Path],
    classifier: xgboost.XGBClassifier,
    rows: np.ndarray,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ModelMesh's mushroom.json is such a file: XGBoost marks the format by the version the
    file names, and drops its reader after 3.2. The pod holds it as the current format."""
    document = json.loads(saved[".json"].read_text())
    document["version"] = [1, 5, 1]
    old = tmp_path / "mushroom.json"
    old.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="gateway.pod.runtimes.xgboost"):
        model = await _loaded(old)
    assert "saved by XGBoost 1.5.1 (before 1.6): converted at load" in caplog.text
    (out,) = await model.predict(_request(rows))
    np.testing.assert_allclose(out.array, classifier.predict_proba(rows), rtol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.pod.runtimes.xgboost"):
        await _loaded(saved[".json"])  # a current file: nothing to say
    assert "before 1.6" not in caplog.text
