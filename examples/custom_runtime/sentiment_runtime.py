"""``SentimentRuntime``: a custom runtime for the ``sentiment`` model format.

Serve it from pods of its ServingRuntime (servingruntime.yaml names this class in
MLSERVER_MODEL_IMPLEMENTATION), started from the repository's folder:

    mmgw pod --port 9101 --store embedded --runtime-name sentiment-runtime

or from any pod with ``mmgw pod --runtime sentiment=examples.custom_runtime.sentiment_runtime:SentimentRuntime``.

Model path: a ``.joblib`` file (or a folder holding one) with a scikit-learn text
pipeline, as ``python -m examples.custom_runtime.train`` writes.

Tensors: input ``text``, BYTES ``[-1]`` (UTF-8 sentences); output ``label``,
BYTES ``[-1]``, one of ``positive`` / ``negative`` per sentence.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.core.errors import ModelFormatError
from gateway.pod.decode import decode_args
from gateway.pod.model import Model, ModelConfig, ModelMetadata, TensorSpec
from gateway.pod.runtimes.common import model_file


class SentimentRuntime(Model):
    """A text classifier: sentences in, one label per sentence out."""

    platform = "sentiment"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._pipeline: Any = None
        self._size = 0

    async def load(self) -> None:
        self._pipeline, self._size = await asyncio.to_thread(_read, Path(self.config.path))

    async def unload(self) -> None:
        self._pipeline = None

    def metadata(self) -> ModelMetadata:
        text, label = TensorSpec("text", "BYTES", (-1,)), TensorSpec("label", "BYTES", (-1,))
        return ModelMetadata(self.platform, (text,), (label,))

    def size_bytes(self) -> int:
        return self._size

    @decode_args(outputs=("label",))
    async def predict(self, text: list[str]) -> list[str]:
        if not text:
            return []
        return [str(label) for label in self._pipeline.predict(text)]


def _read(path: Path) -> tuple[Any, int]:
    import joblib

    file = model_file(path, (".joblib",))
    try:
        pipeline = joblib.load(file)
    except Exception as exc:
        raise ModelFormatError(
            f"cannot read '{file}' as a sentiment model: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(getattr(pipeline, "predict", None)):
        raise ModelFormatError(
            f"'{file}' holds a {type(pipeline).__qualname__}, which has no predict method"
        )
    return pipeline, file.stat().st_size
