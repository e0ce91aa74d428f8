"""Staying in step with the shared store: mirrored prefixes and kept-alive leases.

``Mirror`` copies one prefix of the store into memory and keeps it current
with a watch; every difference reaches ``on_change(key, old, new)``. When the
store goes away it keeps the last copy (requests go on being served from it),
and when the store returns it reads a fresh snapshot and reports what changed
meanwhile: replicas catch up without a restart.

``KeptLease`` is a lease renewed in the background. If it expired anyway (the
store was down longer than its TTL), a new one is granted and ``on_new``
writes the owner's keys again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.core.errors import StoreUnavailable
from gateway.store.base import Store

log = logging.getLogger(__name__)

OnChange = Callable[
    [str, Any, Any], None
]  # key without the prefix, old value, new value (None: absent)


class Mirror:
    def __init__(
        self, store: Store, prefix: str, on_change: OnChange, *, retry: float = 0.5
    ) -> None:
        self._store = store
        self.prefix = prefix
        self._on_change = on_change
        self._retry = retry
        self.items: dict[str, Any] = {}
        self.connected = False
        self._revision = 0

    async def sync(self) -> None:
        """Read the prefix afresh and report every difference from the copy held."""
        found, self._revision = await self._store.snapshot(self.prefix)
        fresh = {key.removeprefix(self.prefix): value for key, value in found.items()}
        old, self.items = self.items, fresh
        for key in sorted(old.keys() | fresh.keys()):
            if old.get(key) != fresh.get(key):
                self._on_change(key, old.get(key), fresh.get(key))
        self.connected = True

    async def run(self) -> None:
        """Follow the store forever; after a failure, sync again once it answers."""
        while True:
            try:
                if not self.connected:
                    await self.sync()
                    log.info("%s: in step again with %s", self.prefix, self._store.description)
                async for change in self._store.watch(self.prefix, self._revision):
                    self._revision = change.revision
                    key = change.key.removeprefix(self.prefix)
                    old = self.items.get(key)
                    if change.value is None:
                        self.items.pop(key, None)
                    else:
                        self.items[key] = change.value
                    if old != change.value:
                        self._on_change(key, old, change.value)
            except StoreUnavailable as exc:
                if self.connected:
                    log.warning("%s: %s; serving from the last copy", self.prefix, exc.message)
                self.connected = False
                await asyncio.sleep(self._retry)


class KeptLease:
    """A lease of ``ttl`` seconds renewed every third of it while ``run`` runs."""

    def __init__(
        self, store: Store, ttl: int, on_new: Callable[[int], Awaitable[None]] | None = None
    ) -> None:
        self._store = store
        self.ttl = ttl
        self._on_new = on_new
        self.id = 0

    async def grant(self) -> int:
        self.id = await self._store.grant(self.ttl)
        return self.id

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                if not self.id or not await self._store.keepalive(self.id):
                    log.warning(
                        "lease expired (%s was unreachable too long): taking a new one",
                        self._store.description,
                    )
                    await self.grant()
                    if self._on_new is not None:
                        await self._on_new(self.id)
            except StoreUnavailable as exc:
                log.warning("renewing the lease: %s", exc.message)

    async def revoke(self) -> None:
        if self.id:
            lease, self.id = self.id, 0
            try:
                await self._store.revoke(lease)
            except StoreUnavailable as exc:
                log.warning("revoking the lease: %s", exc.message)
