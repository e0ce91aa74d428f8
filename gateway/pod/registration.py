"""A runtime pod registers itself in the shared store, under a lease it keeps alive.

The key ``pods/<pod id>`` holds the pod's address, its ServingRuntime, its
capacity and model types, the models it holds with their sizes, and whether it can
serve now (``serving``: False while an MLServer pod's MLServer is down); it is
written again whenever these change. Gateways mirror ``pods/``
(gateway.control.replicas.PodPool): a pod joins the pool when its key appears and
leaves when its lease expires (it stopped heart-beating) or it stops and
revokes the lease. The same code runs against etcd and the embedded store.

If the store is down, the pod goes on serving and tries again; a lease that
expired meanwhile is replaced and the key written anew.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from gateway.core.errors import StoreUnavailable
from gateway.store import Store
from gateway.store.sync import KeptLease

from .repository import ModelRepository
from .settings import PodSettings, bracketed

log = logging.getLogger(__name__)

PODS = "pods/"


def pod_info(settings: PodSettings, port: int | None, model_types: Iterable[str]) -> dict[str, Any]:
    """What a pod listening on ``port`` tells gateways about itself: its address (the one
    given to advertise, else its host's, this host's own IP for a wildcard), its runtime,
    its capacity and its model types."""
    host = settings.host
    if host in ("0.0.0.0", "::", "[::]"):
        host = socket.gethostbyname(socket.gethostname())
    return {
        "address": settings.advertise or f"{bracketed(host)}:{port}",
        "runtime": settings.runtime_name,
        "capacity": settings.capacity_bytes,
        "model_types": list(model_types),
    }


class Registration:
    def __init__(
        self,
        store: Store,
        pod_id: str,
        info: dict[str, Any],
        models: ModelRepository,
        *,
        ttl: int = 5,
        retry: float = 0.5,
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._key = PODS + pod_id
        self._info = info
        self._models = models
        self._retry = retry
        self._serving = serving  # False while the pod cannot serve (its MLServer is down)
        self.lease = KeptLease(store, ttl, on_new=lambda _: self._write())
        self._dirty = asyncio.Event()

    def record(self) -> dict[str, Any]:
        return {
            **self._info,
            "models": {m.model_id: m.size_bytes for m in self._models.loaded()},
            "serving": self._serving(),
        }

    async def run(self) -> None:
        """Register, then keep the lease alive and the key current until cancelled."""
        self._models.on_change = self._dirty.set
        keeper: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    if not self.lease.id:
                        await self.lease.grant()
                        log.info("registered as %s in %s", self._key, self._store.description)
                        keeper = keeper or asyncio.create_task(self.lease.run(), name="pod lease")
                    self._dirty.clear()
                    await self._write()
                except StoreUnavailable as exc:
                    log.warning("registering in the store: %s; retrying", exc.message)
                    await asyncio.sleep(self._retry)
                    continue
                await self._dirty.wait()
        finally:
            if keeper is not None:
                keeper.cancel()
            await self.lease.revoke()

    async def _write(self) -> None:
        await self._store.put(self._key, self.record(), lease=self.lease.id)
