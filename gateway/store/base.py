"""Shared key-value storage: the registry, pod membership and load claims.

Two stores behind one interface, as ModelMesh keeps its tables in etcd:

- ``EmbeddedStore``: one SQLite file under the data folder; nothing to install.
  Several processes on one machine may open it (the gateway and the pods that
  register in it); leases expire by the clock, and a watch reads a change log.
- ``gateway.store.etcd.EtcdStore``: etcd 3, for several gateway replicas.

Keys are strings such as ``inferenceservices/sklearn-mnist``; values are JSON.
Every write has a revision; ``snapshot`` returns a prefix's items and the
revision they are current at, and ``watch`` yields every change after it, so
a reader never misses one. A store that cannot be reached raises
StoreUnavailable, whose message names it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.core.errors import StoreUnavailable


class Compacted(StoreUnavailable):
    """A watch asked for changes older than the store still keeps: read a new snapshot."""


@dataclass(frozen=True, slots=True)
class Change:
    key: str
    value: Any | None  # None: deleted
    revision: int


class Store(Protocol):
    description: str  # for messages: "etcd at 10.0.0.5:2379"

    async def items(self, prefix: str) -> dict[str, Any]: ...

    async def snapshot(self, prefix: str) -> tuple[dict[str, Any], int]: ...

    def watch(self, prefix: str, revision: int) -> AsyncIterator[Change]: ...

    async def put(self, key: str, value: Any, *, lease: int = 0) -> None: ...

    async def create(self, key: str, value: Any, *, lease: int = 0) -> bool: ...

    async def delete(self, key: str) -> None: ...

    async def grant(self, ttl: int) -> int: ...

    async def keepalive(self, lease: int) -> bool: ...

    async def revoke(self, lease: int) -> None: ...

    async def close(self) -> None: ...
