"""The adapter's models in the pod's repository: MLServer's load and unload, its errors,
and a load the repository abandons (its timeout) that MLServer finishes later."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.core.errors import LoadFailed, LoadTimeout, ModelNotFound
from gateway.pod.mlserver.model import MLServerBackend, model_class
from gateway.pod.model import ModelConfig
from gateway.pod.repository import ModelRepository
from gateway.pod.runtimes import RuntimeRegistry


class FakeMLServer:
    """What the adapter asks of MLServer, recorded; loads wait for ``release`` when held."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.loaded: set[str] = set()
        self.hold = False
        self.release = asyncio.Event()
        self.refuse: str | None = None

    async def load(self, model_name: str) -> None:
        self.calls.append(("load", model_name))
        if self.hold:
            await self.release.wait()
        if self.refuse:
            raise LoadFailed(f"MLServer could not load model '{model_name}': {self.refuse}")
        self.loaded.add(model_name)

    async def unload(self, model_name: str, timeout: float) -> None:
        self.calls.append(("unload", model_name))
        if model_name not in self.loaded:
            raise ModelNotFound(model_name)
        self.loaded.discard(model_name)


def repository(tmp_path: Path, mlserver: FakeMLServer, timeout_s: float = 5.0) -> ModelRepository:
    backend = MLServerBackend(mlserver, tmp_path / "mlserver", 1.25)  # type: ignore[arg-type]
    return ModelRepository(
        RuntimeRegistry({"digits": model_class(backend)}), loading_timeout_s=timeout_s
    )


def config(tmp_path: Path, model_id: str = "digits__isvc-1") -> ModelConfig:
    path = tmp_path / "digits.joblib"
    path.write_bytes(b"x" * 1000)
    return ModelConfig(model_id, "digits", path)


async def test_load_lays_out_the_model_and_asks_mlserver_size_is_disk_times_multiplier(
    tmp_path: Path,
) -> None:
    mlserver = FakeMLServer()
    models = repository(tmp_path, mlserver)
    assert await models.load(config(tmp_path)) == 1250
    assert (tmp_path / "mlserver" / "digits__isvc-1" / "model-settings.json").exists()
    await models.unload("digits__isvc-1")
    assert mlserver.calls == [("load", "digits__isvc-1"), ("unload", "digits__isvc-1")]
    assert not (tmp_path / "mlserver" / "digits__isvc-1").exists()


async def test_mlservers_refusal_is_the_load_failure(tmp_path: Path) -> None:
    mlserver = FakeMLServer()
    mlserver.refuse = "RuntimeError: the weights are corrupt"
    models = repository(tmp_path, mlserver)
    with pytest.raises(LoadFailed, match="the weights are corrupt"):
        await models.load(config(tmp_path))
    assert models.loaded() == [] and not (tmp_path / "mlserver" / "digits__isvc-1").exists()


async def test_an_abandoned_load_is_unloaded_once_mlserver_finishes_it(tmp_path: Path) -> None:
    mlserver = FakeMLServer()
    mlserver.hold = True
    models = repository(tmp_path, mlserver, timeout_s=0.05)
    with pytest.raises(LoadTimeout):
        await models.load(config(tmp_path))
    assert mlserver.calls == [("load", "digits__isvc-1")]  # no unload before it is loaded
    mlserver.release.set()
    for _ in range(100):
        if ("unload", "digits__isvc-1") in mlserver.calls:
            break
        await asyncio.sleep(0.01)
    assert mlserver.calls == [("load", "digits__isvc-1"), ("unload", "digits__isvc-1")]
    assert mlserver.loaded == set()


async def test_forget_all_drops_the_models_of_a_dead_mlserver_without_asking_it(
    tmp_path: Path,
) -> None:
    mlserver = FakeMLServer()
    models = repository(tmp_path, mlserver)
    changes: list[Any] = []
    await models.load(config(tmp_path))
    models.on_change = lambda: changes.append(1)
    assert models.forget_all() == ["digits__isvc-1"]
    assert models.loaded() == [] and changes == [1]
    assert mlserver.calls == [("load", "digits__isvc-1")]
