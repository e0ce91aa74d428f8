"""The synthetic runtime (memory and time only, for scale tests), without any transport."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.core.errors import InvalidInput, LoadFailed, ModelFormatError, PredictFailed
from gateway.pod.model import InferenceRequest, ModelConfig, Tensor, TensorSpec
from gateway.pod.repository import ModelRepository
from gateway.pod.runtimes import RuntimeRegistry
from gateway.pod.runtimes.synthetic import (
    PAGE,
    SyntheticModel,
    SyntheticSpec,
    read_synthetic,
    write_synthetic,
)

MiB = 1 << 20
STATM = Path("/proc/self/statm")


def _model(path: Path, model_id: str = "s__isvc-1") -> SyntheticModel:
    return SyntheticModel(ModelConfig(model_id, "synthetic", path))


def _request(array: Any, datatype: str = "FP32", *outputs: str) -> InferenceRequest:
    return InferenceRequest((Tensor.of("input-0", array, datatype),), tuple(outputs))


def _repo(**kwargs: Any) -> ModelRepository:
    return ModelRepository(RuntimeRegistry(), **kwargs)


def _rss() -> int:
    import resource

    return int(STATM.read_text().split()[1]) * resource.getpagesize()


def test_write_and_read_a_file(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "sub" / "m.json", 4 * MiB, 0.2)
    assert path == tmp_path / "sub" / "m.json"
    assert json.loads(path.read_text()) == {"size_bytes": 4 * MiB, "load_seconds": 0.2}
    assert read_synthetic(path) == SyntheticSpec(4 * MiB, 0.2)
    failing = write_synthetic(tmp_path / "f.json", 10, fail="no luck", predict_seconds=0.5)
    assert read_synthetic(failing) == SyntheticSpec(10, 0.0, "no luck", 0.5)
    assert read_synthetic(tmp_path / "sub") == SyntheticSpec(4 * MiB, 0.2)  # a folder with one file
    with pytest.raises(ValueError, match="'size_bytes' must be an integer >= 0, got -1"):
        write_synthetic(tmp_path / "bad.json", -1)
    with pytest.raises(ValueError, match="'load_seconds' must be a number >= 0"):
        write_synthetic(tmp_path / "bad.json", 1, float("nan"))
    assert not (tmp_path / "bad.json").exists()


async def test_load_allocates_resident_memory_and_unload_frees_it(tmp_path: Path) -> None:
    size = 64 * MiB
    model = _model(write_synthetic(tmp_path / "m.json", size))
    gc.collect()
    before = _rss() if STATM.exists() else 0
    await model.load()
    assert model.size_bytes() == size
    memory = model._memory
    assert memory is not None and len(memory) == size
    assert memory[::PAGE].count(1) == len(range(0, size, PAGE))  # every page written
    del memory
    if STATM.exists():
        loaded = _rss()
        assert loaded - before >= 0.9 * size
    await model.unload()
    assert model._memory is None
    if STATM.exists():
        await asyncio.sleep(0)  # this step's wake-up handle still holds the thread's future
        gc.collect()
        assert loaded - _rss() >= 0.9 * size


async def test_load_really_waits_without_blocking_the_pod(tmp_path: Path) -> None:
    repo = _repo(max_loading_concurrency=2)
    await repo.load(ModelConfig("ready", "synthetic", write_synthetic(tmp_path / "r.json", 1000)))
    slow = asyncio.create_task(
        repo.load(
            ModelConfig("slow", "synthetic", write_synthetic(tmp_path / "s.json", 1000, 3600))
        )
    )
    # Meanwhile, another model loads and the loaded one answers.
    quick = write_synthetic(tmp_path / "q.json", 2000, 0.2)
    started = time.monotonic()
    assert await repo.load(ModelConfig("quick", "synthetic", quick)) == 2000
    assert time.monotonic() - started >= 0.19  # it did wait (a lower bound only)
    (out,) = await repo.predict(repo.get("ready"), _request([[1, 2]]))
    assert out.array.tolist() == [[3.0]]
    assert not slow.done()
    await repo.close()
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_a_failing_file_fails_after_its_wait_and_leaves_nothing(tmp_path: Path) -> None:
    repo = _repo()
    path = write_synthetic(tmp_path / "f.json", 1 * MiB, 0.01, fail="simulated: GPU on fire")
    with pytest.raises(LoadFailed) as err:
        await repo.load(ModelConfig("f", "synthetic", path))
    assert type(err.value) is LoadFailed and err.value.message == "simulated: GPU on fire"
    assert repo.loaded() == []
    model = _model(path)
    with pytest.raises(LoadFailed):
        await model.load()
    await model.unload()  # what the repository does after a failed load
    assert model._memory is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"cannot read '.*m\.json' as a synthetic model: JSONDecodeError: "),
        ("[1, 2]", r"'.*m\.json': a synthetic model is a JSON object, got list"),
        ('{"load_seconds": 1}', r"'.*m\.json': 'size_bytes' is missing"),
        ('{"size_bytes": "4Mi"}', r"'size_bytes' must be an integer >= 0, got \"4Mi\""),
        ('{"size_bytes": 1.5}', r"'size_bytes' must be an integer >= 0, got 1.5"),
        ('{"size_bytes": true}', r"'size_bytes' must be an integer >= 0, got true"),
        ('{"size_bytes": 1, "load_seconds": -1}', r"'load_seconds' must be a number >= 0, got -1"),
        ('{"size_bytes": 1, "predict_seconds": "x"}', r"'predict_seconds' must be a number >= 0"),
        ('{"size_bytes": 1, "fail": 3}', r"'fail' must be a string, got 3"),
        ('{"size_bytes": 1, "sise": 2}', r"unknown field\(s\) sise; expected size_bytes, "),
    ],
)
async def test_malformed_files_are_format_errors(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(ModelFormatError, match=message):
        await _model(path).load()


async def test_missing_file_or_ambiguous_folder(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match="model file not found: .*absent.json") as err:
        await _model(tmp_path / "absent.json").load()
    assert not isinstance(err.value, ModelFormatError)  # another pod may have the file
    write_synthetic(tmp_path / "a.json", 1)
    write_synthetic(tmp_path / "b.json", 1)
    with pytest.raises(ModelFormatError, match="exactly one .json file; found a.json, b.json"):
        await _model(tmp_path).load()


@pytest.mark.parametrize(
    "datatype", ["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT16", "BOOL"]
)
async def test_predict_answers_row_sums_for_any_numeric_datatype(
    tmp_path: Path, datatype: str
) -> None:
    model = _model(write_synthetic(tmp_path / "m.json", 100))
    await model.load()
    rows = [[1, 0, 1], [0, 1, 1]] if datatype == "BOOL" else [[1, 2, 3], [4, 5, 6]]
    (out,) = await model.predict(_request(rows, datatype))
    assert (out.name, out.datatype, out.array.dtype) == ("predict", "FP64", np.float64)
    expected = [[2.0], [2.0]] if datatype == "BOOL" else [[6.0], [15.0]]
    assert out.array.tolist() == expected
    (named,) = await model.predict(_request(rows, datatype, "predict"))
    assert named.array.tolist() == expected


async def test_metadata(tmp_path: Path) -> None:
    model = _model(write_synthetic(tmp_path / "m.json", 100))
    await model.load()
    meta = model.metadata()
    assert meta.platform == "synthetic"
    assert meta.inputs == (TensorSpec("input-0", "FP32", (-1, -1)),)
    assert meta.outputs == (TensorSpec("predict", "FP64", (-1, 1)),)


async def test_predict_rejects_what_does_not_fit(tmp_path: Path) -> None:
    model = _model(write_synthetic(tmp_path / "m.json", 100))
    await model.load()
    with pytest.raises(InvalidInput, match=r"shape \[3\] given, model expects \[-1, -1\]"):
        await model.predict(_request([1, 2, 3]))
    with pytest.raises(InvalidInput, match="datatype 'BYTES' given, model expects a numeric one"):
        await model.predict(_request([[b"a"]], "BYTES"))
    with pytest.raises(InvalidInput, match="model expects 1 input, got 2"):
        two = Tensor.of("a", [[1.0]], "FP32")
        await model.predict(InferenceRequest((two, two)))
    with pytest.raises(
        InvalidInput, match="output 'proba' is not available; model offers 'predict'"
    ):
        await model.predict(_request([[1.0]], "FP32", "proba"))


async def test_predict_seconds_waits_and_an_unload_meanwhile_fails_the_request(
    tmp_path: Path,
) -> None:
    model = _model(write_synthetic(tmp_path / "m.json", 100, predict_seconds=3600))
    await model.load()
    predicting = asyncio.create_task(model.predict(_request([[1.0, 2.0]])))
    await asyncio.sleep(0)  # the predict is now waiting
    assert not predicting.done()
    predicting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await predicting
    quick = _model(write_synthetic(tmp_path / "q.json", 100, predict_seconds=0.01))
    await quick.load()
    predicting = asyncio.create_task(quick.predict(_request([[1.0, 2.0]])))
    await asyncio.sleep(0)
    await quick.unload()  # an ungraceful unload: the weights are gone under the request
    repo = _repo()
    with pytest.raises(RuntimeError, match="is not loaded"):
        await predicting
    with pytest.raises(PredictFailed, match="RuntimeError: model 's__isvc-1' is not loaded"):
        await repo.predict(quick, _request([[1.0]]))
