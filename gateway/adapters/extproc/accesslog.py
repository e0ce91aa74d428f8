"""Envoy's gRPC access log service (envoy.service.accesslog.v3.AccessLogService): what
each finished request was, translated for the traffic book.

Envoy streams batches of HTTPAccessLogEntry over a long-lived StreamAccessLogs stream
on the ext_proc cluster (envoy/envoy.yaml: the listener's access_log), after the
request is answered: no entry is on any request's path, and the gateway never sees a
response. Each entry becomes a gateway.core.traffic.Served, or None for a request that
names no model (health, server metadata, unknown paths).

What Envoy logs, and how it is read:
- the public name: a REST request's path (the transcoder keeps the original in
  ``original_path``), a gRPC call's mm-vmodel-id header (or, refused, its
  mm-model-id);
- the variant: mm-model-id as ext_proc set it, only when the request reached the
  router (``upstream_cluster``), so a refused request's own header is never taken;
- the code: gRPC's grpc-status (trailers, or headers for a trailers-only answer) by
  name; for REST the HTTP status ("0" when the client went away before an answer);
- the latency: first byte in to last byte out; the time at the pod: first byte sent
  to it to last byte back, and the pod's address (the last try's, after a retry).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.message import DecodeError

from gateway.core import protocol
from gateway.core.errors import UnknownRoute
from gateway.core.route_key import rest_model
from gateway.core.traffic import GRPC, REST, Served

log = logging.getLogger(__name__)

STREAM_ACCESS_LOGS_PATH = b"/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
GRPC_STATUS = "grpc-status"
# the headers envoy.yaml's access logger is told to log (additional_*_to_log)
LOGGED_REQUEST_HEADERS = (protocol.VMODEL_ID_HEADER, protocol.MODEL_ID_HEADER)
LOGGED_RESPONSE_HEADERS = (GRPC_STATUS,)

_GRPC_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def served(entry: accesslog_pb2.HTTPAccessLogEntry) -> Served | None:
    """The request ``entry`` describes, or None when it names no model."""
    request, response, common = entry.request, entry.response, entry.common_properties
    headers = request.request_headers
    path = request.original_path or request.path
    reached_router = bool(common.upstream_cluster)
    variant = headers.get(protocol.MODEL_ID_HEADER) if reached_router else None
    status = response.response_code.value if response.HasField("response_code") else 0
    if path.startswith(protocol.GRPC_PREFIX):
        if path[len(protocol.GRPC_PREFIX) :] not in protocol.MODEL_METHODS:
            return None
        name = headers.get(protocol.VMODEL_ID_HEADER) or (
            None if reached_router else headers.get(protocol.MODEL_ID_HEADER)
        )
        grpc_status = response.response_trailers.get(GRPC_STATUS) or response.response_headers.get(
            GRPC_STATUS
        )
        code = _grpc_code(grpc_status, status)
        kind, ok = GRPC, code == "OK"
    else:
        try:
            name = rest_model(path)
        except UnknownRoute:
            return None
        if name is None:
            return None
        code, kind, ok = str(status), REST, 200 <= status < 300
    elapsed = (
        common.time_to_last_downstream_tx_byte
        if common.HasField("time_to_last_downstream_tx_byte")
        else common.duration
    )
    pod = pod_seconds = None
    if common.HasField("time_to_last_upstream_rx_byte") and common.HasField(
        "time_to_first_upstream_tx_byte"
    ):
        address = common.upstream_remote_address.socket_address
        pod = f"{address.address}:{address.port_value}" if address.address else None
        pod_seconds = (
            common.time_to_last_upstream_rx_byte.ToNanoseconds()
            - common.time_to_first_upstream_tx_byte.ToNanoseconds()
        ) / 1e9
    return Served(
        name or None,
        variant or None,
        kind,
        code,
        elapsed.ToNanoseconds() / 1e9,
        ok,
        pod,
        pod_seconds,
    )


def _grpc_code(grpc_status: str | None, http_status: int) -> str:
    if grpc_status is None:
        # no grpc-status: the client went away first, or no gRPC answer came at all
        return "CANCELLED" if http_status == 0 else "UNKNOWN"
    try:
        return _GRPC_CODE_NAMES.get(int(grpc_status), "UNKNOWN")
    except ValueError:
        return "UNKNOWN"


class AccessLogReader:
    """Reads StreamAccessLogsMessages and hands each request that names a model to ``sink``.

    A malformed message is logged and dropped: the access log never affects a request."""

    def __init__(self, sink: Callable[[Served], None]) -> None:
        self._sink = sink
        self.entries = 0  # HTTP entries read, for tests and the operator

    def message(self, data: bytes) -> bool:
        """Take one serialized StreamAccessLogsMessage; False when it does not parse."""
        try:
            message = als_pb2.StreamAccessLogsMessage.FromString(data)
        except DecodeError:
            log.warning("access log: a malformed StreamAccessLogsMessage was dropped")
            return False
        sink = self._sink
        for entry in message.http_logs.log_entry:
            self.entries += 1
            found = served(entry)
            if found is not None:
                sink(found)
        return True
