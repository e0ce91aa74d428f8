"""OpenTelemetry tracing from Envoy through the pod (issue 17, item 3), off by default: with
a collector named, Envoy continues a client's W3C traceparent (or starts a trace) and the
pod's span is the child of the span Envoy sent it. The collector is in this process: a
gRPC server of OTLP's TraceService that records every span exported to it."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from gateway._proto import grpc_predict_v2_pb2 as v2
from gateway._proto import grpc_predict_v2_pb2_grpc as v2_grpc
from gateway.tools import launcher, samples

from .conftest import EXAMPLE, ISVCS, wait_ready


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Collector(otlp_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def Export(  # noqa: N802 - OTLP's method name
        self, request: otlp.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> otlp.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            Span(
                                service,
                                span.name,
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                            )
                        )
        return otlp.ExportTraceServiceResponse()

    def of(self, trace_id: str, timeout: float = 20.0) -> list[Span]:
        """The trace's spans once both Envoy's and the pod's are in (they export in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [s for s in self.spans if s.trace_id == trace_id]
            services = {s.service for s in found}
            if {"mmgw-envoy", "mmgw-pod"} <= services or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[launcher.Deployment, Collector]]:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    otlp_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    data = tmp_path_factory.mktemp("tracing")
    samples.train_mnist_svm(data / "models" / samples.SAMPLE_FILE)
    deployment = launcher.Deployment(
        data_dir=data, ports=launcher.Ports.free(pods=1), otlp=f"127.0.0.1:{port}"
    )
    try:
        with deployment:
            with httpx.Client(base_url=deployment.api_url, timeout=30) as api:
                api.put(
                    f"{ISVCS}/sklearn-mnist", json=yaml.safe_load(EXAMPLE.read_text())
                ).raise_for_status()
                wait_ready(api, "sklearn-mnist")
            yield deployment, collector
    finally:
        server.stop(grace=None)


def test_a_clients_trace_is_continued_by_envoy_and_the_pod_over_rest(
    traced: tuple[launcher.Deployment, Collector],
) -> None:
    deployment, collector = traced
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    response = httpx.post(
        f"{deployment.url}/v2/models/sklearn-mnist/infer",
        json=samples.sample_request(oip=True),
        headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    spans = collector.of(trace_id)
    print(spans)
    envoy = [s for s in spans if s.service == "mmgw-envoy"]
    [pod] = [s for s in spans if s.service == "mmgw-pod"]
    assert any(s.parent_id == client_span for s in envoy)  # Envoy continued the client's trace
    assert pod.name == "infer" and pod.parent_id in {s.span_id for s in envoy}


def test_envoy_starts_a_trace_for_a_grpc_call_without_one(
    traced: tuple[launcher.Deployment, Collector],
) -> None:
    deployment, collector = traced
    before = {s.trace_id for s in collector.spans}
    with grpc.insecure_channel(f"127.0.0.1:{deployment.ports.envoy}") as channel:
        request = v2.ModelInferRequest(model_name="sklearn-mnist")
        tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 64])
        tensor.contents.fp32_contents.extend(samples.sample_input())
        reply = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=[("mm-vmodel-id", "sklearn-mnist")], timeout=30
        )
    assert list(reply.outputs[0].contents.int64_contents) == [8]
    deadline = time.monotonic() + 20
    while True:
        pods = [
            s
            for s in collector.spans
            if s.service == "mmgw-pod" and s.name == "ModelInfer" and s.trace_id not in before
        ]
        if pods or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert pods, collector.spans
    spans = collector.of(pods[0].trace_id)
    envoy_ids = {s.span_id for s in spans if s.service == "mmgw-envoy"}
    assert pods[0].parent_id in envoy_ids
