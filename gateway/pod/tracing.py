"""OpenTelemetry spans for a pod's inference requests, off unless a collector is named.

Envoy (with a collector configured: `mmgw envoy --otlp-endpoint`) starts or continues
the client's trace and sends the pod a W3C ``traceparent``; the pod's span for the
request is that span's child, exported over OTLP gRPC to the same collector. With no
endpoint (the default) ``Tracing.span`` is a no-op that costs one attribute check, and
OpenTelemetry is not even imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


class Tracing:
    """``endpoint``: HOST:PORT of an OTLP gRPC collector; "" for no tracing."""

    def __init__(self, endpoint: str, service: str, pod_id: str = "") -> None:
        self._tracer: Any = None
        self._provider: Any = None
        if not endpoint:
            return
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            # the tracing extra is not installed, or xds-protos' older copy of OpenTelemetry's
            # protos shadows opentelemetry-proto's (the Makefile installs the latter last)
            raise RuntimeError(
                f"tracing needs OpenTelemetry's SDK and OTLP exporter ({exc}): "
                "pip install 'modelmesh-gateway[tracing]', then "
                "pip install --force-reinstall --no-deps opentelemetry-proto"
            ) from exc
        resource = Resource.create({"service.name": service, "service.instance.id": pod_id})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=2),
                schedule_delay_millis=1000,
            )
        )
        self._tracer = self._provider.get_tracer("gateway.pod")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def span(
        self, name: str, headers: Mapping[str, str], attributes: Mapping[str, str]
    ) -> Iterator[None]:
        """A span for one request, the child of the ``traceparent`` in ``headers``."""
        if self._tracer is None:
            yield
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier = {k: v for k, v in headers.items() if k in (TRACEPARENT, TRACESTATE)}
        parent = TraceContextTextMapPropagator().extract(carrier)
        with self._tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes)
        ) as span:
            try:
                yield
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise

    def close(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
