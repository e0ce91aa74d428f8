"""A runtime whose loads always fail: one pod of a test runs it for the synthetic format."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.errors import LoadFailed
from gateway.pod.model import InferenceRequest, Model, ModelMetadata, Tensor


class BrokenRuntime(Model):
    async def load(self) -> None:
        raise LoadFailed("this pod's runtime cannot load anything (broken on purpose)")

    async def predict(self, request: InferenceRequest) -> Sequence[Tensor]:
        raise AssertionError("never loaded")

    def metadata(self) -> ModelMetadata:
        raise AssertionError("never loaded")
