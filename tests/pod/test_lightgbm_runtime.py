"""The LightGBM runtime, without any transport: small boosters trained here on iris
and diabetes, saved as .txt and .bst (both LightGBM's text format)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

from gateway.core.errors import InvalidInput, LoadFailed, ModelFormatError, ModelNotInStorage
from gateway.pod.model import InferenceRequest, ModelConfig, Tensor, TensorSpec
from gateway.pod.runtimes import RuntimeRegistry
from gateway.pod.runtimes.lightgbm import LightGBMModel

SUFFIXES = (".txt", ".bst")


async def _loaded(path: Path) -> LightGBMModel:
    model = LightGBMModel(ModelConfig("m__isvc-1", "lightgbm", path))
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
def classifier(iris: tuple[np.ndarray, np.ndarray]) -> lightgbm.LGBMClassifier:
    return lightgbm.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(*iris)


@pytest.fixture(scope="module")
def saved(
    classifier: lightgbm.LGBMClassifier, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The iris classifier in each supported file name: suffix -> file."""
    folder = tmp_path_factory.mktemp("lgb-iris")
    files = {suffix: folder / f"model{suffix}" for suffix in SUFFIXES}
    for path in files.values():
        classifier.booster_.save_model(path)
    return files


@pytest.mark.parametrize("suffix", SUFFIXES)
async def test_multiclass_answers_the_librarys_probabilities(
    suffix: str, saved: dict[str, Path], classifier: lightgbm.LGBMClassifier, rows: np.ndarray
) -> None:
    model = await _loaded(saved[suffix])
    (out,) = await model.predict(_request(rows))
    assert (out.name, out.datatype, out.array.dtype) == ("predict", "FP64", np.float64)
    assert out.array.shape == (len(rows), 3)
    np.testing.assert_allclose(out.array, classifier.predict_proba(rows))
    np.testing.assert_allclose(out.array, lightgbm.Booster(model_file=saved[suffix]).predict(rows))
    assert out.array.argmax(axis=1).tolist() == classifier.predict(rows).tolist()


@pytest.mark.parametrize("suffix", SUFFIXES)
async def test_metadata_and_size(suffix: str, saved: dict[str, Path]) -> None:
    model = await _loaded(saved[suffix])
    meta = model.metadata()
    assert meta.platform == "lightgbm"
    assert meta.inputs == (TensorSpec("input-0", "FP32", (-1, 4)),)
    assert meta.outputs == (
        TensorSpec("predict", "FP64", (-1, 3)),
        TensorSpec("predict_proba", "FP64", (-1, 3)),
    )
    assert model.size_bytes() == saved[suffix].stat().st_size > 0


async def test_both_outputs_in_the_order_asked(
    saved: dict[str, Path], classifier: lightgbm.LGBMClassifier, rows: np.ndarray
) -> None:
    model = await _loaded(saved[".txt"])
    proba, predict = await model.predict(_request(rows, "FP32", "predict_proba", "predict"))
    assert (proba.name, proba.datatype, predict.name) == ("predict_proba", "FP64", "predict")
    np.testing.assert_allclose(proba.array, classifier.predict_proba(rows))
    np.testing.assert_array_equal(proba.array, predict.array)


async def test_binary_classifier(
    iris: tuple[np.ndarray, np.ndarray], rows: np.ndarray, tmp_path: Path
) -> None:
    x, y = iris
    clf = lightgbm.LGBMClassifier(n_estimators=4, num_leaves=4, verbose=-1)
    clf.fit(x, (y == 1).astype(int))
    clf.booster_.save_model(tmp_path / "binary.bst")
    model = await _loaded(tmp_path / "binary.bst")
    assert model.metadata().outputs == (
        TensorSpec("predict", "FP64", (-1, 1)),
        TensorSpec("predict_proba", "FP64", (-1, 2)),
    )
    predict, proba = await model.predict(_request(rows, "FP32", "predict", "predict_proba"))
    assert predict.array.shape == (len(rows), 1) and proba.array.shape == (len(rows), 2)
    expected = clf.predict_proba(rows)
    np.testing.assert_allclose(predict.array.ravel(), expected[:, 1])
    np.testing.assert_allclose(proba.array, expected)


@pytest.mark.parametrize("suffix", SUFFIXES)
async def test_regressor(suffix: str, tmp_path: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    reg = lightgbm.LGBMRegressor(n_estimators=5, num_leaves=8, verbose=-1).fit(x, y)
    reg.booster_.save_model(tmp_path / f"reg{suffix}")
    model = await _loaded(tmp_path / f"reg{suffix}")
    assert model.metadata().inputs == (TensorSpec("input-0", "FP32", (-1, 10)),)
    assert model.metadata().outputs == (TensorSpec("predict", "FP64", (-1, 1)),)
    (out,) = await model.predict(_request(x[:7]))
    assert out.datatype == "FP64" and out.array.shape == (7, 1)
    np.testing.assert_allclose(out.array.ravel(), reg.predict(x[:7]))


async def test_a_booster_from_lightgbm_train(
    iris: tuple[np.ndarray, np.ndarray], rows: np.ndarray, tmp_path: Path
) -> None:
    x, y = iris
    params = {"objective": "multiclassova", "num_class": 3, "num_leaves": 4, "verbose": -1}
    booster = lightgbm.train(params, lightgbm.Dataset(x, label=y), num_boost_round=3)
    booster.save_model(tmp_path / "ova.txt")
    model = await _loaded(tmp_path / "ova.txt")
    assert [spec.shape for spec in model.metadata().outputs] == [(-1, 3), (-1, 3)]
    (out,) = await model.predict(_request(rows))
    np.testing.assert_allclose(out.array, booster.predict(rows))


async def test_an_empty_batch(saved: dict[str, Path]) -> None:
    model = await _loaded(saved[".txt"])
    predict, proba = await model.predict(
        _request(np.zeros((0, 4)), "FP32", "predict", "predict_proba")
    )
    assert predict.array.shape == proba.array.shape == (0, 3)


async def test_unknown_output_names_the_available_ones(
    saved: dict[str, Path], rows: np.ndarray
) -> None:
    model = await _loaded(saved[".txt"])
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(rows, "FP32", "leaf_index"))
    assert err.value.message == (
        "output 'leaf_index' is not available; model offers 'predict', 'predict_proba'"
    )


