"""Several gateway replicas over one store: load claims, a leader, and the pod pool.

- ``StoreCoordinator`` (placement's Coordinator): a load is claimed by creating
  ``claims/<model id>`` in one transaction, under the replica's lease, so a
  replica that dies mid-load frees its claims when the lease expires. The
  leader holds ``leader`` under its lease; when the key goes (the leader
  stopped, or its lease ran out), every replica tries to create it and one wins.
- ``FailureBook``: failed loads shared by every replica, expired by the leader.
- ``PodPool``: mirrors ``pods/``, where runtime pods register themselves
  (gateway.pod.registration), into the placement table: a pod joins when its
  key appears, leaves when its lease expires, and its list of loaded models
  tells every replica about loads and evictions made by the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from gateway.core.errors import LoadFailed, ModelFormatError, StoreUnavailable
from gateway.core.placement import Placement
from gateway.store import Store
from gateway.store.sync import KeptLease, Mirror

log = logging.getLogger(__name__)

CLAIMS = "claims/"
FAILURES = "failures/"
LEADER = "leader"
PODS = "pods/"


def replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class StoreCoordinator:
    def __init__(self, store: Store, name: str | None = None, *, ttl: int = 5) -> None:
        self._store = store
        self.name = name or replica_name()
        self.lease = KeptLease(store, ttl, on_new=self._lease_renewed)
        self._mirror = Mirror(store, LEADER, self._leader_changed)
        self.leader_name = ""
        self._campaigning: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.lease.grant()
        await self._mirror.sync()
        if not self.leader_name:
            await self._campaign()

    async def run(self) -> None:
        await asyncio.gather(self.lease.run(), self._mirror.run())

    async def stop(self) -> None:
        """Give up the claims and the leadership at once (revoking the lease deletes them)."""
        await self.lease.revoke()

    async def claim(self, model_id: str) -> bool:
        return await self._store.create(
            CLAIMS + model_id, {"replica": self.name}, lease=self.lease.id
        )

    async def release(self, model_id: str) -> None:
        await self._store.delete(CLAIMS + model_id)

    def leader(self) -> bool:
        return self._mirror.connected and self.leader_name == self.name

    async def failed(self, model_id: str, pod: str, error: LoadFailed) -> None:
        await self._store.put(
            f"{FAILURES}{model_id}/{pod}",
            {
                "at": time.time(),
                "message": error.message,
                "format": isinstance(error, ModelFormatError),
                "replica": self.name,
            },
        )

    async def forgive(self, model_id: str, pod: str) -> None:
        await self._store.delete(f"{FAILURES}{model_id}/{pod}")

    def _leader_changed(self, _: str, old: Any, new: Any) -> None:
        self.leader_name = new["replica"] if new else ""
        if new and new["replica"] == self.name:
            log.info("this replica (%s) is the leader", self.name)
        elif new:
            log.info("the leader is %s", self.leader_name)
        elif self._campaigning is None or self._campaigning.done():
            self._campaigning = asyncio.ensure_future(self._campaign())

    async def _campaign(self) -> None:
        try:
            await self._store.create(LEADER, {"replica": self.name}, lease=self.lease.id)
        except (
            StoreUnavailable
        ) as exc:  # the mirror syncs when the store returns, and campaigns again
            log.warning("campaigning for leader: %s", exc.message)

    async def _lease_renewed(self, lease: int) -> None:
        if not self.leader_name:
            await self._campaign()


class PodPool:
    """The placement's pods, as they registered themselves in the store."""

    def __init__(self, store: Store, placement: Placement) -> None:
        self._placement = placement
        self.mirror = Mirror(store, PODS, self._changed)

    def _changed(self, name: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if old is not None and (new is None or new["address"] != old["address"]):
            log.info(
                "pod %s left the pool (%s)",
                name,
                "its registration expired" if new is None else "moved",
            )
            self._placement.remove_pod(old["address"])
        if new is not None:
            if old is None or old["address"] != new["address"]:
                log.info(
                    "pod %s joined the pool at %s (runtime %s)",
                    name,
                    new["address"],
                    new.get("runtime") or "any",
                )
            self._placement.add_pod(new["address"], name, new.get("runtime", ""))
            self._placement.observe(
                new["address"], new.get("models", {}), serving=new.get("serving", True)
            )

    def wake(self) -> None:
        """Health checks found pods ready: apply their registrations' model lists."""
        for record in self.mirror.items.values():
            self._placement.observe(
                record["address"], record.get("models", {}), serving=record.get("serving", True)
            )


class FailureBook:
    """Failed loads, shared: ``failures/<model id>/<pod>``, so no replica retries a pod that
    failed a model for another one; the leader deletes them when they expire."""

    def __init__(self, store: Store, placement: Placement) -> None:
        self._placement = placement
        self.mirror = Mirror(store, FAILURES, self._changed)

    def _changed(self, key: str, _: Any, new: dict[str, Any] | None) -> None:
        model_id, _, pod = key.rpartition("/")
        if new is None:
            self._placement.note_failure(model_id, pod, 0.0, None)
        else:
            kind = ModelFormatError if new.get("format") else LoadFailed
            self._placement.note_failure(
                model_id, pod, max(0.0, time.time() - new["at"]), kind(new["message"])
            )
