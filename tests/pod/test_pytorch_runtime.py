"""The PyTorch (TorchScript) runtime, without any transport (and once through a pod)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from gateway.core.errors import (
    InvalidInput,
    LoadFailed,
    ModelFormatError,
    ModelNotInStorage,
    PredictFailed,
)
from gateway.pod import tensors
from gateway.pod.model import InferenceRequest, ModelConfig, Tensor, TensorSpec
from gateway.pod.runtimes.pytorch import TorchScriptModel

from . import graphs
from .harness import Pod, rpc_error

# torch 2.13 deprecates TorchScript in favour of torch.export; the issue asks for TorchScript.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)

ROWS = np.array([[1, 2, 3, 4], [-1, 0.5, 2, -3]], np.float32)
SIDECAR = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
}


async def _loaded(path: Path) -> TorchScriptModel:
    model = TorchScriptModel(ModelConfig("m__isvc-1", "pytorch", path))
    await model.load()
    return model


def _request(*inputs: Tensor, outputs: tuple[str, ...] = ()) -> InferenceRequest:
    return InferenceRequest(tuple(inputs), outputs)


def _direct(path: Path, *arrays: np.ndarray) -> Any:
    with torch.inference_mode():
        return torch.jit.load(str(path))(*(torch.from_numpy(a) for a in arrays))


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return graphs.save_script(graphs.Dense(), tmp_path_factory.mktemp("dense") / "dense.pt")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return graphs.save_script(graphs.Pair(), tmp_path_factory.mktemp("pair") / "pair.pth")


@pytest.fixture
def declared(dense: Path, tmp_path: Path) -> Path:
    """The dense module with a sidecar naming its tensors."""
    path = tmp_path / "model.pt"
    path.write_bytes(dense.read_bytes())
    (tmp_path / "model.json").write_text(json.dumps(SIDECAR))
    return path


async def test_dense_matches_torch(dense: Path) -> None:
    model = await _loaded(dense)
    (out,) = await model.predict(_request(Tensor.of("anything", ROWS)))
    assert (out.name, out.datatype, out.shape) == ("output-0", "FP32", (2, 3))
    np.testing.assert_allclose(out.array, _direct(dense, ROWS).numpy(), rtol=1e-6)
    assert (out.array >= 0).all()


async def test_default_metadata_and_size(dense: Path, pair: Path) -> None:
    model = await _loaded(dense)
    meta = model.metadata()
    assert meta.platform == "pytorch"
    assert meta.inputs == (TensorSpec("input-0", "FP32", (-1, -1)),)
    assert meta.outputs == (TensorSpec("output-0", "FP32", (-1, -1)),)
    assert model.size_bytes() == (4 * 3 + 3) * 4  # the Linear's weight and bias
    assert (await _loaded(pair)).size_bytes() == pair.stat().st_size  # no parameters


async def test_a_tuple_becomes_outputs_in_order_with_their_types(pair: Path) -> None:
    model = await _loaded(pair)
    y = np.full_like(ROWS, 0.5)
    total, argmax = await model.predict(_request(Tensor.of("x", ROWS), Tensor.of("y", y)))
    assert [(t.name, t.datatype) for t in (total, argmax)] == [
        ("output-0", "FP32"),
        ("output-1", "INT64"),
    ]
    want_total, want_argmax = _direct(pair, ROWS, y)
    np.testing.assert_allclose(total.array, want_total.numpy())
    assert argmax.array.tolist() == want_argmax.tolist() == [3, 2]


async def test_requested_outputs(pair: Path) -> None:
    model = await _loaded(pair)
    inputs = (Tensor.of("x", ROWS), Tensor.of("y", ROWS))
    (argmax,) = await model.predict(_request(*inputs, outputs=("output-1",)))
    assert argmax.name == "output-1" and argmax.array.tolist() == [3, 2]
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(*inputs, outputs=("output-2",)))
    assert err.value.message == (
        "output 'output-2' is not available; model offers 'output-0', 'output-1'"
    )


async def test_integer_inputs_reach_the_module(tmp_path: Path) -> None:
    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    model = await _loaded(graphs.save_script(Double(), tmp_path / "double.torchscript"))
    (out,) = await model.predict(_request(Tensor.of("x", [[1, -2, 3]], "INT32")))
    assert out.datatype == "INT32" and out.array.tolist() == [[2, -4, 6]]


async def test_bytes_inputs_are_refused(dense: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        await (await _loaded(dense)).predict(_request(Tensor.of("x", ["a"])))
    assert err.value.message == "input 'x': BYTES given, a TorchScript model takes numbers"


async def test_a_module_error_is_predict_failed_without_the_torchscript_traceback(
    dense: Path,
) -> None:
    model = await _loaded(dense)
    with pytest.raises(PredictFailed) as err:
        await model.predict(_request(Tensor.of("x", np.zeros((2, 5), np.float32))))
    assert err.value.message == (
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x5 and 4x3)"
    )


async def test_a_raise_in_scripted_code_keeps_its_type(tmp_path: Path) -> None:
    path = graphs.save_script(graphs.Picky(), tmp_path / "picky.pt")
    model = await _loaded(path)
    with pytest.raises(PredictFailed) as err:
        await model.predict(_request(Tensor.of("x", [-1.0, -2.0], "FP32")))
    assert err.value.message == "ValueError: negative input"
    (out,) = await model.predict(_request(Tensor.of("x", [1.0, 2.0], "FP32")))
    assert out.array.tolist() == [1.0, 2.0]


# -- the sidecar ---------------------------------------------------------------------


async def test_a_sidecar_names_and_checks_the_tensors(declared: Path, dense: Path) -> None:
    model = await _loaded(declared)
    meta = model.metadata()
    assert meta.inputs == (TensorSpec("features", "FP32", (-1, 4)),)
    assert meta.outputs == (TensorSpec("scores", "FP32", (-1, 3)),)
    (out,) = await model.predict(_request(Tensor.of("features", ROWS)))
    assert out.name == "scores"
    np.testing.assert_allclose(out.array, _direct(dense, ROWS).numpy(), rtol=1e-6)
    # a single declared input takes one input of any name
    (out,) = await model.predict(_request(Tensor.of("input-0", ROWS), outputs=("scores",)))
    assert out.name == "scores"


async def test_sidecar_checks_datatype_shape_and_outputs(declared: Path) -> None:
    model = await _loaded(declared)
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(Tensor.of("features", ROWS, "FP64")))
    assert err.value.message == "input 'features': datatype 'FP64' given, model expects 'FP32'"
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(Tensor.of("features", np.zeros((2, 5), np.float32))))
    assert err.value.message == "input 'features': shape [2, 5] given, model expects [-1, 4]"
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(Tensor.of("features", ROWS), outputs=("output-0",)))
    assert err.value.message == "output 'output-0' is not available; model offers 'scores'"


async def test_sidecar_inputs_by_name_in_declared_order(pair: Path, tmp_path: Path) -> None:
    path = tmp_path / "pair.pt"
    path.write_bytes(pair.read_bytes())
    (tmp_path / "pair.json").write_text(
        json.dumps(
            {
                "inputs": [
                    {"name": "a", "datatype": "FP32", "shape": [-1, 4]},
                    {"name": "b", "datatype": "FP32", "shape": [-1, 4]},
                ],
                "outputs": [
                    {"name": "sum", "datatype": "FP32", "shape": [-1, 4]},
                    {"name": "argmax", "datatype": "INT64", "shape": [-1]},
                ],
            }
        )
    )
    model = await _loaded(path)
    b = np.zeros_like(ROWS)
    b[:, 0] = 10  # argmax follows the first argument: given second, 'a' still goes first
    total, argmax = await model.predict(_request(Tensor.of("b", b), Tensor.of("a", ROWS)))
    assert (total.name, argmax.name) == ("sum", "argmax")
    np.testing.assert_allclose(total.array, ROWS + b)
    assert argmax.array.tolist() == [3, 2]
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(Tensor.of("a", ROWS)))
    assert err.value.message == "model expects inputs 'a', 'b'; missing 'b'"
    with pytest.raises(InvalidInput) as err:
        await model.predict(_request(Tensor.of("a", ROWS), Tensor.of("c", ROWS)))
    assert err.value.message == "input 'c' is not an input of the model; model expects 'a', 'b'"


async def test_sidecar_outputs_must_match_what_the_module_returns(
    dense: Path, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(dense.read_bytes())
    sidecar = tmp_path / "model.json"
    sidecar.write_text(
        json.dumps(
            {
                "outputs": [
                    {"name": "a", "datatype": "FP32", "shape": [-1]},
                    {"name": "b", "datatype": "FP32", "shape": [-1]},
                ]
            }
        )
    )
    with pytest.raises(ValueError, match="returned 1 tensors; the sidecar declares 2 outputs"):
        await (await _loaded(path)).predict(_request(Tensor.of("x", ROWS)))
    sidecar.write_text(json.dumps({"outputs": [{"name": "a", "datatype": "FP64", "shape": [-1]}]}))
    with pytest.raises(ValueError, match="output 'a' is FP32; the sidecar declares FP64"):
        await (await _loaded(path)).predict(_request(Tensor.of("x", ROWS)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"inputs": [], "extra": 1}', "unknown keys 'extra'; expected 'inputs', 'outputs'"),
        ('{"inputs": {}}', "'inputs' must be a list"),
        (
            '{"inputs": [{"name": "x", "datatype": "FP32"}]}',
            "inputs[0] must be an object with exactly 'name', 'datatype' and 'shape'",
        ),
        (
            '{"outputs": [{"name": "x", "datatype": "BYTES", "shape": [1]}]}',
            "outputs[0] has datatype 'BYTES'; expected a numeric V2 datatype",
        ),
        (
            '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}',
            "inputs[0] needs a 'shape' list of sizes",
        ),
        (
            '{"inputs": [{"name": "", "datatype": "FP32", "shape": []}]}',
            "inputs[0] needs a non-empty string 'name'",
        ),
        (
            '{"inputs": [{"name": "x", "datatype": "FP32", "shape": []},'
            ' {"name": "x", "datatype": "FP32", "shape": []}]}',
            "'inputs' repeats a name",
        ),
    ],
)
async def test_a_bad_sidecar(declared: Path, text: str, message: str) -> None:
    sidecar = declared.with_suffix(".json")
    sidecar.write_text(text)
    with pytest.raises(ModelFormatError) as err:
        await _loaded(declared)
    assert err.value.message.startswith(f"sidecar '{sidecar}': ")
    assert message in err.value.message


# -- bad files -----------------------------------------------------------------------


async def test_a_folder_with_one_module_and_its_sidecar(declared: Path) -> None:
    (declared.parent / "README.txt").write_text("not a model")
    model = await _loaded(declared.parent)
    assert model.metadata().inputs[0].name == "features"


async def test_a_folder_needs_exactly_one_module(dense: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"one .pt/.pth/.torchscript file; found none"):
        await _loaded(tmp_path)
    (tmp_path / "a.pt").write_bytes(dense.read_bytes())
    (tmp_path / "b.pth").write_bytes(dense.read_bytes())
    with pytest.raises(ModelFormatError, match=r"found a\.pt, b\.pth"):
        await _loaded(tmp_path)


async def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed) as err:
        await _loaded(tmp_path / "absent.pt")
    assert type(err.value) is ModelNotInStorage  # a LoadFailed
    assert err.value.message == f"model file not found: {tmp_path / 'absent.pt'}"


async def test_an_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelFormatError, match=r"is not a .pt/.pth/.torchscript file"):
        await _loaded(tmp_path / "model.onnx")


async def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x00this is not a zip archive\xff" * 10)
    with pytest.raises(ModelFormatError) as err:
        await _loaded(path)
    assert err.value.message.startswith(
        f"cannot read '{path}' as a TorchScript model: RuntimeError: PytorchStreamReader failed"
    )
    assert "\n" not in err.value.message


@pytest.mark.parametrize("what", ["module", "state_dict"])
async def test_torch_save_is_not_torchscript(tmp_path: Path, what: str) -> None:
    path = tmp_path / "model.pt"
    module = graphs.Dense()
    torch.save(module if what == "module" else module.state_dict(), path)
    with pytest.raises(ModelFormatError) as err:
        await _loaded(path)
    assert err.value.message.startswith(
        f"'{path}' was saved with torch.save, not torch.jit.save: only TorchScript can be served"
    )


async def test_unload_drops_the_module(dense: Path) -> None:
    model = await _loaded(dense)
    await model.unload()
    assert model._module is None


def test_torch_is_imported_by_the_load_not_the_registry() -> None:
    code = (
        "import sys; import gateway.pod.runtimes.pytorch; "
        "assert 'torch' not in sys.modules, 'imported with the module'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_through_a_pod_a_predict_error_is_reported_and_the_pod_goes_on(
    pod: Pod, dense: Path
) -> None:
    await pod.load("dense__isvc-1", dense, "pytorch")
    bad = tensors.make_request("dense__isvc-1", [Tensor.of("x", np.zeros((1, 5), np.float32))])
    err = await rpc_error(pod.infer.ModelInfer(bad))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x5 and 4x3)"

    good = tensors.make_request("dense__isvc-1", [Tensor.of("x", ROWS)], raw=True)
    (out,) = tensors.decode_response(await pod.infer.ModelInfer(good))
    np.testing.assert_allclose(out.array, _direct(dense, ROWS).numpy(), rtol=1e-6)


async def test_the_schema_path_the_gateway_passes_declares_the_tensors(
    dense: Path, tmp_path: Path
) -> None:
    """ModelMesh's storage.schemaPath: the file the load's key names, in the sidecar's form,
    instead of a sidecar."""
    schema = tmp_path / "schemas" / "dense.json"
    schema.parent.mkdir()
    schema.write_text(
        '{"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],'
        ' "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]}'
    )
    key = json.dumps({"schema_path": str(schema)})
    model = TorchScriptModel(ModelConfig("m__isvc-1", "pytorch", dense, key))
    await model.load()
    assert [s.name for s in model.metadata().inputs] == ["features"]
    assert [s.name for s in model.metadata().outputs] == ["scores"]
    missing = json.dumps({"schema_path": str(tmp_path / "none.json")})
    with pytest.raises(ModelFormatError, match="schemaPath file not found"):
        await TorchScriptModel(ModelConfig("m__isvc-2", "pytorch", dense, missing)).load()
