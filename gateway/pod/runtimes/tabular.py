"""What the tabular runtimes share: scikit-learn, XGBoost and LightGBM.

One input, any name, shown in metadata as ``input-0`` with shape
``[-1, n_features]`` (rank 2: one row is ``[1, n_features]``); named outputs,
``predict`` unless the request asks for others (``predict_proba`` for
classifiers). A runtime opens its file in a worker thread (``_open``: the
library's model kept on the instance, its tensor specs and size returned) and
computes the outputs asked for (``_predict``: inline for a small batch, in a
worker thread for a large one, gateway.pod.offload).

``BoosterModel`` adds what the two gradient-boosting runtimes share: the
booster scores the rows once, ``predict`` is those scores and
``predict_proba`` the class probabilities (for a binary objective, the score
is the probability of class 1, so the columns are ``1 - p`` and ``p``).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import offload
from ..model import InferenceRequest, Model, ModelConfig, ModelMetadata, Tensor, TensorSpec
from .common import requested_outputs, single_input

INPUT_NAME = "input-0"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"


class TabularModel(Model):
    platform: ClassVar[str]  # the runtime's name in metadata
    input_datatype: ClassVar[str] = "FP32"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._input = TensorSpec(INPUT_NAME, self.input_datatype, (-1, -1))
        self._outputs: dict[str, TensorSpec] = {}
        self._size = 0

    async def load(self) -> None:
        self._input, self._outputs, self._size = await asyncio.to_thread(
            self._open, Path(self.config.path)
        )

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(self.platform, (self._input,), tuple(self._outputs.values()))

    def size_bytes(self) -> int:
        return self._size

    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        tensor = single_input(request, self._input)
        wanted = requested_outputs(request, self._outputs, PREDICT)
        return await offload.sized(
            lambda: self._predict(tensor.array, wanted),
            size=tensor.array.size,
            inline_below=offload.PREDICT_INLINE_VALUES,
        )

    @abc.abstractmethod
    def _open(self, path: Path) -> tuple[TensorSpec, dict[str, TensorSpec], int]:
        """Load the model behind ``path`` (in a worker thread) and keep it; its input spec,
        output specs by name, and size in bytes."""

    @abc.abstractmethod
    def _predict(self, x: np.ndarray, wanted: Sequence[TensorSpec]) -> list[Tensor]:
        """The ``wanted`` outputs for the rows of ``x`` (already checked against the input)."""


class BoosterModel(TabularModel):
    """A gradient-boosted trees model: scores per row, and class probabilities from them."""

    output_datatype: ClassVar[str]  # what the library predicts in

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._booster: Any = None
        self._binary = False  # a binary objective: one score, the probability of class 1

    async def unload(self) -> None:
        self._booster = None

    def _predict(self, x: np.ndarray, wanted: Sequence[TensorSpec]) -> list[Tensor]:
        width = self._outputs[PREDICT].shape[1]
        if len(x) == 0:  # boosters answer a flat (0,) for every objective
            scores = np.empty((0, width), dtype=self.output_dtype())
        else:
            scores = np.asarray(self._scores(x), dtype=self.output_dtype()).reshape(len(x), width)
        return [
            Tensor(spec.name, self.output_datatype, self._answer(spec, scores)) for spec in wanted
        ]

    def _answer(self, spec: TensorSpec, scores: np.ndarray) -> np.ndarray:
        if spec.name == PREDICT_PROBA and self._binary:
            return np.hstack((1 - scores, scores))
        return scores

    @classmethod
    def output_dtype(cls) -> type[np.floating[Any]]:
        return np.float32 if cls.output_datatype == "FP32" else np.float64

    @abc.abstractmethod
    def _scores(self, x: np.ndarray) -> Any:
        """The booster's raw prediction for the rows of ``x`` (at least one row)."""

    def _specs(
        self, n_features: int, *, classifier: bool, binary: bool
    ) -> tuple[TensorSpec, dict[str, TensorSpec]]:
        """The input and output specs of the loaded booster. Its scores per row are read by
        scoring one row of zeros."""
        self._binary = binary
        width = int(np.asarray(self._scores(np.zeros((1, n_features), dtype=np.float32))).size)
        outputs = {PREDICT: TensorSpec(PREDICT, self.output_datatype, (-1, width))}
        if classifier:
            n_classes = 2 if binary else width
            outputs[PREDICT_PROBA] = TensorSpec(
                PREDICT_PROBA, self.output_datatype, (-1, n_classes)
            )
        return TensorSpec(INPUT_NAME, self.input_datatype, (-1, n_features)), outputs
