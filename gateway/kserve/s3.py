"""S3-compatible object storage through boto3: list a model's objects, download them.

Shared by the gateway (which lists, to predict a model's size) and the runtime
pods' puller (which downloads). A location names one object, or a folder: every
object under ``<path>/``. Failures become the core's storage errors, each
saying which location and what went wrong:

====================================================  =====================
S3 answer                                             error
====================================================  =====================
NoSuchBucket; no object at the path                   ModelNotInStorage
AccessDenied, InvalidAccessKeyId, SignatureDoesNot…   StorageAccessDenied
no credentials anywhere                               StorageAccessDenied
endpoint unreachable, timeouts, any other error       StorageFailure
====================================================  =====================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from gateway.core.errors import ModelNotInStorage, StorageAccessDenied, StorageFailure
from gateway.kserve.locations import S3Location

_DENIED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
)
_MISSING = frozenset({"NoSuchBucket", "NoSuchKey", "404", "NotFound"})


@dataclass(frozen=True, slots=True)
class S3Object:
    key: str
    size: int


def client(settings: Mapping[str, str], *, quick: bool = False) -> Any:
    """A boto3 S3 client for a storage-config entry (endpoint_url, region, access keys).

    ``quick``: short timeouts and a single attempt, for the gateway's size check.
    Path-style addressing, which S3-compatible servers (MinIO, Ceph, ...) expect.
    """
    config = Config(
        connect_timeout=2 if quick else 10,
        read_timeout=5 if quick else 60,
        retries={"max_attempts": 1 if quick else 3, "mode": "standard"},
        s3={"addressing_style": "path"},
        signature_version="s3v4",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.get("endpoint_url") or None,
        region_name=settings.get("region") or "us-east-1",
        aws_access_key_id=settings.get("access_key_id") or None,
        aws_secret_access_key=settings.get("secret_access_key") or None,
        config=config,
    )


def model_objects(s3: Any, location: S3Location) -> list[S3Object]:
    """The object at ``location.path``, else every object in the folder ``location.path/``."""
    folder = location.path.rstrip("/") + "/"
    exact: list[S3Object] = []
    inside: list[S3Object] = []
    with _errors(location):
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=location.bucket, Prefix=location.path
        ):
            for item in page.get("Contents", ()):
                obj = S3Object(item["Key"], int(item["Size"]))
                if obj.key == location.path:
                    exact.append(obj)
                elif obj.key.startswith(folder) and not obj.key.endswith("/"):
                    inside.append(obj)
    if exact:
        return exact
    if not inside:
        raise ModelNotInStorage(
            f"{location}: no such object or folder in bucket '{location.bucket}'"
        )
    return inside


def download(s3: Any, location: S3Location, objects: list[S3Object], into: Path) -> Path:
    """Download ``objects`` (from ``model_objects``) under the folder ``into``; the local path
    of the model: ``into/<last part of the path>``, a file or a folder as in the bucket."""
    name = PurePosixPath(location.path.rstrip("/")).name or "_model"
    target = into / name
    folder = location.path.rstrip("/") + "/"
    with _errors(location):
        for obj in objects:
            local = (
                target
                if obj.key == location.path
                else _within(target, obj.key.removeprefix(folder))
            )
            local.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(location.bucket, obj.key, str(local))
    return target


def _within(folder: Path, relative: str) -> Path:
    local = (folder / relative).resolve()
    if not local.is_relative_to(folder.resolve()):
        raise StorageFailure(f"object name {relative!r} leads outside the model's folder")
    return local


@contextlib.contextmanager
def _errors(where: S3Location) -> Iterator[None]:
    """Turn boto3's exceptions into the core's storage errors about ``where``."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = error.get("Message") or code
        if code == "NoSuchBucket":
            raise ModelNotInStorage(f"{where}: bucket '{where.bucket}' does not exist") from None
        if code in _MISSING:
            raise ModelNotInStorage(f"{where}: no such object ({message})") from None
        if code in _DENIED:
            raise StorageAccessDenied(f"{where}: access denied ({code}: {message})") from None
        raise StorageFailure(f"{where}: {code}: {message}") from None
    except NoCredentialsError:
        raise StorageAccessDenied(
            f"{where}: no credentials: give access_key_id and secret_access_key"
        ) from None
    except EndpointConnectionError as exc:
        raise StorageFailure(f"{where}: cannot reach the storage: {exc}") from None
    except BotoCoreError as exc:
        raise StorageFailure(f"{where}: {exc}") from None
