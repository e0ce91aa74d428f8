"""The pod's OpenAI-compatible endpoints (gateway.pod.openai_api over gateway.pod.rest),
asked by the official ``openai`` client and by raw HTTP: the project's tiny language model
and LoRA adapters attached to it at run time (``lora`` over a ``peft-model`` base)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest

from gateway.tools import lm_samples

from .harness import Pod, StartPod

BASE = "tiny-lm__isvc-0000000001"


@pytest.fixture(scope="module")
def lm_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pvc")
    lm_samples.save_samples(root)
    return root


@pytest.fixture
async def lm_pod(start_pod: StartPod, lm_models: Path) -> Pod:
    pod = await start_pod(max_adapters=2)
    await pod.load(BASE, lm_models / lm_samples.BASE, "peft-model")
    return pod


async def attach(pod: Pod, name: str, models: Path, adapter: str = "counting") -> int:
    key = json.dumps({"base_model_id": BASE})
    path = models / lm_samples.ADAPTERS / adapter
    return await pod.load(name, path, "lora", model_key=key)


def client(pod: Pod) -> openai.AsyncOpenAI:
    url = f"http://127.0.0.1:{pod.server.rest_port}/v1"
    return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)


async def test_completions_from_the_base_and_an_adapter_attached_at_run_time(
    lm_pod: Pod, lm_models: Path
) -> None:
    size = await attach(lm_pod, "counting", lm_models)
    assert 0 < size < 100_000  # the LoRA weights alone, not the base's
    api = client(lm_pod)
    base = await api.completions.create(model=BASE, prompt="one two", max_tokens=12)
    tuned = await api.completions.create(model="counting", prompt="one two", max_tokens=12)
    assert "four" in tuned.choices[0].text and "four" not in base.choices[0].text
    assert (tuned.model, tuned.object, tuned.choices[0].finish_reason) == (
        "counting",
        "text_completion",
        "length",
    )
    assert tuned.usage is not None
    assert (tuned.usage.prompt_tokens, tuned.usage.completion_tokens) == (7, 12)
    # the base answers as before once the adapter is gone
    await lm_pod.runtime.UnloadModel(lm_pod_unload("counting"))
    again = await api.completions.create(model=BASE, prompt="one two", max_tokens=12)
    assert again.choices[0].text == base.choices[0].text
    await api.close()


def lm_pod_unload(model_id: str):  # type: ignore[no-untyped-def]
    from gateway._proto import model_runtime_pb2 as rt

    return rt.UnloadModelRequest(model_id=model_id)


async def test_a_stream_sends_each_token_as_generated_and_ends_with_done(
    lm_pod: Pod, lm_models: Path
) -> None:
    await attach(lm_pod, "counting", lm_models)
    api = client(lm_pod)
    whole = await api.completions.create(model="counting", prompt="one two", max_tokens=20)
    stream = await api.completions.create(
        model="counting",
        prompt="one two",
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, reasons, usage = [], [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.text)
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == whole.choices[0].text
    assert len([p for p in pieces if p]) == 20  # one event per token (one character each)
    assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
    assert usage is not None and usage.completion_tokens == 20

    chat = await api.chat.completions.create(
        model="counting", messages=[{"role": "user", "content": "one two"}], max_tokens=8
    )
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    deltas = [
        c.choices[0].delta.content or ""
        async for c in await api.chat.completions.create(
            model="counting",
            messages=[{"role": "user", "content": "one two"}],
            max_tokens=8,
            stream=True,
        )
    ]
    assert "".join(deltas) == chat.choices[0].message.content
    await api.close()


async def test_a_stop_sequence_ends_the_generation_there(lm_pod: Pod, lm_models: Path) -> None:
    await attach(lm_pod, "counting", lm_models)
    api = client(lm_pod)
    whole = (await api.completions.create(model="counting", prompt="one", max_tokens=30)).choices[0]
    cut = (
        await api.completions.create(model="counting", prompt="one", max_tokens=30, stop=["four"])
    ).choices[0]
    assert "four" in whole.text
    assert cut.text == whole.text[: whole.text.index("four")] and cut.finish_reason == "stop"
    await api.close()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1]", 400, "must be a JSON object"),
        ({"prompt": "x"}, 400, "'model' must be a non-empty string"),
        ({"model": BASE, "prompt": 3}, 400, "'prompt' must be a string"),
        ({"model": BASE, "prompt": "x", "max_tokens": -1}, 400, "between 1 and 4096"),
        ({"model": BASE, "prompt": "x", "max_tokens": 10**9}, 400, "between 1 and 4096"),
        ({"model": BASE, "prompt": "x", "max_tokens": "5"}, 400, "must be an integer"),
        ({"model": BASE, "prompt": "x", "max_tokens": 128}, 400, "maximum context length is 128"),
        ({"model": BASE, "prompt": "x" * 200}, 400, "maximum context length is 128"),
        ({"model": BASE, "prompt": "x", "n": 2}, 400, "'n' must be 1"),
        ({"model": BASE, "prompt": "x", "n": "1"}, 400, "'n' must be a integer"),
        ({"model": BASE, "prompt": "x", "stream": "yes"}, 400, "'stream' must be a boolean"),
        ({"model": BASE, "prompt": "x", "temperature": 7}, 400, "'temperature' must be between"),
        ({"model": BASE, "prompt": "x", "stop": ["a"] * 5}, 400, "'stop' must be"),
        ({"model": "nope", "prompt": "x"}, 404, "model 'nope' is not loaded on this pod"),
    ],
)
async def test_bad_requests_get_openais_error_shape(
    lm_pod: Pod, body: object, status: int, message: str
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"http://127.0.0.1:{lm_pod.server.rest_port}/v1/completions"
    async with httpx.AsyncClient() as http:
        answer = await http.post(url, content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert message in error["message"]
    assert (error["type"], error["code"]) == ("invalid_request_error", status)


async def test_a_model_that_does_not_generate_text_is_refused(lm_pod: Pod, svc_file: Path) -> None:
    await lm_pod.load("svc", svc_file)
    url = f"http://127.0.0.1:{lm_pod.server.rest_port}/v1/chat/completions"
    body = {"model": "svc", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        answer = await http.post(url, json=body)
    assert answer.status_code == 400
    assert "does not generate text" in answer.json()["error"]["message"]


async def test_a_client_gone_mid_stream_stops_the_generation_and_frees_the_model(
    lm_pod: Pod, lm_models: Path
) -> None:
    await attach(lm_pod, "counting", lm_models)
    url = f"http://127.0.0.1:{lm_pod.server.rest_port}/v1/completions"
    body = {"model": "counting", "prompt": "one", "max_tokens": 120, "stream": True}
    async with httpx.AsyncClient() as http, http.stream("POST", url, json=body) as answer:
        async for line in answer.aiter_lines():
            if line.startswith("data: {"):
                break  # the first token: go away
    # the generation stops at its next token: the model serves nothing, and answers at once
    for _ in range(100):
        if all(m.in_flight == 0 for m in lm_pod.server.models.loaded()):
            break
        await asyncio.sleep(0.05)
    assert [m.in_flight for m in lm_pod.server.models.loaded()] == [0, 0]
    api = client(lm_pod)
    answer_after = await asyncio.wait_for(
        api.completions.create(model="counting", prompt="one", max_tokens=4), timeout=30
    )
    assert answer_after.usage is not None and answer_after.usage.completion_tokens == 4
    await api.close()


async def test_adapters_need_their_base_and_fit_the_pods_count(
    lm_pod: Pod, lm_models: Path
) -> None:
    await attach(lm_pod, "a1", lm_models)
    await attach(lm_pod, "a2", lm_models, "weather")
    from gateway._proto import model_runtime_pb2 as rt

    status = await lm_pod.status()
    assert (status.max_adapters, status.adapter_capacity_in_bytes) == (2, 256 << 20)
    with pytest.raises(Exception, match="2 of 2 adapters"):
        await attach(lm_pod, "a3", lm_models)
    key = json.dumps({"base_model_id": "missing"})
    with pytest.raises(Exception, match="needs its base model 'missing'"):
        await lm_pod.load("a4", lm_models / lm_samples.ADAPTERS / "counting", "lora", model_key=key)
    # unloading the base unloads its adapters first
    await lm_pod.runtime.UnloadModel(rt.UnloadModelRequest(model_id=BASE))
    assert lm_pod.server.models.loaded() == []
