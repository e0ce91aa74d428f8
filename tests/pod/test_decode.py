"""decode_args: typed predict methods, without any transport."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from gateway.core.errors import InvalidInput
from gateway.pod.decode import decode_args
from gateway.pod.model import InferenceRequest, Model, ModelConfig, ModelMetadata, Tensor


class _Base(Model):
    async def load(self) -> None:
        return None

    def metadata(self) -> ModelMetadata:
        return ModelMetadata("test", (), ())


class Upper(_Base):
    @decode_args(outputs=("upper",))
    async def predict(self, text: list[str]) -> list[str]:
        return [t.upper() for t in text]


class Scale(_Base):
    @decode_args
    async def predict(
        self, x: np.ndarray, factor: list[float], note: list[str] | None = None
    ) -> np.ndarray:
        return x * factor[0]


class Both(_Base):
    @decode_args(outputs=("words", "lengths"))
    async def predict(self, text: list[str]) -> tuple[list[str], np.ndarray]:
        return [t[::-1] for t in text], np.array([len(t) for t in text], dtype=np.int32)


def _model(cls: type[Model]) -> Model:
    return cls(ModelConfig("m", "test", "."))  # type: ignore[arg-type]


def _run(model: Model, *inputs: Tensor, outputs: Sequence[str] = ()) -> Sequence[Tensor]:
    import asyncio

    return asyncio.run(model.predict(InferenceRequest(tuple(inputs), tuple(outputs))))


def _text(name: str, *values: Any) -> Tensor:
    return Tensor.of(name, list(values), "BYTES")


def test_bytes_in_strings_out_as_bytes() -> None:
    (out,) = _run(_model(Upper), _text("whatever", "héllo", b"world"))
    assert (out.name, out.datatype, out.shape) == ("upper", "BYTES", (2,))
    assert out.array.tolist() == ["HÉLLO".encode(), b"WORLD"]


def test_a_2d_bytes_tensor_is_flattened() -> None:
    tensor = Tensor("t", "BYTES", np.array([[b"a"], [b"b"]], dtype=object))
    (out,) = _run(_model(Upper), tensor)
    assert out.array.tolist() == [b"A", b"B"]


def test_empty_batch_is_still_bytes() -> None:
    (out,) = _run(_model(Upper), Tensor("t", "BYTES", np.array([], dtype=object)))
    assert out.datatype == "BYTES" and out.shape == (0,)


def test_default_output_name_and_numpy_dtype() -> None:
    x = Tensor.of("x", np.array([[1, 2], [3, 4]], dtype=np.float32))
    (out,) = _run(_model(Scale), x, Tensor.of("factor", [2.0]))
    assert (out.name, out.datatype, out.shape) == ("output-0", "FP32", (2, 2))
    assert out.array.tolist() == [[2, 4], [6, 8]]


def test_inputs_matched_by_name_before_position() -> None:
    # "factor" is claimed by name; the unnamed input fills x, the first free parameter.
    factor = Tensor.of("factor", [3.0])
    (out,) = _run(_model(Scale), factor, Tensor.of("input-0", np.array([1.0])))
    assert out.array.tolist() == [3.0]


def test_inputs_matched_by_position() -> None:
    (out,) = _run(
        _model(Scale), Tensor.of("a", np.array([1.0])), Tensor.of("b", [5.0]), _text("c", "n")
    )
    assert out.array.tolist() == [5.0]


def test_tuple_returns_several_outputs_and_requested_ones_are_chosen() -> None:
    model = _model(Both)
    words, lengths = _run(model, _text("text", "abc", "de"))
    assert words.array.tolist() == [b"cba", b"ed"]
    assert (lengths.name, lengths.datatype, lengths.array.tolist()) == ("lengths", "INT32", [3, 2])
    (only,) = _run(model, _text("text", "abc"), outputs=["lengths"])
    assert only.name == "lengths"
    with pytest.raises(
        InvalidInput, match="output 'nope' is not available; model offers 'words', 'lengths'"
    ):
        _run(model, _text("text", "abc"), outputs=["nope"])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ((), "model expects input 'text'; request has no inputs"),
        (
            (Tensor.of("text", np.array([1.0])),),
            "input 'text': datatype 'FP64' given, model expects 'BYTES'",
        ),
        ((_text("text", b"\xff"),), "input 'text': element 0 is not UTF-8 text"),
        ((_text("text", "a"), _text("more", "b")), "unexpected input 'more'"),
    ],
)
def test_requests_that_do_not_fit(inputs: tuple[Tensor, ...], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _run(_model(Upper), *inputs)


def test_numbers_expected_but_bytes_given() -> None:
    with pytest.raises(
        InvalidInput, match="input 'factor': datatype 'BYTES' given, model expects numbers"
    ):
        _run(_model(Scale), Tensor.of("x", np.array([1.0])), _text("factor", "2"))


def test_unsupported_annotation_fails_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="parameter 'x' has annotation <class 'dict'>"):

        class Bad(_Base):
            @decode_args
            async def predict(self, x: dict) -> list[str]:  # type: ignore[type-arg]
                return []
