"""Both stores behind one interface: the embedded SQLite store and a real etcd.

Each test runs against each store; etcd is Debian's etcd-server on loopback
ports (gateway.tools.launcher.EtcdServer), with a fresh data folder per module.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.core.errors import StoreUnavailable
from gateway.store import Change, EmbeddedStore, Store, open_store
from gateway.store.sync import KeptLease, Mirror
from gateway.tools.launcher import EtcdServer, free_port


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture(params=["embedded", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "embedded":
        opened: Store = EmbeddedStore(tmp_path / "registry.db")
    else:
        opened = open_store(request.getfixturevalue("etcd").url, tmp_path)
    prefix = f"t{free_port()}/"  # etcd is shared by the module: each test its own keys
    yield _Prefixed(opened, prefix)
    await opened.close()


class _Prefixed:
    """The store with every key under one test's prefix."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.inner, self.prefix = store, prefix
        self.description = store.description

    async def items(self, prefix: str) -> dict[str, Any]:
        return {
            k.removeprefix(self.prefix): v
            for k, v in (await self.inner.items(self.prefix + prefix)).items()
        }

    async def snapshot(self, prefix: str) -> tuple[dict[str, Any], int]:
        items, revision = await self.inner.snapshot(self.prefix + prefix)
        return {k.removeprefix(self.prefix): v for k, v in items.items()}, revision

    async def watch(self, prefix: str, revision: int) -> AsyncIterator[Change]:
        async for change in self.inner.watch(self.prefix + prefix, revision):
            yield Change(change.key.removeprefix(self.prefix), change.value, change.revision)

    async def put(self, key: str, value: Any, *, lease: int = 0) -> None:
        await self.inner.put(self.prefix + key, value, lease=lease)

    async def create(self, key: str, value: Any, *, lease: int = 0) -> bool:
        return await self.inner.create(self.prefix + key, value, lease=lease)

    async def delete(self, key: str) -> None:
        await self.inner.delete(self.prefix + key)

    async def grant(self, ttl: int) -> int:
        return await self.inner.grant(ttl)

    async def keepalive(self, lease: int) -> bool:
        return await self.inner.keepalive(lease)

    async def revoke(self, lease: int) -> None:
        await self.inner.revoke(lease)

    async def close(self) -> None:
        await self.inner.close()


async def test_put_items_delete(store: Store) -> None:
    await store.put("isvc/a", {"x": 1})
    await store.put("isvc/b", [1, 2])
    await store.put("other/c", "c")
    assert await store.items("isvc/") == {"isvc/a": {"x": 1}, "isvc/b": [1, 2]}
    await store.delete("isvc/a")
    await store.delete("isvc/missing")  # nothing to delete is fine
    assert await store.items("isvc/") == {"isvc/b": [1, 2]}


async def test_create_succeeds_once(store: Store) -> None:
    assert await store.create("claims/m", {"replica": "one"})
    assert not await store.create("claims/m", {"replica": "two"})
    assert await store.items("claims/") == {"claims/m": {"replica": "one"}}
    await store.delete("claims/m")
    assert await store.create("claims/m", {"replica": "two"})


async def test_a_watch_sees_every_change_after_the_snapshot(store: Store) -> None:
    await store.put("w/before", 0)
    items, revision = await store.snapshot("w/")
    assert items == {"w/before": 0}
    await store.put("w/a", 1)
    await store.put("x/elsewhere", 1)
    await store.delete("w/before")
    seen: list[tuple[str, Any]] = []
    async with asyncio.timeout(5):
        async for change in store.watch("w/", revision):
            seen.append((change.key, change.value))
            if len(seen) == 2:
                break
    assert seen == [("w/a", 1), ("w/before", None)]


async def test_keys_under_a_revoked_lease_are_deleted(store: Store) -> None:
    lease = await store.grant(30)
    await store.put("pods/p", {"address": "a"}, lease=lease)
    assert await store.keepalive(lease)
    await store.revoke(lease)
    assert await store.items("pods/") == {}
    assert not await store.keepalive(lease)


