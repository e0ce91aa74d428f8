"""Triton's model repository layout (gateway.pod.runtimes.triton_layout): config.pbtxt read,
the version folder chosen, and the ONNX and PyTorch runtimes serving models kept that way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gateway.core.errors import InvalidInput, ModelFormatError
from gateway.pod.model import InferenceRequest, ModelConfig, Tensor, TensorSpec
from gateway.pod.runtimes import triton_layout
from gateway.pod.runtimes.onnx import ONNXModel
from gateway.pod.runtimes.pytorch import TorchScriptModel

from . import graphs

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)

IMAGES = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def cifar_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return graphs.save_script(graphs.Cifar(), tmp_path_factory.mktemp("cifar") / "model.pt")


def test_the_text_format_is_read_whole_with_the_fields_it_does_not_use() -> None:
    config = triton_layout.parse(
        graphs.CIFAR_CONFIG + 'parameters: { key: "k" value: { string_value: "v" } }\n'
    )
    assert config["name"] == ["cifar"] and config["max_batch_size"] == [16]
    (tensor,) = config["input"]
    assert tensor == {
        "name": ["INPUT__0"],
        "data_type": ["TYPE_FP32"],
        "format": ["FORMAT_NCHW"],
        "dims": [3, 32, 32],
    }
    assert config["instance_group"] == [{"count": [1], "kind": ["KIND_CPU"]}]
    assert config["parameters"] == [{"key": ["k"], "value": [{"string_value": ["v"]}]}]


@pytest.mark.parametrize("text", ["input [ { name: 'x' ", "input { name: 'x' ]", "name: ", "} x"])
def test_a_malformed_config_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        triton_layout.parse(text)


def test_the_highest_version_is_served_or_the_highest_the_policy_names(
    cifar_pt: Path, tmp_path: Path
) -> None:
    folder = graphs.triton_layout(
        tmp_path / "cifar", graphs.CIFAR_CONFIG, {1: cifar_pt, 3: cifar_pt}
    )
    (folder / "notes").mkdir()  # not a version
    model = triton_layout.resolve(folder, "model.pt")
    assert model is not None and (model.version, model.file) == (3, folder / "3" / "model.pt")
    assert model.inputs == (TensorSpec("INPUT__0", "FP32", (-1, 3, 32, 32)),)
    assert model.outputs == (TensorSpec("OUTPUT__0", "FP32", (-1, 10)),)
    (folder / "config.pbtxt").write_text(
        graphs.CIFAR_CONFIG + "version_policy: { specific: { versions: [ 1, 2 ] } }\n"
    )
    resolved = triton_layout.resolve(folder, "model.pt")
    assert resolved is not None and resolved.version == 1
    (folder / "config.pbtxt").write_text(
        graphs.CIFAR_CONFIG.replace("max_batch_size: 16", "max_batch_size: 0")
    )
    unbatched = triton_layout.resolve(folder, "model.pt")
    assert unbatched is not None and unbatched.inputs[0].shape == (3, 32, 32)
    assert triton_layout.resolve(cifar_pt.parent, "model.pt") is None  # no config.pbtxt


@pytest.mark.parametrize(
    ("config", "versions", "message"),
    [
        (graphs.CIFAR_CONFIG, {}, "no version folder"),
        (
            graphs.CIFAR_CONFIG + 'default_model_filename: "other.pt"\n',
            {1: None},
            "no model file 'other.pt'",
        ),
        (
            graphs.CIFAR_CONFIG + "version_policy { specific { versions: [7] } }\n",
            {1: None},
            "names versions [7]",
        ),
        (
            graphs.CIFAR_CONFIG.replace("TYPE_FP32", "TYPE_BF16", 1),
            {1: None},
            "data_type TYPE_BF16",
        ),
        ("input [ { name: ", {1: None}, "cannot read"),
    ],
)
def test_a_broken_layout_is_a_format_error_naming_it(
    cifar_pt: Path, tmp_path: Path, config: str, versions: dict[int, None], message: str
) -> None:
    folder = graphs.triton_layout(tmp_path / "m", config, {v: cifar_pt for v in versions})
    with pytest.raises(ModelFormatError) as caught:
        triton_layout.resolve(folder, "model.pt")
    assert message in caught.value.message


async def test_pytorch_in_the_layout_declares_checks_and_names_its_tensors(
    cifar_pt: Path, tmp_path: Path
) -> None:
    folder = graphs.triton_layout(tmp_path / "cifar", graphs.CIFAR_CONFIG, {1: cifar_pt})
    model = TorchScriptModel(ModelConfig("cifar__isvc-1", "pytorch", folder))
    await model.load()
    metadata = model.metadata()
    assert [(s.name, s.datatype, s.shape) for s in metadata.inputs] == [
        ("INPUT__0", "FP32", (-1, 3, 32, 32))
    ]
    (out,) = await model.predict(InferenceRequest((Tensor.of("INPUT__0", IMAGES),)))
    assert (out.name, out.shape) == ("OUTPUT__0", (2, 10))
    with torch.inference_mode():
        expected = torch.jit.load(str(cifar_pt))(torch.from_numpy(IMAGES)).numpy()
    np.testing.assert_allclose(out.array, expected, rtol=1e-6)
    # the FVT's wrong shape: refused from the declared input, before TorchScript sees it
    wrong = np.zeros((1, 3, 16, 64), np.float32)
    with pytest.raises(
        InvalidInput, match=r"shape \[1, 3, 16, 64\] given, model expects \[-1, 3, 32, 32\]"
    ):
        await model.predict(InferenceRequest((Tensor.of("INPUT__0", wrong),)))


async def test_onnx_in_the_layout_serves_the_version_folder(tmp_path: Path) -> None:
    graph = graphs.dense_onnx(tmp_path / "src" / "model.onnx")
    config = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
    folder = graphs.triton_layout(tmp_path / "dense", config, {2: graph})
    model = ONNXModel(ModelConfig("dense__isvc-1", "onnx", folder))
    await model.load()
    assert [(s.name, s.shape) for s in model.metadata().inputs] == [("x", (-1, 4))]
    rows = np.ones((2, 4), np.float32)
    (out,) = await model.predict(InferenceRequest((Tensor.of("x", rows),)))
    assert out.name == "y" and out.shape == (2, 3)
