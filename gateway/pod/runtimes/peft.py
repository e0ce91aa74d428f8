"""``peft-model``: a causal language model from ``transformers``, with a PEFT adapter or without.

The seed's LLM case (its ``PeftModelServer``): BYTES ``content`` in, the generated text out
as BYTES ``output-0``, one string per input, greedy decoding. Real libraries: PyPI
``transformers`` and ``peft`` on the CPU torch the project pins (the ``llm`` extra).

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
Generation runs in a worker thread, so the pod keeps answering while it runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput, ModelFormatError, ModelNotInStorage

from ..model import InferenceRequest, Model, ModelConfig, ModelMetadata, Tensor, TensorSpec
from ..puller import confine, pvc_root

ADAPTER_CONFIG = "adapter_config.json"
BASE_CONFIG = "config.json"
INPUT, OUTPUT = "content", "output-0"
MAX_NEW_TOKENS_DEFAULT, MAX_NEW_TOKENS_LIMIT = 16, 256


class PeftModelRuntime(Model):
    platform = "peft-model"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._model: Any = None
        self._tokenizer: Any = None
        self._context = 0
        self._size = 0
        self._lock = asyncio.Lock()  # one generation at a time: torch uses every core

    async def load(self) -> None:
        self._model, self._tokenizer, self._context, self._size = await asyncio.to_thread(
            _read, Path(self.config.path), pvc_root(self.config.key)
        )

    async def unload(self) -> None:
        self._model = self._tokenizer = None

    def size_bytes(self) -> int:
        return self._size

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(
            self.platform,
            (TensorSpec(INPUT, "BYTES", (-1,)),),
            (TensorSpec(OUTPUT, "BYTES", (-1,)),),
        )

    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        prompts = _prompts(request)
        new_tokens = _max_new_tokens(request)
        encoded = [self._tokenizer(p)["input_ids"] for p in prompts]
        for prompt, ids in zip(prompts, encoded, strict=True):
            if len(ids) + new_tokens > self._context:
                raise InvalidInput(
                    f"input '{INPUT}': a prompt of {len(ids)} tokens and max_new_tokens "
                    f"{new_tokens} exceed the model's context of {self._context} tokens "
                    f"(prompt starts {prompt[:40]!r})"
                )
        async with self._lock:
            texts = await asyncio.to_thread(self._generate, encoded, new_tokens)
        return (Tensor.of(OUTPUT, np.array([t.encode() for t in texts], dtype=object), "BYTES"),)

    def _generate(self, encoded: list[list[int]], new_tokens: int) -> list[str]:
        import torch

        texts = []
        with torch.inference_mode():
            for ids in encoded:
                input_ids = torch.tensor([ids])
                output = self._model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=self._tokenizer.pad_token_id,
                )
                texts.append(self._tokenizer.decode(output[0], skip_special_tokens=True))
        return texts


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
