"""The V2 protobuf <-> numpy codec."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from gateway._proto import grpc_predict_v2_pb2 as pb
from gateway.core.errors import InvalidInput
from gateway.pod import tensors
from gateway.pod.model import Tensor

SAMPLES = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [7, -8, 9]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [7, -8, 9]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [7, -8, 9]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [7, -8, 9]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504], [1, 2, 3]], dtype=np.float16),
    "FP32": np.array([[0.5, -1.25, 3.4e38], [1, 2, 3]], dtype=np.float32),
    "FP64": np.array([[0.5, -1.25, 1e300], [1, 2, 3]], dtype=np.float64),
    "BYTES": np.array([[b"a", b"", b"\x00\xff"], [b"xyz", b"8", b"long" * 10]], dtype=object),
}
TYPED = [name for name in SAMPLES if name != "FP16"]


def _round_trip(datatype: str, raw: bool) -> Tensor:
    request = tensors.make_request("m", [Tensor("t", datatype, SAMPLES[datatype])], raw=raw)
    wire = pb.ModelInferRequest.FromString(request.SerializeToString())
    (tensor,) = tensors.decode_request(wire).inputs
    return tensor


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_round_trip(datatype: str) -> None:
    tensor = _round_trip(datatype, raw=False)
    assert tensor.name == "t" and tensor.datatype == datatype
    assert tensor.array.shape == (2, 3)
    assert tensor.array.dtype == SAMPLES[datatype].dtype
    assert tensor.array.tolist() == SAMPLES[datatype].tolist()


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_raw_round_trip(datatype: str) -> None:
    tensor = _round_trip(datatype, raw=True)
    assert tensor.datatype == datatype
    assert tensor.array.shape == (2, 3)
    assert tensor.array.dtype == SAMPLES[datatype].dtype
    assert tensor.array.tolist() == SAMPLES[datatype].tolist()


def test_typed_request_uses_the_datatype_field() -> None:
    request = tensors.make_request("m", [Tensor("t", "INT8", SAMPLES["INT8"])])
    assert list(request.inputs[0].contents.int_contents) == [-128, 0, 127, 7, -8, 9]
    assert not request.raw_input_contents
    request = tensors.make_request("m", [Tensor("t", "UINT64", SAMPLES["UINT64"])])
    assert request.inputs[0].contents.uint64_contents[2] == 2**64 - 1


def test_raw_is_little_endian_row_major() -> None:
    array = np.array([[1, 2], [3, 4]], dtype=np.int32)
    request = tensors.make_request("m", [Tensor("t", "INT32", array)], raw=True)
    assert request.raw_input_contents[0] == struct.pack("<4i", 1, 2, 3, 4)
    assert list(request.inputs[0].shape) == [2, 2]


def test_raw_bytes_are_length_prefixed_as_triton_sends_them() -> None:
    raw = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0) + struct.pack("<I", 2) + b"\x00\x01"
    request = pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="s", datatype="BYTES", shape=[3])],
        raw_input_contents=[raw],
    )
    (tensor,) = tensors.decode_request(request).inputs
    assert tensor.array.tolist() == [b"abc", b"", b"\x00\x01"]
    assert tensors.make_request("m", [tensor], raw=True).raw_input_contents[0] == raw


def _fp32_input(shape: list[int], **contents: list[float]) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="predict",
                datatype="FP32",
                shape=shape,
                contents=pb.InferTensorContents(**contents),
            )
        ]
    )


def test_typed_element_count_must_match_shape() -> None:
    request = _fp32_input([1, 64], fp32_contents=[0.0] * 63)
    with pytest.raises(InvalidInput) as err:
        tensors.decode_request(request)
    assert err.value.message == "input 'predict': shape [1, 64] needs 64 elements, got 63"


def test_raw_element_count_must_match_shape() -> None:
    request = _fp32_input([1, 64])
    request.raw_input_contents.append(b"\0" * 4 * 63)
    with pytest.raises(InvalidInput, match=r"shape \[1, 64\] needs 64 elements, got 63"):
        tensors.decode_request(request)


def test_raw_length_must_be_whole_elements() -> None:
    request = _fp32_input([1, 2])
    request.raw_input_contents.append(b"\0" * 7)
    with pytest.raises(InvalidInput, match="7 bytes of raw data are not a whole number of FP32"):
        tensors.decode_request(request)


def test_raw_bytes_element_count_and_truncation() -> None:
    def request(raw: bytes, count: int) -> pb.ModelInferRequest:
        tensor = pb.ModelInferRequest.InferInputTensor(name="s", datatype="BYTES", shape=[count])
        return pb.ModelInferRequest(inputs=[tensor], raw_input_contents=[raw])

    with pytest.raises(InvalidInput, match=r"needs 2 elements, got 1"):
        tensors.decode_request(request(struct.pack("<I", 1) + b"a", 2))
    with pytest.raises(InvalidInput, match="runs past the end"):
        tensors.decode_request(request(struct.pack("<I", 5) + b"ab", 1))
    with pytest.raises(InvalidInput, match="inside a length prefix"):
        tensors.decode_request(request(b"\x01\x00", 1))


def test_data_in_the_wrong_field_is_named() -> None:
    request = _fp32_input([2], fp64_contents=[1.0, 2.0])
    with pytest.raises(InvalidInput) as err:
        tensors.decode_request(request)
    assert "FP32 data belongs in contents.fp32_contents, found contents.fp64_contents" in str(
        err.value
    )


def test_fp16_needs_raw_contents() -> None:
    request = _fp32_input([1], fp32_contents=[1.0])
    request.inputs[0].datatype = "FP16"
    with pytest.raises(InvalidInput, match="FP16 data must be sent as raw contents"):
        tensors.decode_request(request)


def test_unknown_datatype_and_negative_shape() -> None:
    request = _fp32_input([1], fp32_contents=[1.0])
    request.inputs[0].datatype = "FLOAT"
    with pytest.raises(InvalidInput, match="unknown datatype 'FLOAT'; expected one of BOOL"):
        tensors.decode_request(request)
    with pytest.raises(InvalidInput, match=r"shape \[-1, 64\] has a negative dimension"):
        tensors.decode_request(_fp32_input([-1, 64], fp32_contents=[0.0] * 64))
    with pytest.raises(InvalidInput, match="rank 65 is over the 64 dimensions allowed"):
        tensors.decode_request(_fp32_input([1] * 65, fp32_contents=[0.0]))


def test_narrow_integers_are_range_checked() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="b",
        datatype="UINT8",
        shape=[2],
        contents=pb.InferTensorContents(uint_contents=[1, 256]),
    )
    with pytest.raises(InvalidInput, match=r"input 'b': values outside the UINT8 range \[0, 255\]"):
        tensors.decode_request(pb.ModelInferRequest(inputs=[tensor]))


def test_raw_contents_must_cover_every_input() -> None:
    request = tensors.make_request(
        "m",
        [Tensor.of("a", np.zeros(2, np.float32)), Tensor.of("b", np.zeros(2, np.float32))],
        raw=True,
    )
    del request.raw_input_contents[1]
    with pytest.raises(InvalidInput, match="raw_input_contents has 1 entries for 2 inputs"):
        tensors.decode_request(request)


def test_contents_and_raw_together_are_refused() -> None:
    request = _fp32_input([1], fp32_contents=[1.0])
    request.raw_input_contents.append(struct.pack("<f", 1.0))
    with pytest.raises(InvalidInput, match="has both contents and raw contents"):
        tensors.decode_request(request)


def test_scalar_and_empty_tensors() -> None:
    request = tensors.make_request(
        "m", [Tensor.of("s", np.float64(2.5)), Tensor.of("e", np.zeros((0, 3), np.int64))]
    )
    scalar, empty = tensors.decode_request(request).inputs
    assert scalar.array.shape == () and scalar.array.item() == 2.5
    assert empty.array.shape == (0, 3) and empty.array.dtype == np.int64


def test_requested_outputs_and_parameters_are_decoded() -> None:
    request = tensors.make_request("m", [], outputs=["predict_proba", "predict"])
    request.parameters["flag"].bool_param = True
    request.parameters["n"].int64_param = 3
    request.parameters["s"].string_param = "x"
    decoded = tensors.decode_request(request)
    assert decoded.outputs == ("predict_proba", "predict")
    assert dict(decoded.parameters) == {"flag": True, "n": 3, "s": "x"}
    assert tensors.decode_request(tensors.make_request("m", [])).outputs == ()


def test_response_follows_the_request_style() -> None:
    outputs = [Tensor("predict", "INT64", np.array([[8], [3]]))]
    x = Tensor.of("x", np.zeros((2, 1), np.float32))
    typed = tensors.make_request("m", [x], request_id="r1")
    response = tensors.encode_response("concrete__isvc-1", typed, outputs)
    assert response.model_name == "concrete__isvc-1" and response.id == "r1"
    assert list(response.outputs[0].contents.int64_contents) == [8, 3]
    assert list(response.outputs[0].shape) == [2, 1] and response.outputs[0].datatype == "INT64"
    assert not response.raw_output_contents

    raw = tensors.make_request("m", [Tensor.of("x", np.zeros((2, 1), np.float32))], raw=True)
    response = tensors.encode_response("c", raw, outputs)
    assert response.raw_output_contents[0] == struct.pack("<2q", 8, 3)
    assert not response.outputs[0].HasField("contents")
    assert tensors.decode_response(response)[0].array.tolist() == [[8], [3]]


def test_an_fp16_output_makes_the_response_raw() -> None:
    typed = tensors.make_request("m", [])
    outputs = [
        Tensor("h", "FP16", np.array([1.5], np.float16)),
        Tensor("i", "INT32", np.array([4], np.int32)),
    ]
    response = tensors.encode_response("c", typed, outputs)
    assert len(response.raw_output_contents) == 2
    decoded = tensors.decode_response(response)
    assert decoded[0].array.tolist() == [1.5] and decoded[1].array.tolist() == [4]


def test_outputs_are_cast_to_their_datatype_and_strings_become_bytes() -> None:
    outputs = [
        Tensor("p", "FP64", np.array([0.25], np.float32)),
        Tensor("s", "BYTES", np.array(["seven", b"8"], dtype=object)),
    ]
    response = tensors.encode_response("c", tensors.make_request("m", []), outputs)
    assert list(response.outputs[0].contents.fp64_contents) == [0.25]
    assert list(response.outputs[1].contents.bytes_contents) == [b"seven", b"8"]


def test_an_output_with_an_unknown_datatype_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no typed contents for 'FLOAT'"):
        outputs = [Tensor("o", "FLOAT", np.ones(1))]
        tensors.encode_response("c", tensors.make_request("m", []), outputs)


def test_metadata_encoding() -> None:
    from gateway.pod.model import ModelMetadata, TensorSpec

    meta = ModelMetadata("sklearn", (TensorSpec("input-0", "FP32", (-1, 64)),), ())
    response = tensors.encode_metadata("m__isvc-1", meta)
    assert response.name == "m__isvc-1" and response.platform == "sklearn"
    assert list(response.inputs[0].shape) == [-1, 64] and response.inputs[0].datatype == "FP32"
