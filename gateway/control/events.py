"""Events per InferenceService, as Kubernetes keeps them for `kubectl describe`: loads,
load failures and evictions of its models, with their times.

The engine reports them (PlacementEvents); ``EventFanout`` hands each report to every
listener (the metrics and this book). Like Kubernetes' events they are kept for a
while and not forever: at most ``per_name`` per InferenceService (the oldest go first;
a repeat of the last one counts up instead), for at most ``max_names`` names (the
least recently noted name goes first). Each gateway replica keeps the events its own
engine saw.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from gateway.core.placement import PlacementEvents
from gateway.core.protocol import CONCRETE_ID_SEPARATOR

NORMAL, WARNING = "Normal", "Warning"


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # NORMAL or WARNING
    reason: str  # Loaded, LoadFailed, Evicted
    message: str
    first: float  # wall-clock seconds
    last: float
    count: int = 1


class EventBook:
    def __init__(
        self,
        *,
        per_name: int = 50,
        max_names: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._per_name = per_name
        self._max_names = max_names
        self._clock = clock
        self._events: OrderedDict[str, deque[Event]] = OrderedDict()

    def of(self, name: str) -> list[Event]:
        """``name``'s events, oldest first."""
        return list(self._events.get(name, ()))

    def note(self, model_id: str, kind: str, reason: str, message: str) -> None:
        name = model_id.rpartition(CONCRETE_ID_SEPARATOR)[0] or model_id
        now = self._clock()
        events = self._events.get(name)
        if events is None:
            if len(self._events) >= self._max_names:
                self._events.popitem(last=False)
            events = self._events[name] = deque(maxlen=self._per_name)
        else:
            self._events.move_to_end(name)
        if events and (events[-1].reason, events[-1].message) == (reason, message):
            events[-1] = replace(events[-1], last=now, count=events[-1].count + 1)
        else:
            events.append(Event(kind, reason, message, now, now))

    # -- PlacementEvents ----------------------------------------------------------

    def loaded(
        self, model_id: str, pod: str, seconds: float, queued_seconds: float, size: int
    ) -> None:
        self.note(
            model_id,
            NORMAL,
            "Loaded",
            f"{model_id} loaded on pod {pod} in {1000 * seconds:.0f} ms "
            f"({size} bytes; {1000 * queued_seconds:.0f} ms in the load queue)",
        )

    def load_failed(self, model_id: str, pod: str, reason: str) -> None:
        self.note(
            model_id, WARNING, "LoadFailed", f"{model_id} failed to load on pod {pod}: {reason}"
        )

    def evicted(self, model_id: str, pod: str, reason: str, idle_seconds: float) -> None:
        why = "to make room for another model" if reason == "room" else reason
        self.note(
            model_id,
            NORMAL,
            "Evicted",
            f"{model_id} evicted from pod {pod} ({why}; idle {idle_seconds:.0f} s)",
        )

    def waited(self, model_id: str, seconds: float) -> None:
        """A request's wait for a load is a metric, not an event."""


class EventFanout:
    """PlacementEvents to several listeners, in order."""

    def __init__(self, listeners: Sequence[PlacementEvents]) -> None:
        self._listeners = tuple(listeners)

    def loaded(
        self, model_id: str, pod: str, seconds: float, queued_seconds: float, size: int
    ) -> None:
        for listener in self._listeners:
            listener.loaded(model_id, pod, seconds, queued_seconds, size)

    def load_failed(self, model_id: str, pod: str, reason: str) -> None:
        for listener in self._listeners:
            listener.load_failed(model_id, pod, reason)

    def evicted(self, model_id: str, pod: str, reason: str, idle_seconds: float) -> None:
        for listener in self._listeners:
            listener.evicted(model_id, pod, reason, idle_seconds)

    def waited(self, model_id: str, seconds: float) -> None:
        for listener in self._listeners:
            listener.waited(model_id, seconds)
