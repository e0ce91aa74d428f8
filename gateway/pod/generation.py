"""Text generation as the pod's OpenAI-compatible endpoints see it, free of any library.

A ``TextGenerator`` is a loaded model that continues text token by token: a base causal
language model, or an adapter over one (gateway.pod.runtimes.peft). ``stream`` yields the
text of each new token as soon as it exists; closing the stream early (the client went
away, a stop sequence matched) stops the generation at its next token and frees the model
for the next request before ``aclose`` returns: nothing keeps running for nobody.

``run_in_thread`` is how a runtime does that with a blocking token loop: the loop runs in a
worker thread, hands each token's text to the event loop, and checks a ``threading.Event``
between tokens.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gateway.core.errors import InvalidInput

# the reasons OpenAI's API gives in finish_reason
STOP, LENGTH = "stop", "length"


@dataclass(slots=True)
class Generation:
    """What one request's generation did, filled in as it runs."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = LENGTH


@runtime_checkable
class TextGenerator(Protocol):
    """A loaded model the OpenAI-compatible endpoints can serve."""

    @property
    def context_tokens(self) -> int:
        """The model's context: prompt and generated tokens together."""

    def encode(self, prompt: str) -> list[int]:
        """The prompt's token ids."""

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt for a chat of (role, content) messages, ending where the assistant
        answers next (the tokenizer's chat template, else ``role: content`` lines)."""

    def stream(
        self, prompt_ids: list[int], max_tokens: int, done: Generation
    ) -> AsyncGenerator[str, None]:
        """The text of each new token, at most ``max_tokens``; ``done`` says why it ended."""


def check_context(generator: TextGenerator, prompt_ids: Sequence[int], max_tokens: int) -> None:
    """InvalidInput unless the prompt and ``max_tokens`` fit in the model's context."""
    context = generator.context_tokens
    if len(prompt_ids) + max_tokens > context:
        raise InvalidInput(
            f"this model's maximum context length is {context} tokens; the prompt has "
            f"{len(prompt_ids)} tokens and max_tokens is {max_tokens}: shorten the prompt or "
            "lower max_tokens"
        )


TokenLoop = Callable[[Callable[[str], None], threading.Event], str]


async def run_in_thread(loop_body: TokenLoop, done: Generation) -> AsyncGenerator[str, None]:
    """Run ``loop_body(emit, stopped)`` in a worker thread and yield what it emits.

    ``loop_body`` calls ``emit(text)`` per token, returns the finish reason (kept in
    ``done``, with the count of tokens yielded), and returns early once ``stopped`` is set.
    When the consumer stops iterating (or is cancelled), ``stopped`` is set and this waits
    for the thread to end before it returns, so that whatever the caller holds (the model's
    lock) is released only once the model is idle again."""
    events = asyncio.get_running_loop()
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
    stopped = threading.Event()

    def emit(text: str) -> None:
        events.call_soon_threadsafe(queue.put_nowait, text)

    def body() -> None:
        try:
            done.finish_reason = loop_body(emit, stopped)
        except BaseException as exc:  # raised again on the event loop
            events.call_soon_threadsafe(queue.put_nowait, exc)
        events.call_soon_threadsafe(queue.put_nowait, None)

    worker = asyncio.ensure_future(asyncio.to_thread(body))
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            done.completion_tokens += 1
            yield item
    finally:
        stopped.set()
        await asyncio.shield(worker)
