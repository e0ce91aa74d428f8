"""Requests for loaded models: which copy serves each, and counting them.

``Hits.route_sole`` and ``Hits.route`` decide a request to a loaded model
(ModelMesh's rule through ``picker.rank_copies``: fewest in flight, ties to
the least recently used) and count it at once. The hottest path does less:
the router (gateway.control.router) keeps its Route to a model with one loaded
copy and records only that a request came, in a ``HitBuffer``. Like the read buffer of
ModelMesh's cache (a ConcurrentLinkedHashMap), those hits are counted in a
batch by ``Table.settle``, off the request path; every decision and view that
reads the counts settles first, so none sees them stale.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

from gateway.core import picker
from gateway.core.domain import CopyState
from gateway.core.errors import Unavailable
from gateway.core.placement.table import CopyRecord, ModelRecord, Table

# Buffered hits that ask for a drain at the next turn of the event loop, and the
# buffer's room: it is allocated once, so the hot path never waits for it to grow.
_DRAIN_AT = 1024
_ROOM = 2 * _DRAIN_AT


# what a copy on a pod that has stopped answering its health checks ranks as: after every other
_UNRESPONSIVE = 1 << 40


class HitBuffer:
    """Requests served on a fast path, recorded by key and counted later.

    A key is what the fast path kept (the ext_proc adapter: the answer it
    sends); an object that lives on, so that a buffer of them allocates nothing
    per request. ``resolve(key)`` names the copy (a CopyRecord from
    ``Hits.route_sole``) that served a key's requests. It must not change while
    hits are buffered: the owner calls ``drain`` before it changes what a key
    resolves to.
    """

    def __init__(self, table: Table, resolve: Callable[[Any], CopyRecord]) -> None:
        self._table = table
        self._clock = table.clock
        self._resolve = resolve
        self._keys: list[object] = [None] * _ROOM
        self._times = array("d", bytes(8 * _ROOM))  # the clock at each hit
        self._filled = 0

    def add(self, key: object) -> None:
        """The hot path: one more request for ``key``."""
        n = self._filled
        if n == _ROOM:  # the event loop has not run the drain it was asked for
            self.drain()
            n = 0
        self._keys[n] = key
        self._times[n] = self._clock()
        self._filled = n = n + 1
        if n == _DRAIN_AT:
            self._table.drain_soon()

    def drain(self) -> None:
        """Count the buffered hits, in order, each at its own time."""
        n = self._filled
        if n:
            keys, times = self._keys[:n], self._times[:n]
            self._keys[:n] = [None] * n  # hold nothing once counted
            self._filled = 0
            self._table.count_hits(map(self._resolve, keys), times)


class Hits:
    def __init__(self, table: Table) -> None:
        self._table = table
        self._pods = table.pods
        self._models = table.models

    def buffer(self, resolve: Callable[[Any], CopyRecord]) -> HitBuffer:
        """A buffer of hits on copies that ``route_sole`` returned."""
        buffer = HitBuffer(self._table, resolve)
        self._table.add_buffer(buffer)
        return buffer

    def route_sole(self, model: ModelRecord) -> tuple[str, CopyRecord] | None:
        """A request to a model with one copy, loaded: counts it and returns the copy's
        address and record. The record stays the model's only loaded copy until the
        table's generation changes; meanwhile a ``buffer`` may count further requests
        to it. None when the model has several copies or none loaded: ``route`` decides.
        """
        entry = model.sole
        if entry is None or entry.state is not CopyState.LOADED:
            return None
        self._table.count_now(model, entry)
        self._table.hits += 1
        return self._pods[entry.pod].address, entry

    def route(self, model_id: str) -> tuple[str, tuple[str, ...]] | None:
        """The chosen copy's address and the model's other copies, best first; None on a miss."""
        model = self._table.model(model_id)
        entry = model.sole
        if entry is not None:  # the common case, without building lists
            if entry.state is not CopyState.LOADED:
                return None
            self._table.count_now(model, entry)
            self._table.hits += 1
            return self._pods[entry.pod].address, ()
        loaded = model.loaded()
        if not loaded:
            return None
        self._table.settle()
        ranked = picker.rank_copies(loaded, self._busy)
        self._table.count_now(model, ranked[0])
        self._table.hits += 1
        addresses = [self._pods[e.pod].address for e in ranked]
        return addresses[0], tuple(addresses[1:])

    def lookup(self, model_id: str) -> str | None:
        """The address of a loaded copy (counted as a request to it), or None on a miss."""
        found = self.route(model_id)
        return None if found is None else found[0]

    def fallbacks(self, model_id: str, chosen: str) -> tuple[str, ...]:
        """The other loaded copies' addresses, best first: where a retry goes if ``chosen`` is dead."""
        model = self._models.get(model_id)
        if model is None or len(model.copies) < 2:
            return ()
        others = [e for e in model.loaded() if self._pods[e.pod].address != chosen]
        self._table.settle()
        return tuple(self._pods[e.pod].address for e in picker.rank_copies(others, self._busy))

    def _busy(self, entry: CopyRecord) -> int:
        """A copy's requests in flight, for ranking; a copy on a pod that stopped answering
        ranks last (the retry after a per-try timeout goes to a copy that answers)."""
        busy = entry.busy()
        return busy + _UNRESPONSIVE if self._pods[entry.pod].missed_checks else busy

    def any_healthy_pod(self) -> str:
        """A pod for server-level calls (ServerLive, ServerMetadata, ...)."""
        for pod in self._pods.values():
            if pod.healthy:
                return pod.address
        raise Unavailable("no runtime pod is available")
