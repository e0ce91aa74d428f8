"""The README's Limits table says what envoy.yaml sets: the stream, timeout and circuit
breaker limits (300 s cannot be waited out in a test) are compared with the file itself."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.tools.envoy_config import PODS_CLUSTER, PODS_REST_CLUSTER, FilterConfig

README = Path(__file__).resolve().parents[2] / "README.md"
BREAKERS = ("max_requests", "max_pending_requests", "max_connections", "max_retries")


def _limits_row(starts: str) -> str:
    table = README.read_text().split("### Limits", 1)[1].split("\n## ", 1)[0]
    (row,) = [line for line in table.splitlines() if line.startswith(f"| {starts}")]
    return row


def test_the_stream_and_timeout_limits_are_envoy_yamls() -> None:
    hcm = FilterConfig().hcm
    streams = hcm["http2_protocol_options"]["max_concurrent_streams"]
    assert f"| {streams} (" in _limits_row("HTTP/2 streams at once")
    timeouts = [
        hcm[k] for k in ("request_headers_timeout", "request_timeout", "stream_idle_timeout")
    ]
    documented = re.findall(r"(\d+) s", _limits_row("time to send a request's headers"))[:3]
    assert documented == [t.removesuffix("s") for t in timeouts]


def test_the_pod_circuit_breakers_are_envoy_yamls() -> None:
    source = FilterConfig()
    match = re.search(r"\| ([\d,]+) each", _limits_row("requests, pending requests"))
    assert match is not None
    documented = int(match.group(1).replace(",", ""))
    for name in (PODS_CLUSTER, PODS_REST_CLUSTER):
        (thresholds,) = source.cluster(name)["circuit_breakers"]["thresholds"]
        assert [thresholds[k] for k in BREAKERS] == [documented] * len(BREAKERS)
