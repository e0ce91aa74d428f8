"""Where model files live: storage references resolved, checked and measured.

Two kinds of storage, as in KServe ModelMesh:

- **PVC.** A PVC name maps to a local folder by configuration (``--pvc
  NAME=DIR``), the stand-in for a Kubernetes PersistentVolumeClaim mounted into
  the pods. A model path must stay inside its folder: absolute paths, ``..``
  and links that lead out are refused.
- **S3-compatible.** ``storage.key`` names an entry of the storage
  configuration (ModelMesh's ``storage-config`` secret: each key maps to a JSON
  object ``{"type": "s3", "access_key_id", "secret_access_key",
  "endpoint_url", "region", "bucket" (or "default_bucket")}``).
  ``storage.parameters`` override the entry's fields (``bucket``, ...).
  Without a key (``storageUri: s3://bucket/path``, or parameters alone) the
  entry ``default_s3``, else ``default``, is used when there is one.

``StorageRoots.resolve`` checks a reference without any I/O but the PVC's
symlinks and gives a local ``Path`` or an ``S3Location``; ``measure`` gives the
bytes it holds. Only runtime pods move model bytes: an ``S3Location`` travels
to them in the LoadModel request (``model_path`` = the object path,
``model_key`` = ``S3Location.to_key()``, ModelMesh's ``storage_key`` and
``storage_params``), and the pod's puller (gateway.pod.puller) downloads it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from gateway.core.errors import StorageError
from gateway.kserve import s3
from gateway.kserve.locations import DEFAULT_KEY, Location, S3Location, StorageConfig, unknown_key
from gateway.kserve.resources import PredictorModel


@dataclass(frozen=True, slots=True)
class StorageRoots:
    pvcs: Mapping[str, Path]
    config: StorageConfig = field(default_factory=dict)

    def resolve(self, model: PredictorModel, what: str = "model path") -> Location:
        """Where ``model``'s files are; StorageError says why a reference cannot be used."""
        key, params, path = _reference(model)
        if key is not None:
            entry = self.config.get(key)
            if entry is None:
                raise StorageError(unknown_key(key, self.config))
        elif params.get("type") == "pvc":
            entry = {}
        else:
            kind = params.get("type")
            defaults = ([f"{DEFAULT_KEY}_{kind}"] if kind else []) + [DEFAULT_KEY]
            key = next((k for k in defaults if k in self.config), None)
            entry = self.config.get(key, {}) if key is not None else {}
        merged = {**entry, **params}
        kind = merged.get("type")
        if kind == "pvc":
            return self._pvc(merged, path, what)
        if kind == "s3":
            bucket = merged.get("bucket") or merged.get("default_bucket")
            if not bucket:
                source = f"storage key '{key}'" if key else "the storage parameters"
                raise StorageError(
                    f"no bucket: give storage.parameters.bucket, or a bucket in {source}"
                )
            object_path = path.lstrip("/")
            if not object_path:
                raise StorageError("storage.path must give the model's object path in the bucket")
            return S3Location(key, bucket, object_path, {**params, "type": "s3", "bucket": bucket})
        if kind is None:
            raise StorageError(
                "the storage has no type: give storage.parameters.type (pvc or s3) or a storage.key"
            )
        raise StorageError(f"storage type {kind!r} is not supported: use 'pvc' or 's3'")

    def _pvc(self, merged: Mapping[str, str], path: str, what: str) -> Path:
        pvc = merged.get("name")
        if not pvc:
            raise StorageError("storage.parameters.name must name the PVC")
        root = self.pvcs.get(pvc)
        if root is None:
            known = ", ".join(sorted(self.pvcs)) or "none"
            raise StorageError(f"unknown PVC '{pvc}' (configured PVCs: {known})")
        return _inside(root, path, pvc, what)

    def root_of(self, location: Path) -> Path | None:
        """The PVC folder holding ``location`` (a resolved PVC path), for the pods' own check."""
        for root in self.pvcs.values():
            if location.is_relative_to(root.resolve()):
                return root.resolve()
        return None

    def schema(self, model: PredictorModel) -> Path | None:
        """The file ModelMesh's ``storage.schemaPath`` names (the model's inputs and outputs,
        as JSON), found as ``storage.path`` is, in the same storage; None when there is none.
        StorageError as ``resolve`` says it (a path that leaves the PVC, ...), and for S3
        storage, not read there yet."""
        storage = model.storage
        if storage is None or not storage.schemaPath:
            return None
        moved = storage.model_copy(update={"path": storage.schemaPath})
        location = self.resolve(model.model_copy(update={"storage": moved}), "schema path")
        if not isinstance(location, Path):
            raise StorageError("storage.schemaPath is read from PVC storage only, not S3")
        return location

    async def measure(self, location: Location) -> int | None:
        """Bytes the model's files hold; None when a PVC path does not exist.

        StorageFailure (ModelNotInStorage, StorageAccessDenied, ...) when S3 does
        not list the objects. Blocking work runs in a worker thread.
        """
        if isinstance(location, Path):
            return await asyncio.to_thread(size_on_disk, location)
        settings = location.settings(self.config)
        objects = await asyncio.to_thread(
            s3.model_objects, s3.client(settings, quick=True), location
        )
        return sum(obj.size for obj in objects)