async def test_keys_under_an_expired_lease_are_deleted(store: Store) -> None:
    lease = await store.grant(1)
    await store.put("pods/p", {"address": "a"}, lease=lease)
    async with asyncio.timeout(
        10
    ):  # etcd checks expiry on its own schedule: a little after the TTL
        while await store.items("pods/"):
            await asyncio.sleep(0.1)


async def test_a_mirror_follows_changes_and_reports_differences(store: Store) -> None:
    changes: list[tuple[str, Any, Any]] = []
    mirror = Mirror(store, "m/", lambda key, old, new: changes.append((key, old, new)))
    await store.put("m/a", 1)
    await mirror.sync()
    assert changes == [("a", None, 1)]
    running = asyncio.create_task(mirror.run())
    try:
        await store.put("m/a", 2)
        await store.delete("m/a")
        async with asyncio.timeout(5):
            while len(changes) < 3:
                await asyncio.sleep(0.02)
        assert changes[1:] == [("a", 1, 2), ("a", 2, None)]
        assert mirror.items == {}
    finally:
        running.cancel()


async def test_a_kept_lease_outlives_its_ttl(store: Store) -> None:
    lease = KeptLease(store, 1)
    await lease.grant()
    await store.put("k/p", 1, lease=lease.id)
    keeping = asyncio.create_task(lease.run())
    try:
        await asyncio.sleep(2.5)
        assert await store.items("k/") == {"k/p": 1}
    finally:
        keeping.cancel()
        await lease.revoke()
    assert await store.items("k/") == {}


async def test_an_unreachable_etcd_raises_store_unavailable_naming_it(tmp_path: Path) -> None:
    port = free_port()
    store = open_store(f"etcd://127.0.0.1:{port}", tmp_path)
    try:
        with pytest.raises(StoreUnavailable, match=f"etcd at 127.0.0.1:{port} is unavailable"):
            await store.put("a", 1)
    finally:
        await store.close()


def test_a_store_url_that_is_neither_embedded_nor_etcd_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use 'embedded' or etcd://HOST:PORT"):
        open_store("redis://x", tmp_path)
    with pytest.raises(ValueError, match="etcd://HOST:PORT"):
        open_store("etcd://nohost", tmp_path)


def _open_and_put(path: str, key: str, go: Any) -> None:
    go.wait(60)

    async def run() -> None:
        store = EmbeddedStore(Path(path))
        await store.put(key, {"by": key})
        await store.close()

    asyncio.run(run())


def test_processes_opening_one_new_folder_at_once_all_start(tmp_path: Path) -> None:
    # Pods and the gateway open the same data folder at the same moment.
    path = str(tmp_path / "registry.db")
    context = multiprocessing.get_context("spawn")
    for attempt in range(5):
        target, go = f"{path}.{attempt}", context.Event()
        workers = [
            context.Process(target=_open_and_put, args=(target, f"k{i}", go)) for i in range(6)
        ]
        for worker in workers:
            worker.start()
        time.sleep(1.0)  # all six started (spawned and imported) and waiting
        go.set()
        for worker in workers:
            worker.join(60)
        assert [worker.exitcode for worker in workers] == [0] * 6
        store = EmbeddedStore(Path(target))
        assert asyncio.run(store.items("k")) == {f"k{i}": {"by": f"k{i}"} for i in range(6)}


async def test_a_data_folder_from_before_leases_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    old.execute("INSERT INTO kv VALUES ('models/a', '{\"x\": 1}')")
    old.commit()
    old.close()
    store = EmbeddedStore(path)
    assert await store.items("models/") == {"models/a": {"x": 1}}
    lease = await store.grant(60)
    await store.put("pods/p", 1, lease=lease)
    await store.revoke(lease)
    assert await store.items("") == {"models/a": {"x": 1}}
    await store.close()
