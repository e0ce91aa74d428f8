"""The pod's model repository and runtime registry: no sockets."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from gateway.core.errors import (
    InvalidInput,
    InvalidSpec,
    LoadFailed,
    LoadTimeout,
    ModelFormatError,
    ModelNotFound,
    NoCapacity,
    PredictFailed,
)
from gateway.pod.model import InferenceRequest, Model, ModelConfig, Tensor, TensorSpec
from gateway.pod.repository import ModelRepository, predicted_size
from gateway.pod.runtimes import BUILTIN_RUNTIMES, RuntimeRegistry
from gateway.pod.runtimes.sklearn import SKLearnModel
from gateway.pod.runtimes.synthetic import SyntheticModel

from .fakes import FakeModel, fake_runtime, key


def _repo(runtime: type[Model], **kwargs: float) -> ModelRepository:
    return ModelRepository(RuntimeRegistry({"fake": runtime}), **kwargs)  # type: ignore[arg-type]


def _config(model_id: str, model_key: str = "") -> ModelConfig:
    return ModelConfig(model_id, "fake", Path("/nowhere"), model_key)


async def test_concurrent_loads_of_one_id_share_one_attempt() -> None:
    fake = fake_runtime()
    repo = _repo(fake)
    sizes = await asyncio.gather(*(repo.load(_config("a", key(load_s=0.05))) for _ in range(5)))
    assert sizes == [1000] * 5
    assert fake.loads["a"] == 1
    assert await repo.load(_config("a")) == 1000  # loaded already: a no-op
    assert fake.loads["a"] == 1
    assert [(m.model_id, m.size_bytes) for m in repo.loaded()] == [("a", 1000)]


@pytest.mark.parametrize("limit", [1, 2])
async def test_loads_are_bounded_by_the_concurrency_limit(limit: int) -> None:
    fake = fake_runtime()
    repo = _repo(fake, max_loading_concurrency=limit)
    await asyncio.gather(*(repo.load(_config(f"m{i}", key(load_s=0.03))) for i in range(4)))
    assert fake.max_running == limit
    assert sorted(m.model_id for m in repo.loaded()) == ["m0", "m1", "m2", "m3"]


async def test_a_load_that_would_overfill_the_pod_is_refused_counting_loads_in_progress() -> None:
    fake = fake_runtime()
    repo = _repo(fake, capacity_bytes=3000, max_loading_concurrency=2)
    await repo.load(_config("a"), expected_bytes=1000)  # holds 1000
    slow = asyncio.ensure_future(repo.load(_config("b", key(load_s=0.2)), expected_bytes=1500))
    await asyncio.sleep(0.01)  # b is loading: 1500 expected
    with pytest.raises(NoCapacity) as refused:
        await repo.load(_config("c"), expected_bytes=600)
    assert refused.value.message == (
        "this pod has no room for model 'c': it expects 600 bytes, and 1000 held + 1500 loading of 3000 leaves 500"
    )
    assert fake.loads["c"] == 0 and "c" not in {m.model_id for m in repo.loaded()}
    assert await repo.load(_config("c"), expected_bytes=500) == 1000  # exactly fits
    assert await slow == 1000
    await repo.unload("c")
    # b is held at its real size now (1000, not the 1500 it expected): 2000 held, 1000 free.
    assert await repo.load(_config("d"), expected_bytes=1000) == 1000
    with pytest.raises(NoCapacity, match="3000 held \\+ 0 loading of 3000 leaves 0"):
        await repo.load(_config("e"), expected_bytes=1)


async def test_without_an_expected_size_or_a_capacity_nothing_is_refused() -> None:
    limited, unlimited = _repo(fake_runtime(), capacity_bytes=1500), _repo(fake_runtime())
    await limited.load(_config("a"))
    await limited.load(_config("b"))  # no expected size: the caller did its own accounting
    await unlimited.load(_config("a"), expected_bytes=10**12)
    assert len(limited.loaded()) == 2 and len(unlimited.loaded()) == 1
    assert (
        await limited.load(_config("a"), expected_bytes=10**12) == 1000
    )  # loaded already: a no-op


async def test_a_load_that_times_out_leaves_nothing() -> None:
    fake = fake_runtime()
    repo = _repo(fake, loading_timeout_s=0.05)
    with pytest.raises(LoadTimeout, match="loading model 'slow' took longer than 50 ms") as err:
        await repo.load(_config("slow", key(load_s=5)))
    assert isinstance(err.value, LoadFailed)  # the engine retries it as any failed load
    assert repo.loaded() == [] and fake.unloads["slow"] == 1
    with pytest.raises(ModelNotFound, match="^model 'slow' is not loaded on this pod$"):
        repo.get("slow")
    assert await repo.load(_config("slow")) == 1000  # a later, quick load succeeds


async def test_a_failed_load_leaves_nothing_and_says_why() -> None:
    fake = fake_runtime()
    repo = _repo(fake)
    with pytest.raises(LoadFailed) as err:
        await repo.load(_config("bad", key(load_error="disk on fire")))
    assert err.value.message == "loading model 'bad' failed: RuntimeError: disk on fire"
    assert repo.loaded() == [] and fake.unloads["bad"] == 1
    with pytest.raises(ModelFormatError, match="not a model"):  # GatewayErrors pass unchanged
        await repo.load(_config("fmt", key(format_error="not a model")))
    assert repo.loaded() == []


async def test_waiters_share_a_failure_and_a_retry_loads_again() -> None:
    fake = fake_runtime()
    repo = _repo(fake)
    results = await asyncio.gather(
        *(repo.load(_config("x", key(load_s=0.02, load_error="no"))) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, LoadFailed) for r in results) and fake.loads["x"] == 1
    assert await repo.load(_config("x")) == 1000 and fake.loads["x"] == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_load() -> None:
    fake = fake_runtime()
    repo = _repo(fake)
    caller = asyncio.create_task(repo.load(_config("a", key(load_s=0.05))))
    await asyncio.sleep(0.01)
    caller.cancel()
    assert await repo.load(_config("a")) == 1000
    assert fake.loads["a"] == 1


async def test_unknown_model_type_names_the_supported_ones() -> None:
    repo = ModelRepository(RuntimeRegistry({"fake": fake_runtime(), **BUILTIN_RUNTIMES}))
    with pytest.raises(InvalidSpec) as err:
        await repo.load(ModelConfig("m", "tensorflow", Path("/x")))
    types = sorted(["fake", *BUILTIN_RUNTIMES])
    assert err.value.message == (
        "unsupported model type 'tensorflow'; this pod supports "
        + ", ".join(f"'{t}'" for t in types)
    )
    assert repo.model_types == tuple(types)


async def test_unload_is_idempotent_and_waits_for_a_load_in_progress() -> None:
    fake = fake_runtime()
    repo = _repo(fake)
    await repo.unload("never-loaded")
    loading = asyncio.create_task(repo.load(_config("a", key(load_s=0.05))))
    await asyncio.sleep(0.01)
    await repo.unload("a")
    assert await loading == 1000
    assert repo.loaded() == [] and fake.unloads["a"] == 1
    await repo.unload("a")
    assert fake.unloads["a"] == 1


async def test_predict_reports_runtime_exceptions_as_predict_failed() -> None:
    repo = _repo(fake_runtime())
    await repo.load(_config("ok"))
    await repo.load(_config("boom", key(predict_error="division by zero")))
    request = InferenceRequest((Tensor.of("x", np.array([1.0, 2.0], np.float32)),))
    (y,) = await repo.predict(repo.get("ok"), request)
    assert y.array.tolist() == [2.0, 4.0]
    with pytest.raises(PredictFailed) as err:
        await repo.predict(repo.get("boom"), request)
    assert err.value.message == "ZeroDivisionError: division by zero"
    bad = InferenceRequest((Tensor.of("x", np.array([1], np.int32)),))
    with pytest.raises(InvalidInput, match="model expects 'FP32'"):  # passes unchanged
        await repo.predict(repo.get("ok"), bad)


async def test_close_unloads_everything_and_cancels_loads() -> None:
    fake = fake_runtime()
    repo = _repo(fake, max_loading_concurrency=2)
    await repo.load(_config("a"))
    await repo.load(_config("b"))
    slow = asyncio.create_task(repo.load(_config("slow", key(load_s=5))))
    await asyncio.sleep(0.01)
    await repo.close()
    assert repo.loaded() == [] and fake.unloads == {"a": 1, "b": 1, "slow": 1}
    with pytest.raises(asyncio.CancelledError):
        await slow


def test_predicted_size(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "extra.bin").write_bytes(b"y" * 601)
    assert predicted_size(tmp_path / "model.joblib", 1.25) == 1250
    assert predicted_size(tmp_path, 1.25) == math.ceil(1601 * 1.25)
    assert predicted_size(tmp_path, 2) == 3202
    with pytest.raises(LoadFailed, match=r"model file not found: .*absent"):
        predicted_size(tmp_path / "absent", 1.25)


def test_registry_resolves_import_paths_lazily() -> None:
    registry = RuntimeRegistry()
    assert registry.model_types == tuple(sorted(BUILTIN_RUNTIMES)) and "sklearn" in registry
    assert registry.get("sklearn") is SKLearnModel
    assert registry.get("synthetic") is SyntheticModel
    registry.register("custom", "tests.pod.fakes:FakeModel")
    assert registry.get("custom") is FakeModel
    registry.register("broken", "tests.pod.fakes:NoSuchClass")
    with pytest.raises(LoadFailed, match=r"cannot be imported from '.*fakes:NoSuchClass'"):
        registry.get("broken")
    registry.register("not-a-model", "tests.pod.fakes:key")
    with pytest.raises(LoadFailed, match="is not a Model"):
        registry.get("not-a-model")
    with pytest.raises(TypeError):
        registry.register("x", dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="module:ClassName"):
        registry.register("x", "no_colon")


def test_tensor_spec_check() -> None:
    spec = TensorSpec("input-0", "FP32", (-1, 4))
    spec.check(Tensor.of("in", np.zeros((3, 4), np.float32)))
    with pytest.raises(InvalidInput, match=r"shape \[3, 5\] given, model expects \[-1, 4\]"):
        spec.check(Tensor.of("in", np.zeros((3, 5), np.float32)))
    with pytest.raises(InvalidInput, match="datatype 'FP64' given, model expects 'FP32'"):
        spec.check(Tensor.of("in", np.zeros((3, 4))))


def test_tensor_of_infers_or_casts_the_datatype() -> None:
    assert Tensor.of("a", [1, 2]).datatype == "INT64"
    assert Tensor.of("a", np.zeros(2, np.uint16)).datatype == "UINT16"
    strings = Tensor.of("s", ["x", "y"])
    assert strings.datatype == "BYTES" and strings.array.dtype == object
    assert strings.array.tolist() == [b"x", b"y"]
    assert Tensor.of("b", [b"a\x00", b"\x00"]).array.tolist() == [b"a\x00", b"\x00"]
    assert Tensor.of("t", ["x", b"y"], "BYTES").array.tolist() == [b"x", b"y"]
    assert Tensor.of("u", [["\u00e9\x00"]]).array.tolist() == [["\u00e9\x00".encode()]]
    cast = Tensor.of("c", [1, 2], "FP32")
    assert cast.array.dtype == np.float32 and cast.shape == (2,)
    with pytest.raises(InvalidInput, match="unknown datatype 'FLOAT'"):
        Tensor.of("c", [1], "FLOAT")
