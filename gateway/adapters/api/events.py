"""Events in Kubernetes' shape (core/v1 EventList), for `mmgw describe`.

``GET /api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name=NAME`` lists
an InferenceService's events (gateway.control.events); without a field selector, an
empty list (events are kept per InferenceService only).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.control.events import Event
from gateway.core.errors import InvalidInput

PATH = "/api/v1/namespaces/{namespace}/events"
SOURCE = "mmgw-gateway"


def involved_name(field_selector: str | None) -> str | None:
    """NAME from ``involvedObject.name=NAME`` (the one field selector served)."""
    if not field_selector:
        return None
    key, sep, value = field_selector.partition("=")
    if key.strip() != "involvedObject.name" or not sep or not value.strip("= "):
        raise InvalidInput(
            f"field selector {field_selector!r}: only involvedObject.name=NAME is served"
        )
    return value.lstrip("=").strip()


def event_list(namespace: str, name: str | None, events: Sequence[Event]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "EventList",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{name}.{i}", "namespace": namespace},
                "involvedObject": {
                    "apiVersion": "serving.kserve.io/v1beta1",
                    "kind": "InferenceService",
                    "name": name,
                    "namespace": namespace,
                },
                "type": event.type,
                "reason": event.reason,
                "message": event.message,
                "count": event.count,
                "firstTimestamp": _timestamp(event.first),
                "lastTimestamp": _timestamp(event.last),
                "source": {"component": SOURCE},
            }
            for i, event in enumerate(events)
        ],
    }


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
