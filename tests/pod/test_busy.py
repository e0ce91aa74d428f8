"""A large batch does not block the pod (issue 13, item 6): while an 81,920-row (20 MB)
scikit-learn batch is predicted, the pod answers its health check, metadata and another
model's requests. The test compares the order of events, not their times: each answer
must come while the batch is still running, which cannot happen if predict held the
event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway.pod import offload

from .harness import StartPod

ROWS = 81_920  # x 64 FP32 features: 20 MiB of raw_input_contents


def _infer(model: str, rows: np.ndarray) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model)
    request.inputs.add(name="predict", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype(np.float32).tobytes())
    return request


async def test_a_large_batch_leaves_the_pod_answering(
    start_pod: StartPod, svc_file: Path, digit_898: np.ndarray
) -> None:
    pod = await start_pod()
    await pod.load("big", svc_file)
    await pod.load("other", svc_file)
    batch = np.repeat(digit_898, ROWS, axis=0)
    assert batch.size >= offload.PREDICT_INLINE_VALUES
    running = asyncio.ensure_future(pod.infer.ModelInfer(_infer("big", batch)))
    answered: list[str] = []
    while not running.done():  # answers while the batch runs, until it ends
        status = await pod.status()
        other = await pod.infer.ModelInfer(_infer("other", digit_898))
        metadata = await pod.infer.ModelMetadata(v2.ModelMetadataRequest(name="other"))
        if not running.done():
            answered.append("during")
        assert status.status == status.READY and metadata.name == "other"
        assert np.frombuffer(other.raw_output_contents[0], np.int64).tolist() == [8]
    result = await running
    assert len(np.frombuffer(result.raw_output_contents[0], np.int64)) == ROWS
    print(
        f"{len(answered)} rounds of health, metadata and another model's predict answered during the batch"
    )
    assert answered, "the pod answered nothing while the batch ran"
