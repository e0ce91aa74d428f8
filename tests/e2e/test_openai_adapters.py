"""OpenAI's API on :8008 with the official ``openai`` client, and adapters cached like models.

A deployment of its own: 2 pods with room for 4 adapters each (``--max-adapters 4``), the
project's tiny language model as an InferenceService (``peft-model``), and adapters as
InferenceServices of format ``lora`` naming it in ``mmgw.io/base-model``. The model is the
request body's ``model``, read by Envoy (json_to_metadata), never by Python."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.tools import launcher, lm_samples

from .conftest import ISVCS, inference_service, wait_ready

NAMESPACE = "modelmesh-serving"
BASE = "tiny-lm"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny-lm.yaml"


def adapter_service(name: str, path: str, base: str = BASE) -> dict[str, Any]:
    document = inference_service(name, "lora", path)
    document["metadata"]["annotations"]["mmgw.io/base-model"] = base  # type: ignore[index]
    return document


@pytest.fixture(scope="module")
def llm_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.Deployment]:
    data = tmp_path_factory.mktemp("llm")
    lm_samples.save_samples(data / "models")
    room = ["--max-adapters", "4"]
    with launcher.Deployment(
        data_dir=data, ports=launcher.Ports.free(pods=2), pod_args={0: room, 1: room}
    ) as running:
        with httpx.Client(base_url=running.api_url, timeout=30) as api:
            # the README's example: the base and two adapters; then the third sample adapter
            example = list(yaml.safe_load_all(EXAMPLE.read_text()))
            complaint = adapter_service("complaint", f"{lm_samples.ADAPTERS}/complaint")
            for document in [*example, complaint]:
                name = document["metadata"]["name"]
                api.put(f"{ISVCS}/{name}", json=document).raise_for_status()
                item = wait_ready(api, name, 120)
                assert item["status"]["conditions"][0]["status"] == "True", item["status"]
        yield running
    for process in running.processes:
        assert process.popen.poll() is not None


@pytest.fixture(scope="module")
def api(llm_deployment: launcher.Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=llm_deployment.api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def client(llm_deployment: launcher.Deployment) -> Iterator[openai.OpenAI]:
    # no key is needed against the gateway; the client wants one set
    with openai.OpenAI(
        base_url=f"{llm_deployment.url}/v1", api_key="unused", max_retries=0, timeout=60
    ) as made:
        yield made


def test_completions_and_chat_streamed_and_not_through_8008(client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert {BASE, *lm_samples.ADAPTER_TEXTS} <= set(listed)
    assert listed["counting"].model_extra["parent"] == BASE  # type: ignore[index]
    assert listed[BASE].model_extra["parent"] is None  # type: ignore[index]

    base = client.completions.create(model=BASE, prompt="one two", max_tokens=12)
    tuned = client.completions.create(model="counting", prompt="one two", max_tokens=12)
    assert "four" in tuned.choices[0].text and "four" not in base.choices[0].text
    assert tuned.model == "counting" and tuned.usage is not None
    assert tuned.usage.completion_tokens == 12

    pieces = [
        chunk.choices[0].text
        for chunk in client.completions.create(
            model="counting", prompt="one two", max_tokens=12, stream=True
        )
        if chunk.choices
    ]
    assert "".join(pieces) == tuned.choices[0].text
    assert sum(1 for p in pieces if p) == 12  # one event per token, as it was generated

    chat = client.chat.completions.create(
        model="weather", messages=[{"role": "user", "content": "sunny"}], max_tokens=10
    )
    streamed = client.chat.completions.create(
        model="weather", messages=[{"role": "user", "content": "sunny"}], max_tokens=10, stream=True
    )
    deltas = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert chat.choices[0].message.content == "".join(deltas) != ""


def test_the_first_event_arrives_before_the_generation_ends(
    llm_deployment: launcher.Deployment,
) -> None:
    """Unbuffered: the first token's event reaches the client long before the last."""
    body = {"model": "counting", "prompt": "one", "max_tokens": 120, "stream": True}
    with (
        httpx.Client(base_url=llm_deployment.url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=body) as answer,
    ):
        assert answer.headers["content-type"] == "text/event-stream"
        started = time.monotonic()
        arrivals = [
            time.monotonic() - started for line in answer.iter_lines() if line.startswith("data: {")
        ]
    assert len(arrivals) >= 100
    assert arrivals[0] < arrivals[-1] / 4, arrivals[:3] + arrivals[-3:]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "model 'nope' is not registered"),
        (b"{not json", 400, 'naming the model in \\"model\\"'),
        ({"prompt": "x"}, 400, "'model' must be a non-empty string"),
        ({"model": 7, "prompt": "x"}, 400, "'model' must be a non-empty string"),
        ({"model": BASE, "prompt": "x", "max_tokens": -1}, 400, "between 1 and 4096"),
        ({"model": BASE, "prompt": "x", "max_tokens": 10**12}, 400, "between 1 and 4096"),
        ({"model": BASE, "prompt": "x" * 300}, 400, "maximum context length is 128 tokens"),
        ({"model": BASE, "prompt": "x", "n": "2"}, 400, "'n' must be a integer"),
        ({"model": BASE, "prompt": "x", "stream": "yes"}, 400, "'stream' must be a boolean"),
    ],
)
def test_bad_requests_get_openais_error_json(
    llm_deployment: launcher.Deployment, body: object, status: int, message: str
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(
        f"{llm_deployment.url}/v1/completions",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert message in json.dumps(error["message"]) and error["code"] == status
    assert error["type"] == "invalid_request_error"


def test_the_openai_client_raises_its_own_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="x")
    assert "not registered" in str(missing.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "x"}], max_tokens=-5
        )
    with pytest.raises(openai.NotFoundError):  # not an OpenAI path
        client.embeddings.create(model=BASE, input="x")


