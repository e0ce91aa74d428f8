"""The pod's tracing: off by default (a no-op), on with an endpoint. Building it imports
OpenTelemetry's OTLP exporter, which fails when xds-protos' older copy of OpenTelemetry's
protos shadows opentelemetry-proto's (the Makefile installs the latter last)."""

from __future__ import annotations

import pytest

from gateway.pod.tracing import Tracing
from gateway.tools import launcher


def test_without_an_endpoint_nothing_is_traced() -> None:
    tracing = Tracing("", "mmgw-pod")
    assert not tracing.enabled
    with tracing.span("infer", {"traceparent": "garbage"}, {}):
        pass
    tracing.close()


def test_with_an_endpoint_the_exporter_is_built_and_errors_pass_through() -> None:
    tracing = Tracing(f"127.0.0.1:{launcher.free_port()}", "mmgw-pod", "pod-0")
    assert tracing.enabled
    parent = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    with tracing.span("infer", parent, {"mmgw.model_id": "m__isvc-1"}):
        pass
    with pytest.raises(ValueError, match="bad input"):
        with tracing.span("infer", {}, {}):
            raise ValueError("bad input")
    tracing.close()  # nobody listens there: the export fails quietly, close returns
