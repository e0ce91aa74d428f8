"""Rolling an InferenceService out to a changed spec, as ModelMesh does.

A changed spec gets a new concrete id. The new model is loaded with as many
copies as the old one has while the old one serves; then the name moves to
it at once (``RolloutHost.move_traffic``), and the old one is unloaded
``grace`` seconds later (requests routed to it a moment before still find
it). A new version that cannot be loaded blocks its rollout, and the old one
goes on serving until the InferenceService is applied again.

Across gateway replicas one replica does each rollout: the one that claims
``rollout/<new model id>`` in the store. Every replica looks for unfinished
rollouts every ``check_every`` seconds, so a rollout whose replica died is
taken over once that replica's lease (and with it the claim) expires. A
blocked rollout keeps its claim, so no replica retries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from gateway.control.records import Record
from gateway.core.domain import ModelSpec
from gateway.core.errors import GatewayError, StoreUnavailable
from gateway.core.placement import Coordinator, Placement

log = logging.getLogger(__name__)

_CLAIM = "rollout/"  # a rollout's claim: rollout/<new model id>


class RolloutHost(Protocol):
    """What the rollouts read and change in the registry."""

    def record(self, name: str) -> Record | None: ...

    def records(self) -> tuple[Record, ...]: ...

    def servable(self, name: str) -> bool: ...

    def holds_canary(self, name: str) -> bool: ...

    async def move_traffic(self, name: str, target: ModelSpec) -> ModelSpec | None: ...


class Rollouts:
    def __init__(
        self,
        host: RolloutHost,
        placement: Placement,
        coordinator: Coordinator,
        *,
        grace: float,
        check_every: float,
    ) -> None:
        self._host = host
        self._placement = placement
        self._coordinator = coordinator
        self._grace = grace
        self._check_every = check_every
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}  # new model id -> its rollout here
        # name -> new model id of a blocked rollout whose claim is kept
        self._blocked: dict[str, str] = {}

    def start(self, record: Record) -> None:
        """Roll ``record`` out to its target, unless this replica is doing it already."""
        target = record.target
        if target.model_id in self._running:
            return
        task = asyncio.create_task(
            self._claimed(record.name, target), name=f"rollout {record.name}"
        )
        self._running[target.model_id] = task
        self._keep(task)
        task.add_done_callback(lambda _: self._running.pop(target.model_id, None))

    async def watch(self) -> None:
        """Take over unfinished rollouts that no replica is doing, every ``check_every`` seconds."""
        while True:
            await asyncio.sleep(self._check_every)
            self.check()

    def check(self) -> None:
        for name, model_id in list(self._blocked.items()):
            record = self._host.record(name)
            if (
                record is None
                or record.target.model_id != model_id
                or record.target == record.serving
            ):
                del self._blocked[name]  # applied again or deleted: the claim is no longer needed
                self._keep(asyncio.ensure_future(self._release(model_id)))
        for record in self._host.records():
            if (
                record.target != record.serving
                and self._host.servable(record.name)
                and not self._host.holds_canary(record.name)
                and self._blocked.get(record.name) != record.target.model_id
            ):
                self.start(record)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claimed(self, name: str, target: ModelSpec) -> None:
        try:
            if not await self._coordinator.claim(_CLAIM + target.model_id):
                return  # another replica is rolling it out; its claim ends with its lease
        except StoreUnavailable:
            return  # check tries again
        blocked = False
        try:
            blocked = not await self._roll_out(name, target)
        except StoreUnavailable as exc:
            log.warning("rollout of %s to %s paused: %s", name, target.model_id, exc.message)
        finally:
            if blocked:
                self._blocked[name] = target.model_id
            else:
                await self._release(target.model_id)

    async def _release(self, model_id: str) -> None:
        with contextlib.suppress(StoreUnavailable):  # the claim's lease ends it anyway
            await self._coordinator.release(_CLAIM + model_id)

    async def _roll_out(self, name: str, target: ModelSpec) -> bool:
        """Load the new version with as many copies as the old has, then move the name to it.
        False if the new version cannot be loaded: the rollout waits for the next apply."""
        record = self._host.record(name)
        if record is None or record.target != target or self._host.holds_canary(name):
            return True  # finished by another replica, superseded, held or deleted meanwhile
        copies = self._placement.status(record.serving.model_id).copies
        try:
            await self._placement.ensure_copies(target.model_id, max(1, copies))
        except GatewayError as exc:
            log.warning("rollout of %s to %s is blocked: %s", name, target.model_id, exc.message)
            return False
        old = await self._host.move_traffic(name, target)
        if old is None:
            return True  # deleted, superseded, left without a runtime, or done by another replica
        log.info("rolled out %s: traffic moved from %s to %s", name, old.model_id, target.model_id)
        await asyncio.sleep(self._grace)
        await self._placement.unregister(old.model_id)
        return True
