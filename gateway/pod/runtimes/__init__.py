"""The runtime registry: model type (format name, e.g. "sklearn") -> ``Model`` class.

A registry entry is either a ``Model`` subclass or an import path
``"package.module:ClassName"`` (as MLServer's ``implementation`` setting), so a
runtime's dependencies are imported only when a model of its type is first
loaded, and a user's own runtime can be named in configuration.

``BUILTIN_RUNTIMES`` lists the runtimes this package ships: ``sklearn``,
``xgboost``, ``lightgbm``, ``onnx`` (onnxruntime), ``pytorch`` (TorchScript),
``peft-model`` (transformers and peft: a causal language model, with an adapter or not)
and ``synthetic`` (models that only take memory and time, for scale tests).
All but sklearn and synthetic need the package's optional extras
(``pip install 'modelmesh-gateway[runtimes]'``).
Nothing is registered at import time: whoever builds the pod builds its registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from gateway.core.errors import InvalidSpec, LoadFailed

from ..model import Model

RuntimeRef = str | type[Model]

BUILTIN_RUNTIMES: Mapping[str, RuntimeRef] = MappingProxyType(
    {
        "sklearn": "gateway.pod.runtimes.sklearn:SKLearnModel",
        "synthetic": "gateway.pod.runtimes.synthetic:SyntheticModel",
        "xgboost": "gateway.pod.runtimes.xgboost:XGBoostModel",
        "lightgbm": "gateway.pod.runtimes.lightgbm:LightGBMModel",
        "onnx": "gateway.pod.runtimes.onnx:ONNXModel",
        "pytorch": "gateway.pod.runtimes.pytorch:TorchScriptModel",
        "peft-model": "gateway.pod.runtimes.peft:PeftModelRuntime",
        "lora": "gateway.pod.runtimes.peft:LoraAdapterRuntime",
    }
)


class RuntimeRegistry:
    """Model type -> Model class, resolving import paths on first use."""

    def __init__(self, runtimes: Mapping[str, RuntimeRef] = BUILTIN_RUNTIMES) -> None:
        self._refs: dict[str, RuntimeRef] = {}
        for model_type, ref in runtimes.items():
            self.register(model_type, ref)

    def register(self, model_type: str, runtime: RuntimeRef) -> None:
        """Add or replace the runtime of ``model_type``."""
        if not model_type:
            raise ValueError("model type must not be empty")
        if isinstance(runtime, str):
            if ":" not in runtime:
                raise ValueError(f"runtime '{runtime}' is not of the form 'module:ClassName'")
        elif not (isinstance(runtime, type) and issubclass(runtime, Model)):
            raise TypeError(f"runtime for '{model_type}' is not a Model subclass: {runtime!r}")
        self._refs[model_type] = runtime

    @property
    def model_types(self) -> tuple[str, ...]:
        """Supported model types, sorted."""
        return tuple(sorted(self._refs))

    def __contains__(self, model_type: object) -> bool:
        return model_type in self._refs

    def get(self, model_type: str) -> type[Model]:
        """The Model class of ``model_type``.

        InvalidSpec (naming the supported types) for an unknown type, LoadFailed
        when the runtime's import path does not lead to a Model class.
        """
        ref = self._refs.get(model_type)
        if ref is None:
            raise InvalidSpec(
                f"unsupported model type '{model_type}'; this pod supports "
                f"{_quoted(self.model_types) or 'no model types'}"
            )
        if isinstance(ref, str):
            ref = self._refs[model_type] = _import(model_type, ref)
        return ref


def _import(model_type: str, path: str) -> type[Model]:
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise LoadFailed(
            f"runtime for model type '{model_type}' cannot be imported from '{path}': {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise LoadFailed(f"runtime '{path}' for model type '{model_type}' is not a Model")
    return cls


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)
