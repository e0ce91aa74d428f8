"""A configurable fake runtime for repository and server tests.

Behaviour comes from the model_key JSON, e.g. ``{"load_s": 0.2, "load_error": "boom"}``:

- ``load_s``: seconds ``load`` sleeps; ``load_error``: ``load`` raises RuntimeError;
  ``format_error``: ``load`` raises ModelFormatError;
- ``predict_error``: ``predict`` raises ZeroDivisionError with that message;
- ``metadata_error``: ``metadata`` raises RuntimeError (an unexpected bug);
- ``size``: what ``size_bytes`` answers (default 1000);
- ``block``: ``predict`` waits until the class's ``gate`` is set, counting itself
  in ``blocked`` meanwhile (a handshake for tests of requests in flight).

``predict`` echoes input ``x`` (FP32, any shape) doubled as output ``y``.
Each ``fake_runtime()`` call returns a new class with its own counters.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from gateway.core.errors import ModelFormatError
from gateway.pod.model import InferenceRequest, Model, ModelMetadata, Tensor, TensorSpec


class FakeModel(Model):
    loads: ClassVar[Counter[str]]
    unloads: ClassVar[Counter[str]]
    running: ClassVar[int]
    max_running: ClassVar[int]
    blocked: ClassVar[int]
    gate: ClassVar[asyncio.Event]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.options: dict[str, Any] = json.loads(self.config.key or "{}")

    async def load(self) -> None:
        cls = type(self)
        cls.loads[self.model_id] += 1
        cls.running += 1
        cls.max_running = max(cls.max_running, cls.running)
        try:
            await asyncio.sleep(self.options.get("load_s", 0))
            if "load_error" in self.options:
                raise RuntimeError(self.options["load_error"])
            if "format_error" in self.options:
                raise ModelFormatError(self.options["format_error"])
        finally:
            cls.running -= 1

    async def unload(self) -> None:
        type(self).unloads[self.model_id] += 1

    def metadata(self) -> ModelMetadata:
        if "metadata_error" in self.options:
            raise RuntimeError(self.options["metadata_error"])
        return ModelMetadata(
            "fake", (TensorSpec("x", "FP32", (-1,)),), (TensorSpec("y", "FP32", (-1,)),)
        )

    def size_bytes(self) -> int:
        return int(self.options.get("size", 1000))

    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        cls = type(self)
        if self.options.get("block"):
            cls.blocked += 1
            try:
                await cls.gate.wait()
            finally:
                cls.blocked -= 1
        if "predict_error" in self.options:
            raise ZeroDivisionError(self.options["predict_error"])
        (x,) = request.inputs
        self.metadata().inputs[0].check(x)
        return [Tensor("y", "FP32", x.array * 2)]


def fake_runtime() -> type[FakeModel]:
    """A fresh FakeModel subclass with zeroed counters."""
    counters = {
        "loads": Counter(),
        "unloads": Counter(),
        "running": 0,
        "max_running": 0,
        "blocked": 0,
        "gate": asyncio.Event(),
    }
    return type("Fake", (FakeModel,), counters)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait until ``predicate()`` holds, polling; a generous bound, not a timing assumption."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {timeout:g} s: {what}")
        await asyncio.sleep(0.002)


def key(**options: Any) -> str:
    return json.dumps(options)
