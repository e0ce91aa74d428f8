"""Language models through the mesh: OpenAI's API on :8008 against the pod directly, the cost
of an adapter's cold load, and the adapter cache's hit ratio against Belady's.

1. Streams. Two models on one pod: the project's tiny language model with its "counting"
   adapter (2 layers, 64 wide: about 2 ms a token here, so the mesh's cost per token shows
   at its largest), and "bench-lm", a GPT-2 of 6 layers, 512 wide (19 M parameters, its
   weights random: made here for timing, about 12 ms a token in the pod here, still below a real
   LLM's). The same streamed completion (prompt "one two", 64 tokens) is sent through
   :8008 (Envoy: json_to_metadata, ext_proc, the router) and to the pod's REST listener
   directly (with the mm-model-id header Envoy would add). Rounds alternate between the
   two paths; per path: time to first token (the first event with text) p50, and tokens
   per second, per stream and in all. c=1: requests one after another; c=8: 8 streams at
   once (the pod generates one at a time per base model: the others wait their turn, in
   both paths). The load generator is Python on the same 2 cores.
2. Cold adapters. 20 adapters applied, none loaded; for each, one streamed request of 1
   token (its first: the adapter loads), then the same again (warm). Overhead of a cold
   load = (cold time to first token) - (warm time to first token) - (the adapter's load as
   the gateway timed its LoadModel call, from mmgw_model_load_seconds_sum). Target: under
   20 ms.
3. The adapter cache. 100 adapters over one base, Zipf(1.0) popularity, 20,000 requests at
   0.1 simulated s apart, 2 pods with room for 8 adapters each (16 of 100): the real
   Placement engine (as benchmarks.cache_quality runs it: in-memory pods, loads at once, a
   simulated clock) against Belady's MIN and one LRU of 16. "engine" evicts as it does
   models (recency weighed by a decayed request count, half-life 600 s: LRFU); "eng lru"
   is the engine with a half-life of 0, plain LRU as vLLM's LoRA cache evicts.

Figures are printed, nothing is asserted. Run: ``make bench`` (or
``python -m benchmarks.llm_serving``; ``--quick`` for fewer rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.cache_quality import (
    InstantPods,
    Outcome,
    Setup,
    SimulatedClock,
    belady,
    lru,
    replay,
    zipf_trace,
)
from gateway.core.domain import ModelSpec
from gateway.core.placement import Placement, PlacementSettings
from gateway.tools import launcher, lm_samples

ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices"
BASE = "tiny-lm"
PROMPT = "one two"


def isvc(name: str, model_format: str, path: str, base: str = "") -> dict[str, object]:
    annotations = {"serving.kserve.io/deploymentMode": "ModelMesh"}
    if base:
        annotations["mmgw.io/base-model"] = base
    model: dict[str, object] = {
        "modelFormat": {"name": model_format},
        "storage": {"parameters": {"type": "pvc", "name": "my-models-pvc"}, "path": path},
    }
    if model_format == "peft-model":
        model["runtime"] = "huggingface-peft"
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"predictor": {"model": model}},
    }


def apply(api: httpx.Client, document: dict[str, object], timeout: float = 120.0) -> None:
    name = document["metadata"]["name"]  # type: ignore[index]
    api.put(f"{ISVCS}/{name}", json=document).raise_for_status()
    deadline = time.monotonic() + timeout
    while api.get(f"{ISVCS}/{name}").json()["status"]["conditions"][0]["status"] != "True":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not become ready")
        time.sleep(0.1)


# -- 1. streams ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stream:
    first_token: float  # seconds from sending the request
    total: float
    tokens: int


async def one_stream(
    http: httpx.AsyncClient, url: str, model: str, tokens: int, headers: dict[str, str]
) -> Stream:
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "stream": True}
    started = time.perf_counter()
    first, count = 0.0, 0
    async with http.stream("POST", url, json=body, headers=headers) as answer:
        if answer.status_code != 200:
            raise RuntimeError(f"{url}: {answer.status_code} {(await answer.aread())[:300]!r}")
        async for line in answer.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if json.loads(line[6:])["choices"][0]["text"]:
                count += 1
                first = first or time.perf_counter() - started
    return Stream(first, time.perf_counter() - started, count)


async def streams_round(
    url: str, model: str, headers: dict[str, str], concurrency: int, per_stream: int, tokens: int
) -> tuple[list[Stream], float]:
    async with httpx.AsyncClient(timeout=120) as http:
        await one_stream(http, url, model, 2, headers)  # the connection, warm

        async def worker() -> list[Stream]:
            return [await one_stream(http, url, model, tokens, headers) for _ in range(per_stream)]

        started = time.perf_counter()
        done = await asyncio.gather(*(worker() for _ in range(concurrency)))
        return [s for w in done for s in w], time.perf_counter() - started


def stream_figures(streams: list[Stream], wall: float) -> tuple[float, float, float]:
    """(time to first token p50 in ms, tokens/s per stream p50, tokens/s in all)"""
    ttft = statistics.median(s.first_token for s in streams) * 1000
    per_stream = statistics.median(s.tokens / s.total for s in streams)
    return ttft, per_stream, sum(s.tokens for s in streams) / wall


def bench_streams(
    deployment: launcher.Deployment,
    api: httpx.Client,
    model: str,
    rounds: int,
    tokens: int,
    runs: tuple[tuple[int, int], ...],
) -> None:
    """``runs``: (concurrency, streams per worker) pairs."""
    placement = api.get("/v1/placement").json()
    (pod,) = [p for p in placement["pods"] if p["models"]]
    (model_id,) = [m["model_id"] for m in pod["models"] if m["model_id"].startswith(model + "__")]
    paths = {
        ":8008": (f"{deployment.url}/v1/completions", {}),
        "pod": (
            f"http://{pod['rest_address']}/v1/completions",
            {"mm-model-id": model_id},
        ),
    }
    print(f"\n1. streams of {model!r}: {tokens} tokens each, prompt {PROMPT!r}")
    print(f"{'c':>3} {'path':>6} {'TTFT p50 ms':>12} {'tok/s/stream':>13} {'tok/s all':>10}")
    for concurrency, per_stream in runs:
        results: dict[str, list[tuple[float, float, float]]] = {p: [] for p in paths}
        for _ in range(rounds):
            for name, (url, headers) in paths.items():
                streams, wall = asyncio.run(
                    streams_round(url, model, headers, concurrency, per_stream, tokens)
                )
                results[name].append(stream_figures(streams, wall))
        medians = {
            name: tuple(statistics.median(r[i] for r in rows) for i in range(3))
            for name, rows in results.items()
        }
        for name, (ttft, per, total) in medians.items():
            print(f"{concurrency:>3} {name:>6} {ttft:>12.2f} {per:>13.0f} {total:>10.0f}")
        mesh, direct = medians[":8008"], medians["pod"]
        print(
            f"    :8008 / pod: TTFT {mesh[0] / direct[0]:.3f}x, tokens/s in all "
            f"{mesh[2] / direct[2]:.3f}x (TTFT +{mesh[0] - direct[0]:.2f} ms)"
        )


BENCH_LM = "bench-lm"


def build_bench_lm(models: Path) -> None:
    """``bench-lm``: a GPT-2 of 6 layers, 512 wide, on the tiny model's character tokenizer,
    its weights random (timing only), saved as save_pretrained writes a model folder."""
    import shutil

    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = models / BENCH_LM
    tokenizer = AutoTokenizer.from_pretrained(models / BASE, local_files_only=True)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=512,
        n_layer=6,
        n_head=8,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    for name in (models / BASE).iterdir():
        if "token" in name.name:
            shutil.copy(name, folder / name.name)


# -- 2. cold adapters --------------------------------------------------------------


def _load_seconds(api: httpx.Client) -> float:
    total = 0.0
    for line in api.get("/metrics").text.splitlines():
        if line.startswith("mmgw_model_load_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def bench_cold_adapters(deployment: launcher.Deployment, api: httpx.Client, count: int) -> None:
    models = deployment.data_dir / "models"
    names = []
    for i, path in enumerate(lm_samples.adapter_set(models, count)):
        names.append(f"cold-{i:02d}")
        apply(api, isvc(names[-1], "lora", path, BASE))
    url = f"{deployment.url}/v1/completions"
    overheads, cold_ms, warm_ms, load_ms = [], [], [], []
    for name in names:
        before = _load_seconds(api)
        cold = asyncio.run(_first_token(url, name))
        loaded = _load_seconds(api) - before
        warm = asyncio.run(_first_token(url, name))
        cold_ms.append(cold * 1000)
        warm_ms.append(warm * 1000)
        load_ms.append(loaded * 1000)
        overheads.append((cold - warm - loaded) * 1000)
    print(f"\n2. cold adapters: {count} first requests (1 token, streamed) through :8008")
    print(
        f"   TTFT cold p50 {statistics.median(cold_ms):.1f} ms, warm p50 "
        f"{statistics.median(warm_ms):.1f} ms, the adapter's load p50 "
        f"{statistics.median(load_ms):.1f} ms"
    )
    print(
        f"   overhead of a cold load (cold - warm - load): p50 {statistics.median(overheads):.1f} ms, "
        f"max {max(overheads):.1f} ms (target: under 20 ms)"
    )


async def _first_token(url: str, model: str) -> float:
    async with httpx.AsyncClient(timeout=120) as http:
        return (await one_stream(http, url, model, 1, {})).first_token


# -- 3. the adapter cache -------------------------------------------------------------


async def adapter_engine(
    trace: list[int], adapters: int, pods: int, slots: int, interval: float, half_life: float
) -> Outcome:
    clock = SimulatedClock()
    client = InstantPods(1 << 30, ("peft-model", "lora"), max_adapters=slots)
    settings = PlacementSettings(room_wait=0.0, eviction_half_life=half_life)
    placement = Placement(client, settings, clock=clock)
    placement.register(ModelSpec("base", "peft-model", "/models/base", 100))
    for p in range(pods):
        client.loaded[f"pod-{p}"] = {"base": 100}  # the base on every pod
        placement.add_pod(f"pod-{p}")
    await placement.check_pods()
    ids = [f"a{a:03d}" for a in range(adapters)]
    for adapter_id in ids:
        placement.register(ModelSpec(adapter_id, "lora", f"/a/{adapter_id}", 1, base="base"))
    timing = Setup(interval=interval, health_interval=1.0)
    hits, failed = await replay(placement, clock, [ids[a] for a in trace], timing)
    return Outcome(len(trace), hits, client.loads, failed)


def bench_adapter_cache(requests: int) -> None:
    adapters, pods, slots, interval = 100, 2, 8, 0.1
    trace = zipf_trace(adapters, requests, alpha=1.0, seed=1)
    capacity = pods * slots
    best = belady(trace, capacity)
    rows = [
        ("belady", best),
        ("lru", lru(trace, capacity)),
        ("engine", asyncio.run(adapter_engine(trace, adapters, pods, slots, interval, 600.0))),
        ("eng lru", asyncio.run(adapter_engine(trace, adapters, pods, slots, interval, 0.0))),
    ]
    print(
        f"\n3. adapter cache: {adapters} adapters, Zipf(1.0), {requests} requests "
        f"{interval} s apart, {pods} pods x {slots} adapters"
    )
    print(f"{'cache':>8} {'hit ratio':>10} {'of belady':>10} {'loads':>7} {'failed':>7}")
    for name, outcome in rows:
        print(
            f"{name:>8} {outcome.hit_ratio:>10.4f} {outcome.hit_ratio / best.hit_ratio:>10.3f} "
            f"{outcome.loads:>7} {outcome.failed:>7}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    args = parser.parse_args(argv)
    rounds, tokens, cold, requests = (2, 32, 5, 5000) if args.quick else (4, 64, 20, 20_000)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        lm_samples.save_samples(data / "models")
        ports = launcher.Ports.free(pods=1)
        with (
            launcher.Deployment(
                data_dir=data, ports=ports, pod_args={0: ["--max-adapters", "64"]}
            ) as deployment,
            httpx.Client(base_url=deployment.api_url, timeout=30) as api,
        ):
            build_bench_lm(data / "models")
            apply(api, isvc(BASE, "peft-model", lm_samples.BASE))
            apply(api, isvc("counting", "lora", f"{lm_samples.ADAPTERS}/counting", BASE))
            apply(api, isvc(BENCH_LM, "peft-model", BENCH_LM))
            for model in ("counting", BENCH_LM):
                asyncio.run(_first_token(f"{deployment.url}/v1/completions", model))
            bench_streams(deployment, api, "counting", rounds, tokens, ((1, 12), (8, 3)))
            bench_streams(deployment, api, BENCH_LM, rounds, tokens, ((1, 4), (8, 1)))
            bench_cold_adapters(deployment, api, cold)
    bench_adapter_cache(requests)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
