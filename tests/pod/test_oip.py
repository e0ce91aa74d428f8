"""The Open Inference Protocol's REST codec (gateway.pod.oip): JSON ``data`` and the binary
extension in, JSON or binary out, and every malformed request an InvalidInput naming it."""

from __future__ import annotations

import json
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest

from gateway.core.errors import InvalidInput
from gateway.pod import datatypes, oip, tensors
from gateway.pod.model import Tensor


def body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def tensor(name: str = "x", datatype: str = "FP32", shape: Any = (2, 2), **fields: Any) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape), **fields}


def decode(raw: bytes, header_length: int | None = None) -> oip.InferBody:
    return oip.decode_infer(raw, None if header_length is None else str(header_length))


def the_error(raw: bytes, header_length: int | str | None = None) -> str:
    with pytest.raises(InvalidInput) as caught:
        oip.decode_infer(raw, None if header_length is None else str(header_length))
    return caught.value.message


# -- JSON data -------------------------------------------------------------------


@pytest.mark.parametrize("data", [[1.0, 2.0, 3.0, 4.0], [[1.0, 2.0], [3.0, 4.0]], [[1, 2], [3, 4]]])
def test_data_flat_or_nested_is_row_major(data: list[Any]) -> None:
    decoded = decode(body(tensor(data=data)))
    (x,) = decoded.request.inputs
    assert x.datatype == "FP32" and x.array.dtype == np.float32
    np.testing.assert_array_equal(x.array, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("BOOL", [True, False]),
        ("UINT8", [0, 255]),
        ("UINT16", [0, 65535]),
        ("UINT32", [0, 2**32 - 1]),
        ("UINT64", [0, 2**64 - 1]),
        ("INT8", [-128, 127]),
        ("INT16", [-(2**15), 2**15 - 1]),
        ("INT32", [-(2**31), 2**31 - 1]),
        ("INT64", [-(2**63), 2**63 - 1]),
        ("FP16", [0.5, -2.0]),
        ("FP32", [0.25, 1]),
        ("FP64", [1e300, -1e-300]),
    ],
)
def test_every_numeric_datatype_round_trips_through_json(datatype: str, values: list[Any]) -> None:
    (x,) = decode(body(tensor(datatype=datatype, shape=[2], data=values))).request.inputs
    assert x.array.dtype == datatypes.DTYPES[datatype]
    assert x.array.tolist() == values
    answer, header_length = oip.encode_infer("m", "1", decode(body(tensor(data=[0] * 4))), [x])
    assert header_length is None
    assert json.loads(answer)["outputs"] == [
        {"name": "x", "datatype": datatype, "shape": [2], "data": values}
    ]


def test_bytes_are_json_strings_in_and_out() -> None:
    (x,) = decode(body(tensor(datatype="BYTES", shape=[1, 2], data=[["héllo", ""]]))).request.inputs
    assert x.array.tolist() == [["héllo".encode(), b""]]
    answer, _ = oip.encode_infer("m", "1", decode(body(tensor(data=[0] * 4))), [x])
    assert json.loads(answer)["outputs"][0]["data"] == ["héllo", ""]


def test_the_answer_has_the_specs_fields_the_id_echoed_and_numeric_shapes() -> None:
    request = decode(body(tensor(data=[0] * 4), id="req-7"))
    answer, _ = oip.encode_infer(
        "m__isvc-1", "1", request, [Tensor.of("predict", np.array([[8]], np.int64))]
    )
    assert json.loads(answer) == {
        "model_name": "m__isvc-1",
        "model_version": "1",
        "id": "req-7",
        "parameters": {},
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [1, 1], "data": [8]}],
    }
    assert decode(body(tensor(data=[0] * 4))).request_id  # none sent: one is made, as KServe does


def test_parameters_take_any_json_value_and_outputs_name_what_is_wanted() -> None:
    decoded = decode(
        body(
            tensor(data=[0] * 4, parameters={"content_type": "np"}),
            parameters={"flag": True, "n": 3, "nested": {"a": [1]}, "none": None},
            outputs=[{"name": "predict_proba"}, {"name": "predict"}],
        )
    )
    assert decoded.request.parameters == {"flag": True, "n": 3, "nested": '{"a": [1]}'}
    assert decoded.request.outputs == ("predict_proba", "predict")


# -- the binary extension --------------------------------------------------------


def binary_request(document: dict[str, Any], *chunks: bytes) -> tuple[bytes, int]:
    header = json.dumps(document).encode()
    return header + b"".join(chunks), len(header)


def test_binary_inputs_follow_the_json_in_order() -> None:
    a = np.arange(4, dtype=np.float32)
    words = [b"ab", b"\xff\x00"]
    raw_words = b"".join(struct.pack("<I", len(w)) + w for w in words)
    raw, length = binary_request(
        {
            "inputs": [
                tensor("a", shape=[4], parameters={"binary_data_size": 16}),
                tensor("w", "BYTES", [2], parameters={"binary_data_size": len(raw_words)}),
            ]
        },
        a.tobytes(),
        raw_words,
    )
    decoded = decode(raw, length)
    got_a, got_w = decoded.request.inputs
    np.testing.assert_array_equal(got_a.array, a)
    assert got_w.array.tolist() == words


