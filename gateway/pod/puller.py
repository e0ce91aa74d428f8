"""The pod's puller: brings a model's files into the pod's cache folder before it loads.

As ModelMesh's puller sidecar does. A LoadModel request whose ``model_key``
names S3 storage (``gateway.kserve.storage.S3Location.to_key``) is downloaded into
``<cache>/<model id>/``, and the runtime gets that local path (and a
``model_key`` without the storage fields). The storage key is looked up in the
pod's own storage configuration (``mmgw pod --storage-config``): credentials
never travel in requests. Any other request names a local path (a PVC the
gateway already checked at apply): when the key names its PVC folder
(``pvc_root``), the path and everything under it must still resolve inside it
(``confine``, at each load), else the load fails naming the escape.

- A download goes to a hidden ``.partial-*`` folder first and is renamed into
  place only once complete: a failed or abandoned download leaves nothing.
- ``remove`` deletes a model's files (on unload and after a failed load).
- The cache folder belongs to the pod: ``clear`` empties it (at start and stop).
- Concurrent loads of one model share one attempt in the repository, so one
  download.

Errors (gateway.kserve.s3): ModelNotInStorage (NOT_FOUND on the wire),
StorageAccessDenied (PERMISSION_DENIED), StorageFailure (UNAVAILABLE), and
StorageError (an unknown storage key: INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from gateway.core.errors import ModelFormatError, StorageError
from gateway.kserve.locations import S3Location, StorageConfig

from .model import ModelConfig

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_STORAGE_FIELDS = ("storage_key", "storage_params", "bucket")


class Puller:
    """Downloads S3 models into ``cache``; checks local ones. Without a cache, local ones only."""

    def __init__(self, cache: Path | None, storage: StorageConfig) -> None:
        self.cache = cache
        self._storage = storage
        self._lock = threading.Lock()  # a download moving into place vs remove()

    def clear(self) -> None:
        """Empty the cache folder (create it if needed)."""
        if self.cache is None:
            return
        self.cache.mkdir(parents=True, exist_ok=True)
        for entry in self.cache.iterdir():
            _remove(entry)

    async def fetch(self, config: ModelConfig) -> ModelConfig:
        """``config`` with a local path whose files are there and readable."""
        location = S3Location.from_request(str(config.path), config.key)
        if location is None:
            root = pvc_root(config.key)
            if root is not None:
                await asyncio.to_thread(confine, config.path, root)
            return config
        abandoned = threading.Event()
        try:
            local = await asyncio.to_thread(self._download, config.model_id, location, abandoned)
        except BaseException:
            abandoned.set()  # a timeout or cancellation: the worker thread drops what it fetched
            raise
        return replace(config, path=local, key=_without_storage(config.key))

    def remove(self, model_id: str) -> None:
        if self.cache is None:
            return
        with self._lock:
            _remove(self.cache / _folder_name(model_id))

    def _download(self, model_id: str, location: S3Location, abandoned: threading.Event) -> Path:
        from gateway.kserve import s3

        settings = location.settings(self._storage)
        if self.cache is None:
            raise StorageError(f"{location}: this pod has no model cache to download into")
        client = s3.client(settings)
        objects = s3.model_objects(client, location)
        self.cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.cache))
        try:
            local = s3.download(client, location, objects, partial)
            final = self.cache / _folder_name(model_id)
            with self._lock:
                if abandoned.is_set():
                    raise TimeoutError(f"the download of {location} was abandoned")
                _remove(final)
                partial.rename(final)
        finally:
            _remove(partial)
        log.info(
            "pulled %s: %d object(s), %d bytes, into %s",
            location,
            len(objects),
            sum(o.size for o in objects),
            final,
        )
        return final / local.relative_to(partial)


def pvc_root(key: str) -> Path | None:
    """The PVC folder the gateway names in the load's key (``{"pvc_root": ...}``), if any."""
    try:
        data = json.loads(key) if key else None
    except json.JSONDecodeError:
        return None
    root = data.get("pvc_root") if isinstance(data, dict) else None
    return Path(root) if isinstance(root, str) and root else None


def confine(path: Path, root: Path) -> None:
    """ModelFormatError unless ``path``, and every file and folder under it, resolves inside
    ``root``: checked at each load, not only at apply, so a symlink or a file swapped in
    after the gateway checked the path cannot make the pod read outside the PVC."""
    base = root.resolve()
    entries = [path]
    if path.is_dir() and not path.is_symlink():
        entries += list(path.rglob("*"))
    for entry in entries:
        resolved = entry.resolve()
        if not resolved.is_relative_to(base):
            raise ModelFormatError(
                f"model file '{entry}' resolves to '{resolved}', outside its PVC folder '{base}': "
                "refused"
            )


def _folder_name(model_id: str) -> str:
    if _SAFE_NAME.fullmatch(model_id) and model_id not in (".", ".."):
        return model_id
    return hashlib.sha256(model_id.encode()).hexdigest()


def _without_storage(key: str) -> str:
    """The runtime's model_key: the storage fields are the puller's, as in ModelMesh."""
    data = json.loads(key)
    rest = {k: v for k, v in data.items() if k not in _STORAGE_FIELDS}
    return json.dumps(rest) if rest else ""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
