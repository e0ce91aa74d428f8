"""The etcd 3 store (gateway.store.embedded's interface), over the aetcd asyncio client.

Keys live under ``/mmgw/``; values are JSON. Every call has a deadline, and any
failure to reach etcd becomes StoreUnavailable naming the endpoint, which the
API answers with 503 and the ext_proc with UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aetcd
import grpc

from gateway.core.errors import StoreUnavailable
from gateway.store.base import Change, Compacted

_ROOT = "/mmgw/"


class EtcdStore:
    def __init__(self, host: str, port: int, *, timeout: float = 2.0) -> None:
        self.description = f"etcd at {host}:{port}"
        self._client = aetcd.Client(host, port, timeout=timeout)

    @classmethod
    def from_url(cls, url: str) -> EtcdStore:
        endpoint = url.removeprefix("etcd://").rstrip("/")
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"store {url!r}: use etcd://HOST:PORT")
        return cls(host, int(port))

    async def items(self, prefix: str) -> dict[str, Any]:
        return (await self.snapshot(prefix))[0]

    async def snapshot(self, prefix: str) -> tuple[dict[str, Any], int]:
        with self._errors():
            found = await self._client.get_prefix(_key(prefix))
        items = {kv.key.decode()[len(_ROOT) :]: json.loads(kv.value) for kv in found}
        return items, found.header.revision

    async def watch(self, prefix: str, revision: int) -> AsyncIterator[Change]:
        with self._errors():
            watch = await self._client.watch_prefix(_key(prefix), start_revision=revision + 1)
        try:
            with self._errors():
                async for event in watch:
                    key = event.kv.key.decode()[len(_ROOT) :]
                    value = (
                        json.loads(event.kv.value) if event.kind == aetcd.EventKind.PUT else None
                    )
                    yield Change(key, value, event.kv.mod_revision)
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()

    async def put(self, key: str, value: Any, *, lease: int = 0) -> None:
        with self._errors():
            await self._client.put(_key(key), _value(value), lease=lease or None)

    async def create(self, key: str, value: Any, *, lease: int = 0) -> bool:
        txn = self._client.transactions
        with self._errors():
            succeeded, _ = await self._client.transaction(
                compare=[txn.create(_key(key)) == 0],
                success=[txn.put(_key(key), _value(value), lease or None)],
                failure=[],
            )
        return bool(succeeded)

    async def delete(self, key: str) -> None:
        with self._errors():
            await self._client.delete(_key(key))

    async def grant(self, ttl: int) -> int:
        with self._errors():
            return int((await self._client.lease(ttl)).id)

    async def keepalive(self, lease: int) -> bool:
        with self._errors():
            reply = await self._client.refresh_lease(lease)
        return reply is not None and reply.TTL > 0

    async def revoke(self, lease: int) -> None:
        with self._errors():
            await self._client.revoke_lease(lease)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except aetcd.RevisionCompactedError as exc:
            raise Compacted(f"{self.description}: {exc}") from exc
        except (aetcd.ClientError, grpc.RpcError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{self.description} is unavailable: {_reason(exc)}") from exc


def _key(key: str) -> bytes:
    return (_ROOT + key).encode()


def _value(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "details"):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
