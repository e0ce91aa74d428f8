"""``peft-model`` and ``lora``: causal language models from ``transformers``, and PEFT adapters.

- ``peft-model`` (``PeftModelRuntime``): a base model, with a PEFT adapter of its own or
  without. The seed's LLM case (its ``PeftModelServer``): BYTES ``content`` in, the
  generated text out as BYTES ``output-0``, one string per input, greedy decoding.
- ``lora`` (``LoraAdapterRuntime``): a LoRA adapter attached at run time to a base model
  the pod already holds (``ModelConfig.base``, which the gateway names in the load: the
  InferenceService's ``mmgw.io/base-model``), as vLLM's ``load_lora_adapter`` does. Many
  adapters share one base's weights; unloading one detaches it.

Both are ``gateway.pod.generation.TextGenerator``s, so the pod's OpenAI-compatible
endpoints serve them too. Real libraries: PyPI ``transformers`` and ``peft`` on the CPU
torch the project pins (the ``llm`` extra).

Model path (a folder; weights are never downloaded: ``local_files_only``):

- a PEFT adapter (``adapter_config.json``): its ``base_model_name_or_path`` is the base
  model's folder, relative to the adapter's folder (or absolute). With the PVC the load
  names, the base must resolve inside it, as the model itself must;
- a base model folder (``config.json``, the tokenizer's files, the weights), served alone.

A Hugging Face model folder as ``save_pretrained`` writes it loads the same way:
put it on the PVC and point the adapter's ``base_model_name_or_path`` at it (a hub id
such as ``bigscience/bloomz-560m`` is not a folder, and is refused naming it).
``gateway.tools.lm_samples`` makes the project's own tiny model and adapters.

Request parameters: ``max_new_tokens`` (integer, 1 to 256; default 16). A prompt whose
tokens and ``max_new_tokens`` exceed the model's context (``n_positions``) is refused.
Generation runs in a worker thread, one request at a time per base model (its adapters
included: they share its weights), so the pod keeps answering while it runs. It is a plain
greedy loop over the model's key/value cache, checked between tokens for a client gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput, LoadFailed, ModelFormatError, ModelNotInStorage

from ..generation import LENGTH, STOP, Generation, check_context, run_in_thread
from ..model import InferenceRequest, Model, ModelConfig, ModelMetadata, Tensor, TensorSpec
from ..puller import confine, pvc_root

ADAPTER_CONFIG = "adapter_config.json"
BASE_CONFIG = "config.json"
INPUT, OUTPUT = "content", "output-0"
MAX_NEW_TOKENS_DEFAULT, MAX_NEW_TOKENS_LIMIT = 16, 256


_METADATA = ModelMetadata(
    "peft-model", (TensorSpec(INPUT, "BYTES", (-1,)),), (TensorSpec(OUTPUT, "BYTES", (-1,)),)
)


class PeftModelRuntime(Model):
    """A base causal language model (with the PEFT adapter of the seed's case, or without),
    and the adapters attached to it since."""

    platform = "peft-model"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._model: Any = None  # the base, or the PeftModel wrapping it once it has adapters
        self._own_adapter: str | None = None  # the seed's case: the adapter loaded with it
        self._tokenizer: Any = None
        self._context = 0
        self._size = 0
        self._lock = asyncio.Lock()  # one generation at a time: torch uses every core
        self._names = itertools.count(1)

    async def load(self) -> None:
        self._model, self._tokenizer, self._context, self._size = await asyncio.to_thread(
            _read, Path(self.config.path), pvc_root(self.config.key)
        )
        if _is_peft(self._model):
            self._own_adapter = self._model.active_adapter

    async def unload(self) -> None:
        self._model = self._tokenizer = None

    def size_bytes(self) -> int:
        return self._size

    def metadata(self) -> ModelMetadata:
        return _METADATA

    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        return await self.predict_with(request, None)

    # -- TextGenerator

    @property
    def context_tokens(self) -> int:
        return self._context

    def encode(self, prompt: str) -> list[int]:
        ids: list[int] = self._tokenizer(prompt)["input_ids"]
        return ids

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        if getattr(self._tokenizer, "chat_template", None):
            text: str = self._tokenizer.apply_chat_template(
                [{"role": r, "content": c} for r, c in messages],
                tokenize=False,
                add_generation_prompt=True,
            )
            return text
        return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"

    def stream(
        self, prompt_ids: list[int], max_tokens: int, done: Generation
    ) -> AsyncGenerator[str, None]:
        return self.stream_with(prompt_ids, max_tokens, done, None)

    # -- what an adapter over this base uses

    async def predict_with(
        self, request: InferenceRequest, adapter: str | None
    ) -> Sequence[Tensor]:
        """The V2 answer, generated with ``adapter`` (None: the model as loaded)."""
        prompts = _prompts(request)
        new_tokens = _max_new_tokens(request)
        encoded = [self.encode(p) for p in prompts]
        for ids in encoded:
            check_context(self, ids, new_tokens)
        texts = []
        for prompt, ids in zip(prompts, encoded, strict=True):
            pieces = [
                piece async for piece in self.stream_with(ids, new_tokens, Generation(), adapter)
            ]
            texts.append(prompt + "".join(pieces))
        return (Tensor.of(OUTPUT, np.array([t.encode() for t in texts], dtype=object), "BYTES"),)

    async def stream_with(
        self, prompt_ids: list[int], max_tokens: int, done: Generation, adapter: str | None
    ) -> AsyncGenerator[str, None]:
        """The text of each new token, generated with ``adapter`` (None: as loaded)."""
        done.prompt_tokens = len(prompt_ids)
        async with self._lock:
            if self._model is None:
                raise LoadFailed(f"model '{self.model_id}' is unloaded")
            loop = self._token_loop(prompt_ids, max_tokens, adapter)
            async with contextlib.aclosing(run_in_thread(loop, done)) as pieces:
                async for piece in pieces:
                    yield piece

    async def attach(self, path: Path) -> tuple[str, int]:
        """Attach the LoRA adapter in ``path``: (its name here, its bytes)."""
        name = f"adapter{next(self._names)}"
        async with self._lock:
            if self._model is None:
                raise LoadFailed(f"base model '{self.model_id}' is unloaded")
            self._model, size = await asyncio.to_thread(_attach, self._model, path, name)
        return name, size

    async def detach(self, name: str) -> None:
        async with self._lock:
            model = self._model
            if model is None or name not in getattr(model, "peft_config", {}):
                return
            if self._own_adapter is None and list(model.peft_config) == [name]:
                self._model = await asyncio.to_thread(model.unload)  # the plain base again
            else:
                await asyncio.to_thread(model.delete_adapter, name)

    def _token_loop(
        self, prompt_ids: list[int], max_tokens: int, adapter: str | None
    ) -> Callable[[Callable[[str], None], threading.Event], str]:
        model, tokenizer = self._model, self._tokenizer
        eos = tokenizer.eos_token_id

        def loop(emit: Callable[[str], None], stopped: threading.Event) -> str:
            import torch

            with torch.inference_mode(), self._using(model, adapter):
                step, cache = torch.tensor([prompt_ids]), None
                tokens: list[int] = []
                text = ""
                for _ in range(max_tokens):
                    if stopped.is_set():
                        return STOP
                    out = model(input_ids=step, cache=cache, use_cache=True)
                    cache = out.cache
                    token = int(out.logits[0, -1].argmax())
                    if token == eos:
                        return STOP
                    tokens.append(token)
                    decoded = tokenizer.decode(tokens, skip_special_tokens=True)
                    # a token that ends inside a character waits for the next one
                    piece = "" if decoded.endswith("\ufffd") else decoded[len(text) :]
                    text = text if not piece else decoded
                    emit(piece)
                    step = torch.tensor([[token]])
            return LENGTH

        return loop

    @contextlib.contextmanager
    def _using(self, model: Any, adapter: str | None) -> Iterator[None]:
        if not _is_peft(model):
            yield
        elif adapter is not None or self._own_adapter is not None:
            model.set_adapter(adapter or self._own_adapter)
            yield
        else:
            with model.disable_adapter():
                yield


class LoraAdapterRuntime(Model):
    """A LoRA adapter over a base model the pod holds (``ModelConfig.base``)."""

    platform = "lora"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        base = config.base
        if not isinstance(base, PeftModelRuntime):
            raise ModelFormatError(
                f"a lora adapter needs its base model loaded on the pod as a peft-model; "
                f"got {type(base).__name__ if base is not None else 'none'}"
            )
        self._base: PeftModelRuntime = base
        self._name = ""
        self._size = 0

    async def load(self) -> None:
        path = Path(self.config.path)
        if not (path / ADAPTER_CONFIG).is_file():
            if not path.exists():
                raise ModelNotInStorage(f"adapter folder not found: {path}")
            raise ModelFormatError(f"'{path}' is not a PEFT adapter: it has no {ADAPTER_CONFIG}")
        self._name, self._size = await self._base.attach(path)

    async def unload(self) -> None:
        if self._name:
            await self._base.detach(self._name)

    def size_bytes(self) -> int:
        return self._size

    def metadata(self) -> ModelMetadata:
        return _METADATA

    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        return await self._base.predict_with(request, self._name)

    @property
    def context_tokens(self) -> int:
        return self._base.context_tokens

    def encode(self, prompt: str) -> list[int]:
        return self._base.encode(prompt)

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        return self._base.chat_prompt(messages)

    def stream(
        self, prompt_ids: list[int], max_tokens: int, done: Generation
    ) -> AsyncGenerator[str, None]:
        return self._base.stream_with(prompt_ids, max_tokens, done, self._name)


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def _attach(model: Any, path: Path, name: str) -> tuple[Any, int]:
    """Load the adapter in ``path`` into ``model`` (wrapping a plain base in a PeftModel)."""
    from peft import PeftModel

    try:
        if _is_peft(model):
            model.load_adapter(str(path), adapter_name=name, local_files_only=True)
        else:
            model = PeftModel.from_pretrained(
                model, str(path), adapter_name=name, local_files_only=True
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelFormatError(
            f"cannot attach the adapter '{path}' to its base: {type(exc).__name__}: {exc}"
        ) from exc
    model.eval()
    marker = f".{name}."
    size = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if marker in n)
    return model, size


def _prompts(request: InferenceRequest) -> list[str]:
    tensors = [t for t in request.inputs if t.name == INPUT] or list(request.inputs[:1])
    if len(request.inputs) != 1 or not tensors:
        raise InvalidInput(f"the model takes one input, '{INPUT}' (BYTES)")
    (tensor,) = tensors
    if tensor.datatype != "BYTES":
        raise InvalidInput(
            f"input '{tensor.name}': datatype '{tensor.datatype}' given, model expects 'BYTES'"
        )
    try:
        return [bytes(v).decode() for v in tensor.array.reshape(-1)]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input '{tensor.name}': not UTF-8 text: {exc}") from None


def _max_new_tokens(request: InferenceRequest) -> int:
    value = request.parameters.get("max_new_tokens", MAX_NEW_TOKENS_DEFAULT)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"parameter max_new_tokens must be an integer, got {value!r}")
    if not 1 <= value <= MAX_NEW_TOKENS_LIMIT:
        raise InvalidInput(
            f"parameter max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {value}"
        )
    return value


def _read(path: Path, root: Path | None) -> tuple[Any, Any, int, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_dir():
        raise ModelNotInStorage(f"model folder not found: {path}")
    adapter = path / ADAPTER_CONFIG
    base = _base_of(path, adapter, root) if adapter.is_file() else path
    if not (base / BASE_CONFIG).is_file():
        raise ModelFormatError(
            f"'{path}' is neither a PEFT adapter ({ADAPTER_CONFIG}) nor a model folder ({BASE_CONFIG})"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
        if adapter.is_file():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFormatError(f"cannot load '{path}': {type(exc).__name__}: {exc}") from exc
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = model.config
    context = int(
        getattr(config, "n_positions", 0) or getattr(config, "max_position_embeddings", 0) or 0
    )
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return model, tokenizer, context, size


def _base_of(path: Path, adapter: Path, root: Path | None) -> Path:
    try:
        named = json.loads(adapter.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"'{adapter}' cannot be read: {exc}") from exc
    if not isinstance(named, str) or not named:
        raise ModelFormatError(f"'{adapter}' names no base_model_name_or_path")
    base = (path / named).resolve()
    if not base.is_dir():
        raise ModelFormatError(
            f"the adapter's base model '{named}' is not a folder (resolved from the adapter's "
            f"folder to '{base}'); weights are never downloaded: put the base model on the PVC"
        )
    if root is not None:
        confine(base, root)
    return base
