"""A user's MLServer runtime, as the seed's custom-runtime document writes one: unchanged
MLServer code, imported by MLServer itself (never by the project, which has no mlserver).

- ``DigitsModel``: ``decode_args``-typed, a NumPy array in, the predicted digits out.
- ``DigitsRequestModel``: ``InferenceRequest`` in, ``InferenceResponse`` out.
- ``BrokenModel``: its ``load()`` raises; ``SlowModel``: its ``load()`` sleeps 30 s.
"""

import asyncio

import joblib
import numpy as np
from mlserver import MLModel, types
from mlserver.codecs import NumpyCodec, decode_args
from mlserver.utils import get_model_uri


class DigitsModel(MLModel):
    async def load(self) -> bool:
        self._model = joblib.load(await get_model_uri(self._settings))
        return True

    @decode_args
    async def predict(self, predict: np.ndarray) -> np.ndarray:
        return self._model.predict(predict)


class DigitsRequestModel(MLModel):
    async def load(self) -> bool:
        self._model = joblib.load(await get_model_uri(self._settings))
        return True

    async def predict(self, payload: types.InferenceRequest) -> types.InferenceResponse:
        pixels = NumpyCodec.decode_input(payload.inputs[0])
        digits = self._model.predict(pixels)
        return types.InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("digit", digits)],
        )


class BrokenModel(MLModel):
    async def load(self) -> bool:
        raise RuntimeError("the weights are corrupt")

    async def predict(self, payload: types.InferenceRequest) -> types.InferenceResponse:
        raise NotImplementedError


class SlowModel(MLModel):
    async def load(self) -> bool:
        await asyncio.sleep(30)
        return True

    async def predict(self, payload: types.InferenceRequest) -> types.InferenceResponse:
        raise NotImplementedError
