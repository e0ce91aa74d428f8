"""The pod's OpenAI-compatible endpoints: ``POST /v1/completions`` and ``/v1/chat/completions``.

Served on the pod's REST listener (gateway.pod.rest) for the models that generate text
(``gateway.pod.generation.TextGenerator``: a base language model or an adapter over one).
The model is the one ``mm-model-id`` names (the concrete id the gateway sets), else the
body's ``model``; answers name the body's ``model``, as the client asked for it.

What is read of a request, as OpenAI's API defines it (anything else is ignored, as vLLM
ignores it):

- ``prompt`` (completions): a string, or a list of one string;
- ``messages`` (chat): ``{"role", "content"}`` objects, the content a string or a list of
  ``{"type": "text", "text"}`` parts; the prompt is the tokenizer's chat template, or
  ``role: content`` lines (``TextGenerator.chat_prompt``);
- ``max_tokens`` (chat also ``max_completion_tokens``): 1 to ``MAX_TOKENS_LIMIT``, 16 by
  default, and the prompt and it within the model's context;
- ``stream`` (boolean), ``stream_options.include_usage`` (boolean);
- ``n``: 1 (one choice per request); ``stop``: a string or up to 4 strings;
- ``temperature`` (0 to 2), ``top_p`` (0 to 1): checked, and decoding stays greedy: the
  answer is the most likely continuation whatever they say;
- ``echo`` (completions): the prompt before the completion.

Streams are server-sent events (``data: {chunk}``, then ``data: [DONE]``), each token's
text sent as it is generated. A client that goes away stops the generation at its next
token (gateway.pod.generation). Errors are OpenAI's shape, ``{"error": {"message", "type",
"param", "code"}}``, with ``code`` the HTTP status, as vLLM answers them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.errors import GatewayError, InvalidInput
from gateway.core.protocol import MODEL_ID_HEADER

from .generation import STOP, Generation, TextGenerator, check_context
from .repository import ModelRepository

MAX_TOKENS_DEFAULT, MAX_TOKENS_LIMIT = 16, 4096
MAX_STOP_SEQUENCES = 4
COMPLETIONS, CHAT = "completions", "chat"


@dataclass(frozen=True, slots=True)
class TextRequest:
    """One request, checked: what to generate and how to answer."""

    kind: str  # COMPLETIONS or CHAT
    model: str  # as the client named it
    prompt: str
    max_tokens: int
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    echo: bool
    messages: tuple[tuple[str, str], ...] = ()  # a chat's (role, content), in order


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """OpenAI's error JSON, ``code`` the HTTP status (as vLLM sends it)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": param, "code": status}
    return json.dumps({"error": error}).encode()


