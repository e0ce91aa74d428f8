"""The embedded store: one SQLite file under the data folder (gateway.store.base's interface).

Nothing to install. Several processes on one machine may open it (the gateway
and the pods that register in it); leases expire by the clock, and a watch
reads a change log.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.store.base import Change, Compacted

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, lease INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS leases"
    " (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL, expires REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, value TEXT)",
)
_KEEP_LOG = 10_000  # changes kept for watchers; a watcher further behind reads a new snapshot


class EmbeddedStore:
    """SQLite in WAL mode; each write is one transaction that also appends to the change log."""

    def __init__(self, path: Path, *, poll_interval: float = 0.05) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.description = f"the embedded store {path}"
        self._poll = poll_interval
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._enter_wal(deadline=time.monotonic() + 10.0)
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Pods and gateways open one folder at once: schema and migration in one write transaction.
        with self._transaction():
            for statement in _SCHEMA:
                self._db.execute(statement)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(kv)")}
            if "lease" not in columns:  # a data folder from before leases
                self._db.execute("ALTER TABLE kv ADD COLUMN lease INTEGER NOT NULL DEFAULT 0")

    def _enter_wal(self, deadline: float) -> None:
        # Switching a new file to WAL can answer "database is locked" at once, without
        # waiting on the busy timeout, while another process switches it: try again.
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    async def items(self, prefix: str) -> dict[str, Any]:
        return (await self.snapshot(prefix))[0]

    async def snapshot(self, prefix: str) -> tuple[dict[str, Any], int]:
        with self._transaction():
            self._expire()
            rows = self._db.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, prefix + "\uffff"),
            ).fetchall()
            revision = self._revision()
        return {key: json.loads(value) for key, value in rows}, revision

    async def watch(self, prefix: str, revision: int) -> AsyncIterator[Change]:
        while True:
            with self._transaction():
                self._expire()
                oldest = self._db.execute("SELECT min(seq) FROM log").fetchone()[0]
                rows = self._db.execute(
                    "SELECT seq, key, value FROM log WHERE seq > ? AND key >= ? AND key < ? ORDER BY seq",
                    (revision, prefix, prefix + "\uffff"),
                ).fetchall()
            if oldest is not None and oldest > revision + 1 and revision < self._revision():
                raise Compacted(f"{self.description}: changes after revision {revision} are gone")
            for seq, key, value in rows:
                revision = seq
                yield Change(key, None if value is None else json.loads(value), seq)
            if not rows:
                await asyncio.sleep(self._poll)

    async def put(self, key: str, value: Any, *, lease: int = 0) -> None:
        with self._transaction():
            self._put(key, json.dumps(value, sort_keys=True), lease)

    async def create(self, key: str, value: Any, *, lease: int = 0) -> bool:
        with self._transaction():
            self._expire()
            if self._db.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone():
                return False
            self._put(key, json.dumps(value, sort_keys=True), lease)
            return True

    async def delete(self, key: str) -> None:
        with self._transaction():
            self._delete(key)

    async def grant(self, ttl: int) -> int:
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO leases (ttl, expires) VALUES (?, ?)", (ttl, time.time() + ttl)
            )
            return int(cursor.lastrowid or 0)

    async def keepalive(self, lease: int) -> bool:
        with self._transaction():
            self._expire()
            cursor = self._db.execute(
                "UPDATE leases SET expires = ? + ttl WHERE id = ?", (time.time(), lease)
            )
            return cursor.rowcount == 1

    async def revoke(self, lease: int) -> None:
        with self._transaction():
            self._drop_leases([lease])

    async def close(self) -> None:
        self._db.close()

    # -- inside a transaction ---------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _revision(self) -> int:
        return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM log").fetchone()[0])

    def _put(self, key: str, text: str, lease: int) -> None:
        self._db.execute(
            "INSERT INTO kv (key, value, lease) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, lease = excluded.lease",
            (key, text, lease),
        )
        self._log(key, text)

    def _delete(self, key: str) -> None:
        if self._db.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount:
            self._log(key, None)

    def _log(self, key: str, text: str | None) -> None:
        seq = (
            self._db.execute("INSERT INTO log (key, value) VALUES (?, ?)", (key, text)).lastrowid
            or 0
        )
        if seq % 1000 == 0:
            self._db.execute("DELETE FROM log WHERE seq <= ?", (seq - _KEEP_LOG,))

    def _expire(self) -> None:
        expired = [
            row[0]
            for row in self._db.execute("SELECT id FROM leases WHERE expires < ?", (time.time(),))
        ]
        if expired:
            self._drop_leases(expired)

    def _drop_leases(self, leases: list[int]) -> None:
        marks = ",".join("?" * len(leases))
        for (key,) in self._db.execute(
            f"SELECT key FROM kv WHERE lease IN ({marks})", leases
        ).fetchall():
            self._delete(key)
        self._db.execute(f"DELETE FROM leases WHERE id IN ({marks})", leases)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time across processes."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if kind is not None else "COMMIT")