def test_an_adapter_whose_base_model_does_not_exist(
    api: httpx.Client, client: openai.OpenAI
) -> None:
    document = adapter_service("orphan", f"{lm_samples.ADAPTERS}/counting", base="no-such-base")
    api.put(f"{ISVCS}/orphan", json=document).raise_for_status()
    try:
        with pytest.raises(openai.NotFoundError) as error:
            client.completions.create(model="orphan", prompt="x", max_tokens=2)
        assert "names base model 'no-such-base', which is not registered" in str(error.value)
    finally:
        api.delete(f"{ISVCS}/orphan")


def _adapters_by_pod(api: httpx.Client) -> dict[str, list[str]]:
    placement = api.get("/v1/placement").json()
    return {
        pod["pod"]: [m["model_id"].split("__isvc-")[0] for m in pod["models"] if "adapter_of" in m]
        for pod in placement["pods"]
    }


def _loads(api: httpx.Client, name: str) -> int:
    events = api.get(
        f"/api/v1/namespaces/{NAMESPACE}/events",
        params={"fieldSelector": f"involvedObject.name={name}"},
    ).json()["items"]
    return sum(1 for e in events if e["reason"] == "Loaded")


def test_twenty_adapters_over_one_base_on_two_pods_with_room_for_four(
    llm_deployment: launcher.Deployment, api: httpx.Client, client: openai.OpenAI
) -> None:
    models = Path(llm_deployment.data_dir) / "models"
    names = []
    for i, path in enumerate(lm_samples.adapter_set(models, 20)):
        name = f"set-{i:02d}"
        api.put(f"{ISVCS}/{name}", json=adapter_service(name, path)).raise_for_status()
        names.append(name)
    for name in names:
        wait_ready(api, name)
        assert _loads(api, name) == 0  # an adapter loads on its first request, not before

    for name in names:  # first requests: each loads its adapter, once
        answer = client.completions.create(model=name, prompt="one", max_tokens=2)
        assert answer.usage is not None and answer.usage.completion_tokens == 2
        assert _loads(api, name) == 1, name
        held = _adapters_by_pod(api)
        assert all(len(adapters) <= 4 for adapters in held.values()), held
    held = _adapters_by_pod(api)
    assert len(held) == 2 and all(len(a) == 4 for a in held.values()), held  # the base spread
    # the least recently used went first: the 8 most recent are the ones held
    assert sorted(a for adapters in held.values() for a in adapters) == names[-8:]

    # affinity: a held adapter is served where it is, with no load
    holder = next(p for p, adapters in held.items() if names[-1] in adapters)
    before = {m["model_id"]: m["requests"] for m in _pod(api, holder)["models"]}
    for _ in range(3):
        client.completions.create(model=names[-1], prompt="one", max_tokens=2)
    after = {m["model_id"]: m["requests"] for m in _pod(api, holder)["models"]}
    (adapter_id,) = [m for m in after if m.startswith(names[-1] + "__")]
    assert after[adapter_id] == before[adapter_id] + 3 and _loads(api, names[-1]) == 1

    # two first requests at once for an evicted adapter load it once
    evicted = names[0]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda _: client.completions.create(model=evicted, prompt="one", max_tokens=2),
                range(2),
            )
        )
    assert answers[0].choices[0].text == answers[1].choices[0].text
    assert _loads(api, evicted) == 2  # its first load, and one now for both requests


def _pod(api: httpx.Client, address: str) -> dict[str, Any]:
    placement = api.get("/v1/placement").json()
    pod: dict[str, Any] = next(p for p in placement["pods"] if p["pod"] == address)
    return pod


def test_a_client_gone_mid_stream_stops_the_generation_on_the_pod(
    llm_deployment: launcher.Deployment, api: httpx.Client, client: openai.OpenAI
) -> None:
    body = {"model": "complaint", "prompt": "one", "max_tokens": 120, "stream": True}
    with (
        httpx.Client(base_url=llm_deployment.url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=body) as answer,
    ):
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                break  # the first token: go away
    # the pod stops at its next token: nothing stays in flight, and the next request answers
    deadline = time.monotonic() + 10
    while True:
        busy = [
            m["in_flight"]
            for pod in api.get("/v1/placement").json()["pods"]
            for m in pod["models"]
            if m["model_id"].startswith("complaint__")
        ]
        if busy and not any(busy):
            break
        assert time.monotonic() < deadline, busy
        time.sleep(0.1)
    answer_after = client.completions.create(model="complaint", prompt="one", max_tokens=3)
    assert answer_after.usage is not None and answer_after.usage.completion_tokens == 3


def test_sigkill_of_the_pod_holding_an_adapter_costs_its_requests_in_flight(
    llm_deployment: launcher.Deployment, api: httpx.Client
) -> None:
    """Last in this module: it kills a pod. 2 clients ask one adapter without pause; the pod
    holding it is SIGKILLed. A request in flight there is retried on the other pod (its
    answer had not begun: a stream whose events had begun would end instead), which loads
    the base and the adapter (on demand, or by the gateway's miss path) and answers. In
    our runs none failed; the test allows the 2 in flight."""
    held = _adapters_by_pod(api)
    (holder,) = [pod for pod, adapters in held.items() if "weather" in adapters] or [None]
    if holder is None:  # not held now (evicted): load it
        httpx.post(
            f"{llm_deployment.url}/v1/completions",
            json={"model": "weather", "prompt": "sun", "max_tokens": 1},
            timeout=60,
        ).raise_for_status()
        (holder,) = [p for p, a in _adapters_by_pod(api).items() if "weather" in a]
    index = [f"127.0.0.1:{port}" for port in llm_deployment.ports.pods].index(holder)
    answers: list[tuple[float, int, float]] = []  # (finished at, status or 0, seconds)
    stop = time.monotonic() + 10.0
    body = {"model": "weather", "prompt": "sunny", "max_tokens": 4}

    def client_loop() -> None:
        with httpx.Client(base_url=llm_deployment.url, timeout=60) as http:
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    status = http.post("/v1/completions", json=body).status_code
                except httpx.HTTPError:
                    status = 0
                answers.append((time.monotonic(), status, time.monotonic() - started))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        loops = [pool.submit(client_loop) for _ in range(2)]
        time.sleep(3)
        killed = time.monotonic()
        os.kill(llm_deployment.process(f"pod-{index}").popen.pid, signal.SIGKILL)
        for loop in loops:
            loop.result()
    failed = [a for a in answers if a[1] != 200]
    after = [a for a in answers if a[0] > killed]
    print(
        f"SIGKILL of the adapter's pod: {len(answers)} requests, {len(after)} after the kill, "
        f"{len(failed)} failed ({sorted({a[1] for a in failed})}), the slowest after it "
        f"{max(a[2] for a in after):.2f} s"
    )
    assert len([a for a in after if a[1] == 200]) > 10  # served again, by the other pod
    assert len(failed) <= 2, failed  # at most the 2 in flight
    assert not [a for a in failed if a[1] == 404]
