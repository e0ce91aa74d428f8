"""Where a model's files are: a local path (a PVC's folder) or an S3 location.

The types gateway.kserve.storage resolves references to, the S3 client
(gateway.kserve.s3) reads and the pods' puller downloads from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.core.errors import StorageError

# storage key -> the entry's fields ("type", "endpoint_url", ...)
StorageConfig = Mapping[str, Mapping[str, str]]

DEFAULT_KEY = "default"


@dataclass(frozen=True, slots=True)
class S3Location:
    """An object (or a folder of objects under a prefix) in an S3-compatible bucket."""

    storage_key: str | None  # the storage-config entry with the endpoint and credentials
    bucket: str
    path: str  # object key, or the prefix of a folder of objects
    # the InferenceService's storage.parameters, with type and bucket filled in
    params: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        key = f" (storage key '{self.storage_key}')" if self.storage_key else ""
        return f"s3://{self.bucket}/{self.path}{key}"

    def to_key(self) -> str:
        """The LoadModel ``model_key`` JSON a pod's puller reads (ModelMesh's fields)."""
        return json.dumps(
            {"storage_key": self.storage_key, "storage_params": dict(self.params)}, sort_keys=True
        )

    @classmethod
    def from_request(cls, path: str, key: str) -> S3Location | None:
        """The location a LoadModel request names; None when it names a local path."""
        try:
            data = json.loads(key) if key else None
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("storage_params"), dict):
            return None
        params = {str(k): str(v) for k, v in data["storage_params"].items()}
        if params.get("type") != "s3":
            return None
        storage_key = data.get("storage_key")
        if not params.get("bucket"):
            raise StorageError("model_key: storage_params.bucket must name the bucket")
        return cls(str(storage_key) if storage_key else None, params["bucket"], path, params)

    def settings(self, config: StorageConfig) -> dict[str, str]:
        """The entry of ``config`` this location names, with its parameters applied over it."""
        entry: Mapping[str, str] = {}
        if self.storage_key is not None:
            found = config.get(self.storage_key)
            if found is None:
                raise StorageError(unknown_key(self.storage_key, config))
            entry = found
        return {**entry, **self.params}


Location = Path | S3Location


def unknown_key(key: str, config: StorageConfig) -> str:
    known = ", ".join(sorted(config)) or "none"
    return f"unknown storage key '{key}' (the storage config has: {known})"
