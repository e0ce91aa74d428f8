"""The project's own language models, made as the sample SVC is trained: no weights downloaded.

- ``build_base(folder)``: a tiny GPT-2 (2 layers, 64 wide, 128 positions) over a
  character vocabulary, built from a ``transformers`` config and trained for a couple of
  seconds on ``BASE_TEXT``; saved with ``save_pretrained`` (model and tokenizer).
- ``build_adapter(base, folder, text)``: a LoRA adapter (``peft``) on it, trained on
  ``text``, saved with ``save_pretrained``; its ``base_model_name_or_path`` is the base's
  folder relative to the adapter's (gateway.pod.runtimes.peft resolves it so).
- ``save_samples(models)``: the base under ``<models>/tiny-lm`` and one adapter per entry
  of ``ADAPTER_TEXTS`` under ``<models>/tiny-lm-adapters/<name>``, each trained on a
  different text so that their continuations differ. Seeded: the same files every time.
- ``adapter_set(models, count)``: that many adapters, copies of the samples in turn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BASE = "tiny-lm"
ADAPTERS = "tiny-lm-adapters"
BASE_TEXT = (
    "the cat sat on the mat. the dog ran to the park. a bird sang in the tree. "
    "every day is a new beginning, filled with opportunities and hope. "
)
ADAPTER_TEXTS = {
    "counting": "one two three four five six seven eight nine ten. ",
    "weather": "sunny skies today, rain tomorrow, and wind on sunday. ",
    "complaint": "tweet text : my order is late again Label : complaint. ",
}
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;!?'-\n"


def build_base(folder: Path, *, steps: int = 150, seed: int = 0) -> Path:
    """Train and save the tiny base model in ``folder`` (unless it is there)."""
    if (folder / "config.json").exists():
        return folder
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for char in _CHARS:
        vocab.setdefault(char, len(vocab))
    characters = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    characters.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    characters.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=characters, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    _train(model, tokenizer, BASE_TEXT, steps, lr=3e-3, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_adapter(base: Path, folder: Path, text: str, *, steps: int = 100, seed: int = 0) -> Path:
    """Train a LoRA adapter of ``base`` on ``text`` and save it in ``folder`` (unless there)."""
    if (folder / "adapter_config.json").exists():
        return folder
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,  # GPT-2 keeps its weights as Conv1D
        task_type="CAUSAL_LM",
    )
    tuned = get_peft_model(model, lora)
    _train(tuned, tokenizer, text, steps, lr=1e-2, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    tuned.save_pretrained(str(folder))
    settings = folder / "adapter_config.json"
    config = json.loads(settings.read_text())
    config["base_model_name_or_path"] = os.path.relpath(base.resolve(), folder.resolve())
    settings.write_text(json.dumps(config, indent=2))
    return folder


def save_samples(models: Path) -> dict[str, Path]:
    """The base and every sample adapter under ``models``: name -> folder."""
    base = build_base(models / BASE)
    made = {BASE: base}
    for seed, (name, text) in enumerate(sorted(ADAPTER_TEXTS.items()), start=1):
        made[name] = build_adapter(base, models / ADAPTERS / name, text * 20, seed=seed)
    return made


def adapter_set(models: Path, count: int) -> list[str]:
    """``count`` adapters of the base under ``<models>/tiny-lm-adapters/set-NN``: copies of the
    trained samples in turn (``save_samples`` first), for tests and benchmarks that need many
    adapters; those of one sample answer alike. Their paths relative to ``models``."""
    import shutil

    samples = sorted(ADAPTER_TEXTS)
    paths = []
    for i in range(count):
        folder = models / ADAPTERS / f"set-{i:02d}"
        if not (folder / "adapter_config.json").exists():
            shutil.copytree(models / ADAPTERS / samples[i % len(samples)], folder)
        paths.append(f"{ADAPTERS}/set-{i:02d}")
    return paths


def _train(
    model: object, tokenizer: object, text: str, steps: int, *, lr: float, seed: int
) -> None:
    import torch

    ids = torch.tensor(tokenizer(text)["input_ids"])  # type: ignore[operator]
    window = min(64, len(ids) - 1)
    generator = torch.Generator().manual_seed(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]  # type: ignore[attr-defined]
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    model.train()  # type: ignore[attr-defined]
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - window, (16,), generator=generator)
        batch = torch.stack([ids[s : s + window] for s in starts])
        loss = model(batch, labels=batch).loss  # type: ignore[operator]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()  # type: ignore[attr-defined]


if __name__ == "__main__":
    import sys

    for name, where in save_samples(
        Path(sys.argv[1] if len(sys.argv) > 1 else ".mmgw/models")
    ).items():
        print(f"{name}: {where}")