def test_binary_outputs_when_asked_for_all_or_by_name() -> None:
    outputs = [Tensor.of("p", np.array([[1.5, 2.5]], np.float32)), Tensor.of("q", [1, 2])]
    every = decode(body(tensor(data=[0] * 4), parameters={"binary_data_output": True}))
    answer, length = oip.encode_infer("m", "1", every, outputs)
    assert length is not None
    header = json.loads(answer[:length])
    assert [o["parameters"] for o in header["outputs"]] == [
        {"binary_data_size": 8},
        {"binary_data_size": 16},
    ]
    assert answer[length:] == outputs[0].array.tobytes() + outputs[1].array.tobytes()

    one = decode(
        body(
            tensor(data=[0] * 4),
            outputs=[{"name": "p", "parameters": {"binary_data": True}}, {"name": "q"}],
        )
    )
    answer, length = oip.encode_infer("m", "1", one, outputs)
    assert length is not None
    p, q = json.loads(answer[:length])["outputs"]
    assert p["parameters"] == {"binary_data_size": 8} and "data" not in p
    assert q["data"] == [1, 2]
    assert answer[length:] == outputs[0].array.tobytes()


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (body(tensor(data=[1.0, 2.0, 3.0])), "shape [2, 2] needs 4 elements, got 3"),
        (body(tensor(data=[[1.0, 2.0], [3.0]])), "nested arrays of uneven length"),
        (body(tensor(data=["a", "b", "c", "d"])), "FP32 data must be JSON numbers"),
        (body(tensor(data=[True, False, True, False])), "FP32 data must be JSON numbers"),
        (body(tensor(datatype="INT32", data=[1.5, 2, 3, 4])), "INT32 data must be JSON integers"),
        (body(tensor(datatype="BOOL", data=[1, 0, 1, 0])), "BOOL data must be JSON booleans"),
        (
            body(tensor(datatype="BYTES", data=["a", 1, "b", "c"])),
            "BYTES data must be JSON strings",
        ),
        (body(tensor(datatype="INT8", data=[0, 1, 2, 128])), "values outside the INT8 range"),
        (body(tensor(datatype="UINT8", data=[0, 1, 2, -1])), "values outside the UINT8 range"),
        (body(tensor(data=[None, 1, 2, 3])), "FP32 data must be JSON numbers"),
        (body(tensor(shape=[2, -2], data=[1.0] * 4)), "has a negative dimension"),
        (body(tensor(shape=[1] * 65, data=[1.0])), "rank 65 is over the 64 dimensions allowed"),
        (body(tensor(shape=["2", 2], data=[1.0] * 4)), "'shape' must be an array of integers"),
        (body(tensor(data=5)), "'data' must be an array"),
        (body(tensor()), "has no 'data'"),
        (body(tensor(datatype="FP8", data=[1] * 4)), 'unknown datatype "FP8"'),
        (
            body(tensor(data=[1.0] * 4, contents={"fp32_contents": [1.0] * 4})),
            "has both 'data' and 'contents'",
        ),
        (body(tensor(contents={"fp32_contents": [1.0] * 4})), "'contents' belongs to the protobuf"),
        (b"{not json", "not valid JSON"),
        (b'{"inputs": [{"name": "\xff"}]}', "not valid UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"inputs": []}', "'inputs' must be a non-empty array"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (body(tensor(data=[0] * 4), outputs="predict"), "'outputs' must be an array"),
        (body(tensor(data=[0] * 4), parameters={"binary_data_output": 1}), "true or false"),
        (body(tensor(data=[0] * 4), id=7), "'id' must be a string"),
    ],
)
def test_each_malformed_request_is_invalid_input_naming_the_problem(
    raw: bytes, message: str
) -> None:
    assert message in the_error(raw)


def test_an_absurd_shape_is_refused_without_allocating_it() -> None:
    tracemalloc.start()
    try:
        message = the_error(body(tensor(shape=[1, 10**12], data=[1.0] * 4)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "needs 1000000000000 elements, got 4" in message
    assert peak < 10 << 20
    assert "larger than any tensor" in the_error(body(tensor(shape=[2**70], data=[1.0])))


@pytest.mark.parametrize(
    ("document", "binary", "header_length", "message"),
    [
        # a binary_data_size past the end of the body
        ([tensor(shape=[4], parameters={"binary_data_size": 32})], bytes(16), None, "runs past"),
        # sizes that do not add up to the binary part
        ([tensor(shape=[4], parameters={"binary_data_size": 16})], bytes(20), None, "add up to 16"),
        # a size that is not the tensor's
        ([tensor(shape=[4], parameters={"binary_data_size": 12})], bytes(12), None, "needs 4"),
        ([tensor(shape=[4], parameters={"binary_data_size": -1})], b"", None, "a byte count"),
        # the header's length past the body
        ([tensor(shape=[4], data=[1] * 4)], b"", 10_000, "but the body has"),
        ([tensor(shape=[4], data=[1] * 4)], b"", "ten", "must be a byte count"),
        (
            [tensor(shape=[4], data=[1] * 4, parameters={"binary_data_size": 16})],
            bytes(16),
            None,
            "both 'data' and parameters.binary_data_size",
        ),
    ],
)
def test_bad_binary_requests(
    document: list[dict[str, Any]], binary: bytes, header_length: Any, message: str
) -> None:
    raw, length = binary_request({"inputs": document}, binary)
    assert message in the_error(raw, length if header_length is None else header_length)


def test_raw_bytes_are_read_by_the_codec_every_form_shares() -> None:
    """The binary extension and raw_input_contents are one reader: the same bytes, the same
    tensor, the same errors."""
    values = np.array([[1, -2], [3, 4]], np.int16)
    raw, length = binary_request(
        {"inputs": [tensor(datatype="INT16", parameters={"binary_data_size": 8})]},
        values.tobytes(),
    )
    (via_rest,) = decode(raw, length).request.inputs
    request = tensors.make_request("m", [Tensor.of("x", values)], raw=True)
    (via_grpc,) = tensors.decode_request(request).inputs
    np.testing.assert_array_equal(via_rest.array, via_grpc.array)
    assert via_rest.array.dtype == via_grpc.array.dtype