def parse(kind: str, body: bytes) -> TextRequest:
    """The request in ``body``; InvalidInput naming the first field that is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("'model' must be a non-empty string naming the model")
    messages: tuple[tuple[str, str], ...] = ()
    if kind == CHAT:
        prompt = ""  # made by the model's chat template once the model is known
        max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
        messages = tuple(_messages(data.get("messages")))
    else:
        prompt = _prompt(data.get("prompt"))
        max_tokens = data.get("max_tokens")
    stream = _typed(data, "stream", bool, False)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidInput("'stream_options' must be an object")
    include_usage = _typed(options or {}, "include_usage", bool, False)
    n = _typed(data, "n", int, 1)
    if n != 1:
        raise InvalidInput(f"'n' must be 1: one choice per request (got {n})")
    for name, high in (("temperature", 2.0), ("top_p", 1.0)):
        value = _typed(data, name, (int, float), 0.0)
        if not 0 <= value <= high:
            raise InvalidInput(f"'{name}' must be between 0 and {high:g} (got {value})")
    return TextRequest(
        kind,
        model,
        prompt,
        _max_tokens(max_tokens),
        stream,
        include_usage,
        _stop(data.get("stop")),
        _typed(data, "echo", bool, False) if kind == COMPLETIONS else False,
        messages,
    )


def _typed(data: dict[str, Any], name: str, kind: Any, default: Any) -> Any:
    value = data.get(name)
    if value is None:
        return default
    # JSON true is not a number here, as it is not in OpenAI's schema
    if isinstance(value, bool) and kind is not bool:
        raise InvalidInput(f"'{name}' must be a {_kind_name(kind)}, got {json.dumps(value)}")
    if not isinstance(value, kind):
        raise InvalidInput(f"'{name}' must be a {_kind_name(kind)}, got {json.dumps(value)}")
    return value


def _kind_name(kind: Any) -> str:
    return {bool: "boolean", int: "integer", str: "string"}.get(kind, "number")


def _max_tokens(value: Any) -> int:
    if value is None:
        return MAX_TOKENS_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"'max_tokens' must be an integer, got {json.dumps(value)}")
    if not 1 <= value <= MAX_TOKENS_LIMIT:
        raise InvalidInput(f"'max_tokens' must be between 1 and {MAX_TOKENS_LIMIT}, got {value}")
    return value


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise InvalidInput("'prompt' must be a string (or a list of one string)")
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise InvalidInput(
            f"'stop' must be a non-empty string or a list of up to {MAX_STOP_SEQUENCES} of them"
        )
    return tuple(stops)


def _messages(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("'messages' must be a non-empty list of {role, content} objects")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidInput(f"messages[{i}] must be an object with a string 'role'")
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise InvalidInput(f"messages[{i}].content: only text parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise InvalidInput(f"messages[{i}].content must be a string or a list of text parts")
        messages.append((message["role"], content))
    return messages


class OpenAIApp:
    """The two endpoints over the pod's models; HTTP framing is gateway.pod.rest's."""

    def __init__(self, models: ModelRepository) -> None:
        self._models = models

    async def prepare(
        self, kind: str, headers: dict[str, str], body: bytes
    ) -> tuple[TextRequest, str, list[int]]:
        """The checked request, the model id to serve it and the prompt's tokens: every
        error a client can cause is raised here, before an answer starts."""
        request = parse(kind, body)
        model_id = headers.get(MODEL_ID_HEADER) or request.model
        await self._models.prepare(model_id)
        generator = self._generator(model_id)
        prompt = request.prompt
        if kind == CHAT:
            prompt = generator.chat_prompt(request.messages)
            request = dataclasses.replace(request, prompt=prompt)
        ids = generator.encode(prompt)
        check_context(generator, ids, request.max_tokens)
        return request, model_id, ids

    def _generator(self, model_id: str) -> TextGenerator:
        model = self._models.get(model_id)
        if not isinstance(model, TextGenerator):
            raise InvalidInput(
                f"model '{model_id}' does not generate text ({type(model).__name__}): "
                "use the V2 inference API for it"
            )
        return model

    async def complete(self, request: TextRequest, model_id: str, ids: list[int]) -> bytes:
        """The whole answer, as one JSON object."""
        done = Generation()
        text = ""
        async for piece in self._pieces(request, model_id, ids, done):
            text += piece
        if request.echo:
            text = request.prompt + text
        answer = _Answer(request)
        return json.dumps(answer.whole(text, done)).encode()

    async def events(
        self, request: TextRequest, model_id: str, ids: list[int]
    ) -> AsyncGenerator[bytes, None]:
        """The answer as server-sent events, one per token's text as it comes."""
        answer = _Answer(request)
        done = Generation()
        if request.kind == CHAT:
            yield _event(answer.chunk({"role": "assistant", "content": ""}, None))
        elif request.echo:
            yield _event(answer.chunk(request.prompt, None))
        try:
            async for piece in self._pieces(request, model_id, ids, done):
                if piece:
                    content = {"content": piece} if request.kind == CHAT else piece
                    yield _event(answer.chunk(content, None))
        except GatewayError as exc:  # the answer has started: the error is the last event
            yield _event(
                json.loads(error_body(400 if isinstance(exc, InvalidInput) else 503, exc.message))
            )
            return
        yield _event(answer.chunk({} if request.kind == CHAT else "", done.finish_reason))
        if request.include_usage:
            yield _event(answer.usage_chunk(done))
        yield b"data: [DONE]\n\n"

    async def _pieces(
        self, request: TextRequest, model_id: str, ids: list[int], done: Generation
    ) -> AsyncGenerator[str, None]:
        """The generated text, piece by piece, cut at the first stop sequence (which ends
        the generation there)."""
        with self._models.serving(model_id) as model:
            generator = model
            assert isinstance(generator, TextGenerator)
            text, sent = "", 0
            keep = max((len(s) for s in request.stop), default=1) - 1  # may start a stop
            async with contextlib.aclosing(
                generator.stream(ids, request.max_tokens, done)
            ) as stream:
                async for piece in stream:
                    text += piece
                    cut = _first_stop(text, request.stop, sent)
                    if cut is not None:
                        done.finish_reason = STOP
                        yield text[sent:cut]
                        return
                    ready = max(sent, len(text) - keep)
                    yield text[sent:ready]
                    sent = ready
                yield text[sent:]


def _first_stop(text: str, stops: Sequence[str], since: int) -> int | None:
    found = [i for s in stops if (i := text.find(s, since)) >= 0]
    return min(found) if found else None


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class _Answer:
    """The JSON of one answer: its id, time and model, in OpenAI's objects."""

    def __init__(self, request: TextRequest) -> None:
        self.request = request
        chat = request.kind == CHAT
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.request.model}

    def whole(self, text: str, done: Generation) -> dict[str, Any]:
        if self.request.kind == CHAT:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": done.finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": done.finish_reason,
            }
        return {**self._head(self.object), "choices": [choice], "usage": _usage(done)}

    def chunk(self, content: dict[str, str] | str, finish_reason: str | None) -> dict[str, Any]:
        if isinstance(content, dict):
            choice: dict[str, Any] = {"index": 0, "delta": content, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head(self.chunk_object), "choices": [choice]}

    def usage_chunk(self, done: Generation) -> dict[str, Any]:
        return {**self._head(self.chunk_object), "choices": [], "usage": _usage(done)}


def _usage(done: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }
