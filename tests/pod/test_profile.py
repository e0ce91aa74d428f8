"""A pod of a ServingRuntime: capacity, load timeout and model class from the runtime's YAML."""

from __future__ import annotations

import asyncio
import copy
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.core.errors import InvalidSpec
from gateway.kserve.resources import parse_serving_runtime
from gateway.pod import profile
from gateway.pod.runtimes import BUILTIN_RUNTIMES
from gateway.pod.settings import PodSettings
from gateway.store import EmbeddedStore
from tests.documents import SEED_RUNTIME

GiB, MiB = 1 << 30, 1 << 20


def settings(**changes: Any) -> PodSettings:
    return PodSettings(port=0, pod_id="p", **changes)  # capacity: the default, 1 GiB


def test_the_seed_runtime_gives_capacity_timeout_and_a_real_mlserver() -> None:
    """The seed's runtime names an MLServer class: its pods run MLServer with its env."""
    found = profile.profile(parse_serving_runtime(SEED_RUNTIME))
    assert found == profile.RuntimeProfile(
        name="peft-model-server",
        formats=("peft-model",),
        capacity_bytes=5 * GiB - 128 * MiB,
        loading_timeout_ms=90000,
        model_class="peft_model_server:PeftModelServer",
        server_type="mlserver",
        image="registry.example/peft-model-server:latest",
        env={"MLSERVER_MODEL_IMPLEMENTATION": "peft_model_server.PeftModelServer"},
    )
    pod = profile.configure(settings(), found)
    assert (pod.capacity_bytes, pod.model_loading_timeout_ms) == (5 * GiB - 128 * MiB, 90000)
    assert pod.model_server == "mlserver"
    assert pod.runtimes == {"peft-model": profile.MLSERVER_MODEL}
    assert pod.mlserver_env == {
        "MLSERVER_MODEL_IMPLEMENTATION": "peft_model_server.PeftModelServer"
    }


def seed_with(**container: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SEED_RUNTIME)
    doc["spec"]["containers"][0].update(container)
    return doc


@pytest.mark.parametrize(
    ("doc", "served_by"),
    [
        # a class of ours (gateway.pod.model.Model): served in this process
        (
            seed_with(
                env=[
                    {
                        "name": "MLSERVER_MODEL_IMPLEMENTATION",
                        "value": "examples.custom_runtime.sentiment_runtime.SentimentRuntime",
                    }
                ]
            ),
            "mmgw",
        ),
        # no class: MLServer's own runtimes (mlserver_sklearn, ...), as ModelMesh lays them out
        (seed_with(env=[]), "mlserver"),
        # this project's pod image: its built-in classes
        (seed_with(env=[], image="modelmesh-gateway/pod:local"), "mmgw"),
        # not an MLServer runtime
        (
            {
                **SEED_RUNTIME,
                "spec": {**SEED_RUNTIME["spec"], "builtInAdapter": {"serverType": "triton"}},
            },
            "mmgw",
        ),
    ],
)
def test_who_serves_a_runtimes_models(doc: dict[str, Any], served_by: str) -> None:
    pod = profile.configure(settings(), profile.profile(parse_serving_runtime(doc)))
    assert pod.model_server == served_by


def test_the_built_in_mlserver_runtime_is_served_in_process() -> None:
    from gateway.kserve.serving_runtimes import BUILTIN_RUNTIMES as BUILTIN_DOCS

    (doc,) = (d for d in BUILTIN_DOCS if d["metadata"]["name"] == "mlserver-1.x")
    found = profile.profile(parse_serving_runtime(doc))
    assert found.builtin and found.server_type == "mlserver"
    assert profile.configure(settings(), found).model_server == "mmgw"


def test_the_command_line_decides_who_serves() -> None:
    found = profile.profile(parse_serving_runtime(SEED_RUNTIME))
    pod = profile.configure(settings(model_server="mmgw"), found)
    assert pod.model_server == "mmgw"
    assert pod.runtimes == {"peft-model": "peft_model_server:PeftModelServer"}


def test_flags_given_on_the_command_line_win() -> None:
    found = profile.profile(parse_serving_runtime(SEED_RUNTIME))
    given = settings(capacity_bytes=2 * GiB, model_loading_timeout_ms=5000)
    pod = profile.configure(given, found)
    assert (pod.capacity_bytes, pod.model_loading_timeout_ms) == (2 * GiB, 5000)
    assert pod.model_fields_set == given.model_fields_set  # still what was given


def test_values_from_the_environment_win_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMGW_CAPACITY_BYTES", str(3 * GiB))
    pod = profile.configure(settings(), profile.profile(parse_serving_runtime(SEED_RUNTIME)))
    assert (pod.capacity_bytes, pod.model_loading_timeout_ms) == (3 * GiB, 90000)


def test_without_a_model_class_the_built_in_classes_serve_the_runtimes_formats() -> None:
    doc = seed_with(image="modelmesh-gateway/pod:local")
    doc["spec"]["supportedModelFormats"] = [{"name": "sklearn"}, {"name": "XGBoost"}]
    doc["spec"]["containers"][0].pop("env")
    doc["spec"]["containers"][0].pop("resources")
    found = profile.profile(parse_serving_runtime(doc))
    assert found.capacity_bytes is None and found.model_class is None
    pod = profile.configure(settings(), found)
    assert pod.capacity_bytes == GiB  # no memory limit: the pod's own
    assert pod.runtimes == {k: BUILTIN_RUNTIMES[k] for k in ("sklearn", "xgboost")}


def test_the_runtimes_pythonpath_is_searched_for_the_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    doc = copy.deepcopy(SEED_RUNTIME)
    doc["spec"]["containers"][0]["env"].append(
        {"name": "PYTHONPATH", "value": f"{tmp_path}/a:{tmp_path}/b"}
    )
    profile.configure(settings(), profile.profile(parse_serving_runtime(doc)))
    assert sys.path[:2] == [str(tmp_path / "b"), str(tmp_path / "a")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["spec"]["containers"][0]["env"][0].update(value="NoModule"),
            "MLSERVER_MODEL_IMPLEMENTATION must be package.module.Class",
        ),
        (
            lambda d: d["spec"]["containers"][0]["resources"]["limits"].update(memory="100Mi"),
            "memory limit 100Mi leaves no room for models after memBufferBytes 134217728",
        ),
    ],
)
def test_values_a_pod_cannot_use_are_refused(change: Any, message: str) -> None:
    doc = copy.deepcopy(SEED_RUNTIME)
    change(doc)
    with pytest.raises(InvalidSpec, match=message):
        profile.profile(parse_serving_runtime(doc))


async def test_a_pod_reads_its_runtime_from_the_store_waiting_until_it_is_applied(
    tmp_path: Path,
) -> None:
    store = EmbeddedStore(tmp_path / "registry.db")
    try:
        assert (await profile.fetch(store, "mlserver-1.x")).name == "mlserver-1.x"  # built in
        waiting = asyncio.create_task(profile.fetch(store, "peft-model-server", retry=0.01))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await store.put(
            "servingruntimes/peft-model-server", {"manifest": SEED_RUNTIME, "created": 0.0}
        )
        found = await asyncio.wait_for(waiting, 5)
        assert (
            found.spec.builtInAdapter is not None
            and found.spec.builtInAdapter.memBufferBytes == 134217728
        )
    finally:
        await store.close()
