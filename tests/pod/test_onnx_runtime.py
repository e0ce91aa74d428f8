"""The ONNX runtime, without any transport (and once through an in-process pod)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime
import pytest

from gateway.core.errors import InvalidInput, LoadFailed, ModelFormatError, ModelNotInStorage
from gateway.pod import tensors
from gateway.pod.model import InferenceRequest, ModelConfig, Tensor, TensorSpec
from gateway.pod.runtimes.onnx import ONNXModel

from . import graphs
from .harness import Pod, rpc_error


async def _loaded(path: Path) -> ONNXModel:
    model = ONNXModel(ModelConfig("m__isvc-1", "onnx", path))
    await model.load()
    return model


def _request(*inputs: Tensor, outputs: tuple[str, ...] = ()) -> InferenceRequest:
    return InferenceRequest(tuple(inputs), outputs)


def _direct(path: Path, feeds: dict[str, Any]) -> list[Any]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return graphs.dense_onnx(tmp_path_factory.mktemp("dense") / "dense.onnx")


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return graphs.multi_onnx(tmp_path_factory.mktemp("multi") / "multi.onnx")


ROWS = np.array([[1, 2, 3, 4], [-1, 0.5, 2, -3], [0, 0, 0, 0]], np.float32)


async def test_dense_matches_onnxruntime_and_numpy(dense: Path) -> None:
    model = await _loaded(dense)
    (out,) = await model.predict(_request(Tensor.of("x", ROWS)))
    assert (out.name, out.datatype, out.shape) == ("y", "FP32", (3, 3))
    np.testing.assert_allclose(out.array, _direct(dense, {"x": ROWS})[0])
    np.testing.assert_allclose(out.array, np.maximum(ROWS @ graphs.W + graphs.B, 0), rtol=1e-6)


async def test_metadata_from_the_graph(dense: Path, multi: Path) -> None:
    meta = (await _loaded(dense)).metadata()
    assert meta.platform == "onnx"
    assert meta.inputs == (TensorSpec("x", "FP32", (-1, 4)),)  # symbolic 'batch' is -1
    assert meta.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    meta = (await _loaded(multi)).metadata()
    assert meta.inputs == (TensorSpec("ids", "INT64", (-1,)), TensorSpec("scale", "FP32", (-1,)))
    assert meta.outputs == (
        TensorSpec("doubled", "INT64", (-1,)),
        TensorSpec("scaled", "FP32", (-1,)),
        TensorSpec("positive", "BOOL", (-1,)),
    )


async def test_size_is_the_file_size(dense: Path) -> None:
    assert (await _loaded(dense)).size_bytes() == dense.stat().st_size


async def test_a_single_input_graph_takes_one_input_of_any_name(dense: Path) -> None:
    (out,) = await (await _loaded(dense)).predict(_request(Tensor.of("input-0", ROWS[:1])))
    np.testing.assert_allclose(out.array, _direct(dense, {"x": ROWS[:1]})[0])


IDS = np.array([3, -2, 0, 7], np.int64)
SCALE = np.array([0.5], np.float32)


async def test_inputs_by_name_and_every_output_with_its_type(multi: Path) -> None:
    model = await _loaded(multi)
    # Given in the other order: fed by name.
    out = await model.predict(_request(Tensor.of("scale", SCALE), Tensor.of("ids", IDS)))
    assert [(t.name, t.datatype) for t in out] == [
        ("doubled", "INT64"),
        ("scaled", "FP32"),
        ("positive", "BOOL"),
    ]
    assert [t.array.dtype for t in out] == [np.int64, np.float32, np.bool_]
    for got, want in zip(out, _direct(multi, {"ids": IDS, "scale": SCALE}), strict=True):
        np.testing.assert_array_equal(got.array, want)
    assert out[0].array.tolist() == [6, -4, 0, 14]
    assert out[2].array.tolist() == [True, False, False, True]


async def test_requested_outputs_in_the_order_asked(multi: Path) -> None:
    model = await _loaded(multi)
    request = _request(
        Tensor.of("ids", IDS), Tensor.of("scale", SCALE), outputs=("positive", "doubled")
    )
    positive, doubled = await model.predict(request)
    assert (positive.name, doubled.name) == ("positive", "doubled")
    assert doubled.array.tolist() == [6, -4, 0, 14]


async def test_an_unknown_output_names_the_available_ones(multi: Path) -> None:
    model = await _loaded(multi)
    request = _request(Tensor.of("ids", IDS), Tensor.of("scale", SCALE), outputs=("tripled",))
    with pytest.raises(InvalidInput) as err:
        await model.predict(request)
    assert err.value.message == (
        "output 'tripled' is not available; model offers 'doubled', 'scaled', 'positive'"
    )


async def test_wrong_datatype(dense: Path, multi: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        await (await _loaded(dense)).predict(_request(Tensor.of("x", ROWS, "FP64")))
    assert err.value.message == "input 'x': datatype 'FP64' given, model expects 'FP32'"
    request = _request(Tensor.of("ids", IDS, "INT32"), Tensor.of("scale", SCALE))
    with pytest.raises(InvalidInput) as err:
        await (await _loaded(multi)).predict(request)
    assert err.value.message == "input 'ids': datatype 'INT32' given, model expects 'INT64'"


@pytest.mark.parametrize(
    ("array", "shape"),
    [(np.zeros((2, 5)), "[2, 5]"), (np.zeros(4), "[4]"), (np.zeros((1, 1, 4)), "[1, 1, 4]")],
)
async def test_wrong_shape(dense: Path, array: np.ndarray, shape: str) -> None:
    with pytest.raises(InvalidInput) as err:
        await (await _loaded(dense)).predict(_request(Tensor.of("x", array, "FP32")))
    assert err.value.message == f"input 'x': shape {shape} given, model expects [-1, 4]"


async def test_input_names_must_match_a_multi_input_graph(multi: Path) -> None:
    model = await _loaded(multi)
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(Tensor.of("ids", IDS)))
    assert err.value.message == "model expects inputs 'ids', 'scale'; missing 'scale'"
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(Tensor.of("ids", IDS), Tensor.of("scales", SCALE)))
    assert err.value.message == (
        "input 'scales' is not an input of the model; model expects 'ids', 'scale'"
    )
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(Tensor.of("ids", IDS), Tensor.of("ids", IDS)))
    assert err.value.message == "input 'ids' is given more than once"


async def test_two_inputs_for_a_single_input_graph(dense: Path) -> None:
    model = await _loaded(dense)
    with pytest.raises(InvalidInput, match="'b' is not an input of the model; model expects 'x'"):
        await model.predict(_request(Tensor.of("x", ROWS), Tensor.of("b", ROWS)))


async def test_strings_travel_as_bytes(tmp_path: Path) -> None:
    model = await _loaded(graphs.strings_onnx(tmp_path / "strings.onnx"))
    assert model.metadata().inputs == (TensorSpec("text", "BYTES", (-1,)),)
    (out,) = await model.predict(_request(Tensor.of("text", ["héllo", "", "x y"])))
    assert out.datatype == "BYTES"
    assert out.array.tolist() == ["héllo".encode(), b"", b"x y"]
    with pytest.raises(InvalidInput, match="BYTES elements must be UTF-8 text"):
        await model.predict(_request(Tensor.of("text", [b"\xff\xfe"])))


async def test_a_runtime_error_propagates_for_the_repository_to_report(multi: Path) -> None:
    # 'scale' of length 2 against 4 ids passes the shape check (both symbolic) but
    # cannot broadcast: onnxruntime raises; the repository turns that into PredictFailed.
    model = await _loaded(multi)
    request = _request(Tensor.of("ids", IDS), Tensor.of("scale", [1.0, 2.0], "FP32"))
    with pytest.raises(Exception, match="broadcast") as err:
        await model.predict(request)
    assert not isinstance(err.value, InvalidInput)


async def test_a_folder_with_one_graph(dense: Path, tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("not a model")
    (tmp_path / "model.onnx").write_bytes(dense.read_bytes())
    model = await _loaded(tmp_path)
    (out,) = await model.predict(_request(Tensor.of("x", ROWS)))
    np.testing.assert_allclose(out.array, _direct(dense, {"x": ROWS})[0])
    assert model.size_bytes() == dense.stat().st_size + len("not a model")


async def test_a_folder_needs_exactly_one_graph(dense: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"must hold exactly one .onnx file; found none"):
        await _loaded(tmp_path)
    (tmp_path / "a.onnx").write_bytes(dense.read_bytes())
    (tmp_path / "b.onnx").write_bytes(dense.read_bytes())
    with pytest.raises(ModelFormatError, match=r"found a\.onnx, b\.onnx"):
        await _loaded(tmp_path)


async def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed) as err:
        await _loaded(tmp_path / "absent.onnx")
    assert type(err.value) is ModelNotInStorage  # a LoadFailed
    assert err.value.message == f"model file not found: {tmp_path / 'absent.onnx'}"


async def test_an_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ModelFormatError, match=r"is not a .onnx file"):
        await _loaded(tmp_path / "model.pt")


async def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00this is not a protobuf\xff" * 10)
    with pytest.raises(ModelFormatError) as err:
        await _loaded(path)
    assert err.value.message.startswith(f"cannot read '{path}' as an ONNX model: ")


async def test_an_invalid_graph(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("NoSuchOp", ["x"], ["y"])],
        "bad",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "bad.onnx"
    opset = [onnx.helper.make_opsetid("", graphs.OPSET)]
    onnx.save(
        onnx.helper.make_model(graph, opset_imports=opset, ir_version=graphs.IR_VERSION), str(path)
    )
    with pytest.raises(ModelFormatError, match=r"as an ONNX model: .*NoSuchOp"):
        await _loaded(path)


async def test_a_non_tensor_input_is_refused(tmp_path: Path) -> None:
    path = graphs.sequence_input_onnx(tmp_path / "seq.onnx")
    with pytest.raises(ModelFormatError) as err:
        await _loaded(path)
    assert err.value.message == (
        "graph input 'items' is a seq(tensor(float)); only tensors of V2 datatypes can be served"
    )


async def test_unload_drops_the_session(dense: Path) -> None:
    model = await _loaded(dense)
    await model.unload()
    assert model._session is None


def test_onnxruntime_is_imported_by_the_load_not_the_registry() -> None:
    code = (
        "import sys; import gateway.pod.runtimes.onnx; "
        "assert 'onnxruntime' not in sys.modules, 'imported with the module'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_through_a_pod_a_predict_error_is_reported_and_the_pod_goes_on(
    pod: Pod, multi: Path
) -> None:
    await pod.load("multi__isvc-1", multi, "onnx")
    bad = tensors.make_request(
        "multi__isvc-1", [Tensor.of("ids", IDS), Tensor.of("scale", [1.0, 2.0], "FP32")]
    )
    err = await rpc_error(pod.infer.ModelInfer(bad))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details().startswith("Fail: [ONNXRuntimeError]") and "broadcast" in err.details()

    good = tensors.make_request(
        "multi__isvc-1", [Tensor.of("ids", IDS), Tensor.of("scale", SCALE)], outputs=["scaled"]
    )
    (scaled,) = tensors.decode_response(await pod.infer.ModelInfer(good))
    np.testing.assert_allclose(scaled.array, IDS * 0.5)

    invalid = tensors.make_request(
        "multi__isvc-1", [Tensor.of("ids", IDS, "FP32"), Tensor.of("scale", SCALE)]
    )
    err = await rpc_error(pod.infer.ModelInfer(invalid))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "input 'ids': datatype 'FP32' given, model expects 'INT64'"