def _reference(model: PredictorModel) -> tuple[str | None, dict[str, str], str]:
    """(storage key, parameters, path) of the predictor's storage or storageUri."""
    storage = model.storage
    if storage is not None:
        if not storage.path:
            raise StorageError("storage.path must give the model's path in its storage")
        return storage.key, dict(storage.parameters), storage.path
    if model.storageUri:
        scheme, sep, rest = model.storageUri.partition("://")
        name, _, path = rest.partition("/")
        if sep and name and path and scheme == "pvc":
            return None, {"type": "pvc", "name": name}, path
        if sep and name and path and scheme == "s3":
            return None, {"type": "s3", "bucket": name}, path
        raise StorageError(
            f"storageUri {model.storageUri!r}: use pvc://<pvc-name>/<path> or s3://<bucket>/<path>"
        )
    raise StorageError(
        "the model has no storage: give storage (key or parameters, and path), or storageUri"
    )


def _inside(root: Path, path: str, pvc: str, what: str = "model path") -> Path:
    if "\x00" in path:
        raise StorageError(f"{what} {path!r} holds a NUL byte")
    relative = PurePosixPath(path)
    if relative.is_absolute() or not path.strip():
        raise StorageError(f"{what} {path!r} must be relative to PVC '{pvc}'")
    base = root.resolve()
    resolved = (base / relative).resolve()
    if not resolved.is_relative_to(base):
        raise StorageError(f"{what} {path!r} leaves PVC '{pvc}'")
    return resolved


def size_on_disk(path: Path) -> int | None:
    """Bytes of a file, or of every file under a folder; None if it does not exist."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def load_storage_config(source: Path) -> dict[str, dict[str, str]]:
    """A storage configuration, from any of the forms ModelMesh's ``storage-config`` secret takes.

    - a folder with one file per key, each holding the entry's JSON (the secret
      mounted as a volume, as ModelMesh's pods see it);
    - a YAML or JSON file mapping each key to the entry, as a JSON string or a
      mapping (the secret's ``stringData``);
    - the Secret document itself (``kind: Secret``, ``stringData`` and/or
      base64 ``data``).

    StorageError names the file and what is wrong with it.
    """
    if source.is_dir():
        raw: dict[str, Any] = {
            p.name: _read_text(p)
            for p in sorted(source.iterdir())
            if p.is_file() and not p.name.startswith(".")
        }
    else:
        try:
            document = yaml.safe_load(_read_text(source))
        except yaml.YAMLError as exc:
            raise StorageError(f"storage config {source}: not valid YAML or JSON: {exc}") from None
        if not isinstance(document, dict):
            raise StorageError(f"storage config {source}: must map storage keys to their entries")
        raw = _secret_data(document, source) if document.get("kind") == "Secret" else document
    return {
        str(key): _entry(value, f"storage config {source}, key '{key}'")
        for key, value in raw.items()
    }


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise StorageError(f"cannot read storage config {path}: {exc.strerror or exc}") from None


def _secret_data(secret: Mapping[str, Any], source: Path) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise StorageError(
                f"storage config {source}: data['{key}'] is not base64 of UTF-8 text"
            ) from None
    data.update(secret.get("stringData") or {})
    return data


def _entry(value: Any, where: str) -> dict[str, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise StorageError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise StorageError(f'{where}: must be a JSON object such as {{"type": "s3", ...}}')
    return {str(k): str(v) for k, v in value.items() if v is not None}
