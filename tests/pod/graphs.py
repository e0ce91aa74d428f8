"""Small ONNX graphs and TorchScript modules built in the tests (no downloads), shared
by the runtime tests and the e2e tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9  # what onnxruntime 1.17+ reads

# The weights of the dense graph: y = relu(x @ W + B), x: FP32 [batch, 4].
W = np.array(
    [[0.5, -1.0, 0.25], [1.5, 0.5, -0.75], [-0.5, 2.0, 1.0], [1.0, -0.25, 0.5]], np.float32
)
B = np.array([0.1, -0.2, 0.3], np.float32)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def dense_onnx(path: Path) -> Path:
    """MatMul + Add + Relu: input 'x' FP32 ['batch', 4] -> output 'y' FP32 ['batch', 3]."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
        ],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    return _save(graph, path)


def multi_onnx(path: Path) -> Path:
    """Two inputs, three outputs of three datatypes:

    ids INT64 ['n'], scale FP32 ['k'] -> doubled INT64 ['n'] (ids + ids),
    scaled FP32 ['n'] (float(ids) * scale), positive BOOL ['n'] (ids > 0).
    A ``scale`` of a length other than 1 or n fails inside onnxruntime (broadcasting).
    """
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["ids", "ids"], ["doubled"]),
            helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["ids_f", "scale"], ["scaled"]),
            helper.make_node("Greater", ["ids", "zero"], ["positive"]),
        ],
        "multi",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["k"]),
        ],
        [
            helper.make_tensor_value_info("doubled", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, ["n"]),
        ],
        initializer=[numpy_helper.from_array(np.array(0, np.int64), "zero")],
    )
    return _save(graph, path)


def strings_onnx(path: Path) -> Path:
    """Identity on strings: 'text' STRING [-1] -> 'same' STRING [-1]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, [None])],
    )
    return _save(graph, path)


def sequence_input_onnx(path: Path) -> Path:
    """A graph whose input is a sequence of tensors (not servable as a V2 tensor)."""
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["items"], ["count"])],
        "sequence",
        [helper.make_tensor_sequence_value_info("items", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("count", TensorProto.INT64, [])],
    )
    return _save(graph, path)


class Dense(torch.nn.Module):
    """Linear(4, 3) + ReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class Pair(torch.nn.Module):
    """Two inputs, a tuple of two outputs: (x + y) FP32 and argmax(x, dim=1) INT64."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + y, torch.argmax(x, dim=1)


class Picky(torch.nn.Module):
    """Identity that raises ValueError("negative input") when the sum is negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() < 0):
            raise ValueError("negative input")
        return x


class Cifar(torch.nn.Module):
    """The shape of the FVT's CIFAR model: FP32 [batch, 3, 32, 32] -> FP32 [batch, 10], with a
    ``view`` that fails for any other image size (as the FVT's does, "shape '[-1, 98]' is
    invalid for input of size ...")."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 5)  # 32 -> 28
        self.pool = torch.nn.AvgPool2d(4)  # 28 -> 7
        self.linear = torch.nn.Linear(98, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.conv(x)).view(-1, 98))


CIFAR_CONFIG = """name: "cifar"
platform: "pytorch_libtorch"
max_batch_size: 16
input [ { name: "INPUT__0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 32, 32 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] }
"""


def triton_layout(folder: Path, config: str, versions: dict[int, Path]) -> Path:
    """Triton's repository layout: ``folder/config.pbtxt`` and each version's model file
    (copied as ``folder/<version>/<its name>``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config)
    for version, file in versions.items():
        (folder / str(version)).mkdir(exist_ok=True)
        (folder / str(version) / file.name).write_bytes(file.read_bytes())
    return folder


def save_script(module: torch.nn.Module, path: Path) -> Path:
    """``torch.jit.script`` the module and ``torch.jit.save`` it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(path))
    return path
