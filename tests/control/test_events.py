"""The events `mmgw describe` shows: noted per InferenceService, repeats counted, bounded."""

from __future__ import annotations

from gateway.control.events import NORMAL, WARNING, EventBook, EventFanout


def test_events_are_kept_per_inference_service_and_repeats_count_up() -> None:
    now = [1000.0]
    book = EventBook(clock=lambda: now[0])
    book.loaded("mnist__isvc-1", "pod-a", 0.041, 0.0, 344_827)
    now[0] += 5
    book.load_failed("mnist__isvc-2", "pod-b", "no such file")
    now[0] += 5
    book.load_failed("mnist__isvc-2", "pod-b", "no such file")
    book.evicted("other__isvc-9", "pod-a", "room", 61.2)
    events = book.of("mnist")
    assert [(e.type, e.reason, e.count) for e in events] == [
        (NORMAL, "Loaded", 1),
        (WARNING, "LoadFailed", 2),
    ]
    assert events[0].message == (
        "mnist__isvc-1 loaded on pod pod-a in 41 ms (344827 bytes; 0 ms in the load queue)"
    )
    assert (events[1].first, events[1].last) == (1005.0, 1010.0)
    [evicted] = book.of("other")
    assert evicted.message == (
        "other__isvc-9 evicted from pod pod-a (to make room for another model; idle 61 s)"
    )
    assert book.of("nobody") == []


def test_the_book_is_bounded_per_name_and_in_names() -> None:
    book = EventBook(per_name=3, max_names=2)
    for i in range(5):
        book.loaded(f"a__isvc-{i}", "p", 0.0, 0.0, i)
    assert [e.message.split()[0] for e in book.of("a")] == ["a__isvc-2", "a__isvc-3", "a__isvc-4"]
    book.loaded("b__isvc-1", "p", 0.0, 0.0, 1)
    book.loaded("a__isvc-5", "p", 0.0, 0.0, 1)  # a is now the most recently noted
    book.loaded("c__isvc-1", "p", 0.0, 0.0, 1)  # b, the least recent, goes
    assert book.of("b") == [] and book.of("a") and book.of("c")


def test_the_fanout_tells_every_listener() -> None:
    first, second = EventBook(), EventBook()
    fanout = EventFanout([first, second])
    fanout.loaded("m__isvc-1", "p", 0.0, 0.0, 1)
    fanout.load_failed("m__isvc-1", "p", "x")
    fanout.evicted("m__isvc-1", "p", "pod lost", 0.0)
    fanout.waited("m__isvc-1", 0.1)
    assert (
        [e.reason for e in first.of("m")]
        == [e.reason for e in second.of("m")]
        == [
            "Loaded",
            "LoadFailed",
            "Evicted",
        ]
    )
