"""A 20 MB gRPC batch through Envoy (issue 13, item 6): sent without a model header, as
tritonclient sends it, it is answered (ext_proc reads the name from the message's
first bytes; it used to get "Payload Too Large", or hang), and while its pod predicts
for seconds, other requests are answered and the gateway does not take the pod for dead."""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import numpy as np

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.tools import launcher, samples

ROWS = 81_920  # x 64 FP32: 20 MiB, over Envoy's 16 MiB buffer


def _request(rows: int) -> v2.ModelInferRequest:
    batch = np.repeat(np.array([samples.sample_input()], np.float32), rows, axis=0)
    request = v2.ModelInferRequest(model_name="sklearn-mnist")
    request.inputs.add(name="predict", datatype="FP32", shape=list(batch.shape))
    request.raw_input_contents.append(batch.tobytes())
    return request


def test_a_20_mb_batch_is_answered_while_the_pod_serves_others(
    deployment: launcher.Deployment, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    gateway_log = deployment.process("gateway").log
    logged_before = gateway_log.read_text()
    limits = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{deployment.ports.envoy}", options=limits) as channel:
        big = v2_grpc.GRPCInferenceServiceStub(channel)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            batch = pool.submit(big.ModelInfer, _request(ROWS), timeout=120)
            small, during = _request(1), 0
            while not batch.done():
                answer = stub.ModelInfer(small, timeout=30)
                assert np.frombuffer(answer.raw_output_contents[0], np.int64).tolist() == [8]
                during += not batch.done()
            result = batch.result()
    seconds = time.monotonic() - started
    assert np.frombuffer(result.raw_output_contents[0], np.int64).tolist() == [8] * ROWS
    print(f"20 MiB batch answered in {seconds:.2f} s; {during} other requests answered meanwhile")
    assert during > 0
    logged = gateway_log.read_text()[len(logged_before) :]
    assert "unreachable" not in logged and "did not answer" not in logged, logged
