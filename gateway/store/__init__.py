"""Shared key-value storage: the registry, pod membership and load claims.

``open_store`` gives the store a setting names; the interface is
gateway.store.base, the two stores gateway.store.embedded (SQLite) and
gateway.store.etcd (etcd 3), and gateway.store.sync keeps a process in step
with one (mirrors, kept leases).
"""

from __future__ import annotations

from pathlib import Path

from gateway.store.base import Change, Compacted, Store
from gateway.store.embedded import EmbeddedStore

__all__ = ["Change", "Compacted", "EmbeddedStore", "Store", "open_store"]


def open_store(url: str, data_dir: Path) -> Store:
    """The store a setting names: ``embedded`` or ``etcd://host:port``."""
    if url == "embedded":
        return EmbeddedStore(data_dir / "registry.db")
    if url.startswith("etcd://"):
        from gateway.store.etcd import EtcdStore  # aetcd only when etcd is used

        return EtcdStore.from_url(url)
    raise ValueError(f"store {url!r}: use 'embedded' or etcd://HOST:PORT")
