"""A pod's load queue: at most ``limit`` loads at once, the rest wait their turn.

As in ModelMesh, a load that a waiting request needs goes before a proactive
one (a fresh registration, an extra copy, a rollout), and a proactive load is
promoted when a request starts waiting for it. Among equals, first come first
served.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Waiter:
    model_id: str
    urgent: bool
    seq: int
    granted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class LoadQueue:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._running = 0
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    def __len__(self) -> int:
        return self._running + len(self._waiting)

    def promote(self, model_id: str) -> None:
        """A request now waits for this model: its queued load becomes urgent."""
        for waiter in self._waiting:
            if waiter.model_id == model_id:
                waiter.urgent = True

    @asynccontextmanager
    async def slot(self, model_id: str, *, urgent: bool) -> AsyncIterator[float]:
        """Hold one of the pod's load slots; yields the seconds spent waiting for it."""
        started = time.perf_counter()
        if self._running < self._limit and not self._waiting:
            self._running += 1
        else:
            waiter = _Waiter(model_id, urgent, next(self._seq))
            self._waiting.append(waiter)
            try:
                await waiter.granted
            except asyncio.CancelledError:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                elif waiter.granted.done() and not waiter.granted.cancelled():
                    self._release()  # granted just as we were cancelled: pass it on
                raise
        try:
            yield time.perf_counter() - started
        finally:
            self._release()

    def _release(self) -> None:
        self._running -= 1
        while self._waiting and self._running < self._limit:
            nxt = min(self._waiting, key=lambda w: (not w.urgent, w.seq))
            self._waiting.remove(nxt)
            if not nxt.granted.done():
                self._running += 1
                nxt.granted.set_result(None)
