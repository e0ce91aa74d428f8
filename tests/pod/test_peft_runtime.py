"""peft-model: the project's tiny causal LM and its LoRA adapters, loaded by the real
transformers and peft, as the seed's PeftModelServer serves them (BYTES in, BYTES out)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gateway.core.errors import InvalidInput, ModelFormatError, ModelNotInStorage
from gateway.pod.model import InferenceRequest, ModelConfig, Tensor
from gateway.pod.runtimes.peft import PeftModelRuntime
from gateway.tools import lm_samples

PROMPTS = ["one two", "Every day is a new beginning"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pvc")
    lm_samples.save_samples(root)
    return root


async def loaded(models: Path, path: str, *, pvc: Path | None = None) -> PeftModelRuntime:
    key = json.dumps({"pvc_root": str(pvc)}) if pvc is not None else ""
    model = PeftModelRuntime(ModelConfig(path, "peft-model", models / path, key))
    await model.load()
    return model


def request(*prompts: str, **parameters: object) -> InferenceRequest:
    tensor = Tensor.of("content", list(prompts), "BYTES")
    return InferenceRequest((tensor,), parameters=parameters)  # type: ignore[arg-type]


async def generate(model: PeftModelRuntime, *prompts: str, tokens: int = 20) -> list[str]:
    (output,) = await model.predict(request(*prompts, max_new_tokens=tokens))
    assert (output.name, output.datatype) == ("output-0", "BYTES")
    return [bytes(v).decode() for v in output.array.reshape(-1)]


async def test_the_base_and_each_adapter_continue_the_prompt_differently(models: Path) -> None:
    names = [lm_samples.BASE, *(f"{lm_samples.ADAPTERS}/{n}" for n in lm_samples.ADAPTER_TEXTS)]
    answers = {}
    for name in names:
        model = await loaded(models, name, pvc=models)
        texts = await generate(model, *PROMPTS)
        assert [t[: len(p)] for t, p in zip(texts, PROMPTS, strict=True)] == PROMPTS  # as the seed
        assert model.size_bytes() > 400_000
        answers[name] = tuple(texts)
    assert len(set(answers.values())) == len(names)  # every adapter changes what is generated
    counting = answers[f"{lm_samples.ADAPTERS}/counting"][0]
    assert "four" in counting, counting  # it learned to count; the base did not
    assert "four" not in answers[lm_samples.BASE][0]


async def test_generation_is_greedy_and_bounded_by_max_new_tokens(models: Path) -> None:
    model = await loaded(models, lm_samples.BASE)
    first, again = (
        await generate(model, "the cat", tokens=5),
        await generate(model, "the cat", tokens=5),
    )
    assert first == again and len(first[0]) <= len("the cat") + 5
    metadata = model.metadata()
    assert [(s.name, s.datatype) for s in metadata.inputs + metadata.outputs] == [
        ("content", "BYTES"),
        ("output-0", "BYTES"),
    ]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (request("hi", max_new_tokens=0), "between 1 and 256, got 0"),
        (request("hi", max_new_tokens=100_000), "between 1 and 256, got 100000"),
        (request("hi", max_new_tokens=-3), "between 1 and 256, got -3"),
        (request("hi", max_new_tokens="ten"), "must be an integer, got 'ten'"),
        (request("hi", max_new_tokens=True), "must be an integer, got True"),
        (request("x" * 120, max_new_tokens=16), "maximum context length is 128 tokens"),
        (InferenceRequest((Tensor.of("content", np.ones(2, np.float32)),)), "expects 'BYTES'"),
        (InferenceRequest((Tensor.of("content", [b"\xff\xfe"], "BYTES"),)), "not UTF-8"),
    ],
)
async def test_bad_requests_are_invalid_input(
    models: Path, bad: InferenceRequest, message: str
) -> None:
    model = await loaded(models, lm_samples.BASE)
    with pytest.raises(InvalidInput, match=message):
        await model.predict(bad)


def adapter_naming(models: Path, name: str, base: str) -> str:
    source = models / lm_samples.ADAPTERS / "counting"
    folder = models / "odd" / name
    folder.mkdir(parents=True)
    for entry in source.iterdir():
        (folder / entry.name).write_bytes(entry.read_bytes())
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return f"odd/{name}"


async def test_an_adapter_whose_base_is_not_on_the_pvc_is_refused_naming_it(
    models: Path, tmp_path: Path
) -> None:
    hub = adapter_naming(models, "hub", "bigscience/bloomz-560m")
    with pytest.raises(ModelFormatError, match="'bigscience/bloomz-560m' is not a folder"):
        await loaded(models, hub, pvc=models)
    outside = tmp_path / "elsewhere"
    lm_samples.build_base(outside)
    escape = adapter_naming(models, "escape", str(outside))
    with pytest.raises(ModelFormatError, match="outside its PVC folder"):
        await loaded(models, escape, pvc=models)
    with pytest.raises(ModelNotInStorage):
        await loaded(models, "no-such-folder")
    (models / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="neither a PEFT adapter"):
        await loaded(models, "empty")