@pytest.mark.parametrize("datatype", ["FP64", "INT64"])
async def test_wrong_datatype(saved: dict[str, Path], rows: np.ndarray, datatype: str) -> None:
    model = await _loaded(saved[".txt"])
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
    model = await _loaded(saved[".txt"])
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(array))
    assert err.value.message == f"input 'input-0': shape {shape} given, model expects [-1, 4]"


async def test_exactly_one_input(saved: dict[str, Path], rows: np.ndarray) -> None:
    model = await _loaded(saved[".txt"])
    two = InferenceRequest((Tensor.of("a", rows), Tensor.of("b", rows)))
    with pytest.raises(InvalidInput, match="model expects 1 input, got 2"):
        await model.predict(two)


async def test_a_folder_with_one_model_file(
    classifier: lightgbm.LGBMClassifier, rows: np.ndarray, tmp_path: Path
) -> None:
    (tmp_path / "README.md").write_text("not a model")
    classifier.booster_.save_model(tmp_path / "model.bst")
    (out,) = await (await _loaded(tmp_path)).predict(_request(rows))
    np.testing.assert_allclose(out.array, classifier.predict_proba(rows))


async def test_a_folder_needs_exactly_one_model_file(
    classifier: lightgbm.LGBMClassifier, tmp_path: Path
) -> None:
    with pytest.raises(ModelFormatError, match=r"must hold exactly one .txt/.bst file; found none"):
        await _loaded(tmp_path)
    classifier.booster_.save_model(tmp_path / "model.bst")
    (tmp_path / "README.txt").write_text("a .txt beside the model is a candidate too")
    with pytest.raises(ModelFormatError, match=r"found README\.txt, model\.bst"):
        await _loaded(tmp_path)


async def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    with pytest.raises(LoadFailed) as err:
        await _loaded(path)
    assert type(err.value) is ModelNotInStorage  # a LoadFailed
    assert err.value.message == f"model file not found: {path}"


async def test_unreadable_file(saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a format error: the file is there but cannot be read (root ignores chmod)."""
    real_read = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self == saved[".txt"]:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(LoadFailed) as err:
        await _loaded(saved[".txt"])
    assert type(err.value) is LoadFailed
    assert err.value.message == f"cannot read model file '{saved['.txt']}': Permission denied"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "Model file doesn't specify the number of classes"),
        (b"not a model", "Model file doesn't specify the number of classes"),
        (b"tree\nversion=v4\n", "Model file doesn't specify the number of classes"),
        (b'{"learner": {"attributes": {}}}', "doesn't specify"),  # XGBoost's JSON
        (b"tree\n\x00\xff\xfe", "not a text file (byte 6 is not UTF-8)"),
    ],
)
async def test_not_a_lightgbm_model(content: bytes, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "model.txt"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError) as err:
        await _loaded(path)
    assert err.value.message.startswith(f"cannot read '{path}' as a LightGBM model: ")
    assert reason in err.value.message


async def test_a_file_cut_short_is_a_format_error_not_a_crash(
    saved: dict[str, Path], tmp_path: Path
) -> None:
    """LightGBM itself aborts (std::terminate) on a file cut inside its trees, and
    segfaults on one cut inside its parameters section."""
    text = saved[".txt"].read_bytes()
    in_parameters = text.index(b"\nparameters:") + 100
    path = tmp_path / "cut.txt"
    for length, reason in [
        (text.index(b"tree_sizes=") + 15, "tree 0 is not where tree_sizes puts it"),
        (text.index(b"Tree=") + 5, "tree 1 is not where tree_sizes puts it"),
        (text.index(b"end of trees") - 3, "its trees end past the end of the file"),
        (in_parameters, "its parameters section has no end"),
    ]:
        path.write_bytes(text[:length])
        with pytest.raises(ModelFormatError) as err:
            await _loaded(path)
        assert err.value.message.endswith(f": {reason} (is the file cut short?)")


@pytest.mark.parametrize("name", ["model.json", "model.ubj", "model.pkl"])
async def test_an_unsupported_suffix(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(ModelFormatError) as err:
        await _loaded(path)
    assert err.value.message == f"'{path}' is not a .txt/.bst file"


async def test_unload_drops_the_booster(saved: dict[str, Path]) -> None:
    model = await _loaded(saved[".txt"])
    await model.unload()
    assert model._booster is None


async def test_loading_runs_in_a_worker_thread(
    saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_booster = lightgbm.Booster
    started, loop_ran = threading.Event(), threading.Event()

    def blocking_booster(**kwargs: Any) -> lightgbm.Booster:
        # Finishes only once the event loop has run while this load blocks.
        started.set()
        assert loop_ran.wait(30), "the event loop did not run during the load"
        return real_booster(**kwargs)

    async def loop_side() -> None:
        while not started.is_set():
            await asyncio.sleep(0.001)
        loop_ran.set()

    monkeypatch.setattr(lightgbm, "Booster", blocking_booster)
    witness = asyncio.create_task(loop_side())
    await _loaded(saved[".txt"])
    await witness


def test_registered_as_a_builtin_runtime() -> None:
    assert RuntimeRegistry().get("lightgbm") is LightGBMModel
