"""Where model files live: storage references resolved to local paths.

A PVC name maps to a local folder by configuration (``--pvc NAME=DIR``), the
stand-in for a Kubernetes PersistentVolumeClaim mounted into the pods. A model
path must stay inside its folder: absolute paths, ``..`` and links that lead
out are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gateway.errors import StorageError
from gateway.resources import PredictorModel


@dataclass(frozen=True, slots=True)
class StorageRoots:
    pvcs: Mapping[str, Path]

    def resolve(self, model: PredictorModel) -> Path:
        """The local path of ``model``'s file or folder; StorageError if it is not allowed."""
        pvc, path = self._reference(model)
        root = self.pvcs.get(pvc)
        if root is None:
            known = ", ".join(sorted(self.pvcs)) or "none"
            raise StorageError(f"unknown PVC '{pvc}' (configured PVCs: {known})")
        return _inside(root, path, pvc)

    def _reference(self, model: PredictorModel) -> tuple[str, str]:
        storage = model.storage
        if storage is not None:
            kind = storage.parameters.get("type")
            if storage.key and kind is None:
                raise StorageError(f"storage key '{storage.key}': only PVC storage is supported so far")
            if kind != "pvc":
                raise StorageError(f"storage type {kind!r} is not supported: use type 'pvc'")
            name = storage.parameters.get("name")
            if not name:
                raise StorageError("storage.parameters.name must name the PVC")
            if not storage.path:
                raise StorageError("storage.path must give the model's path inside the PVC")
            return name, storage.path
        if model.storageUri:
            scheme, sep, rest = model.storageUri.partition("://")
            if scheme != "pvc" or not sep or "/" not in rest:
                raise StorageError(f"storageUri {model.storageUri!r}: use pvc://<pvc-name>/<path>")
            name, _, path = rest.partition("/")
            return name, path
        raise StorageError("the model has no storage: give storage.parameters + storage.path, or storageUri")


def _inside(root: Path, path: str, pvc: str) -> Path:
    relative = PurePosixPath(path)
    if relative.is_absolute() or not path.strip():
        raise StorageError(f"model path {path!r} must be relative to PVC '{pvc}'")
    base = root.resolve()
    resolved = (base / relative).resolve()
    if not resolved.is_relative_to(base):
        raise StorageError(f"model path {path!r} leaves PVC '{pvc}'")
    return resolved


def size_on_disk(path: Path) -> int | None:
    """Bytes of a file, or of every file under a folder; None if it does not exist."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None
