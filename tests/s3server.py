"""A real S3-compatible HTTP server on loopback for the storage tests: moto's server mode.

``S3Server`` starts moto on 127.0.0.1 and a free port, makes one IAM user whose
access key may use S3 (``entry()`` gives its storage-config entry), then turns
on moto's authentication: from then on, requests with an unknown key or a bad
secret are refused as S3 refuses them (InvalidAccessKeyId, SignatureDoesNotMatch).
moto keeps its state per process: one server at a time, each starting empty.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import boto3
import httpx
from moto.server import ThreadedMotoServer

from gateway.tools import launcher

_ALLOW_S3 = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
)


class S3Server:
    def __init__(self) -> None:
        self.port = launcher.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.access_key_id = ""
        self.secret_access_key = ""

    def __enter__(self) -> S3Server:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self._server.start()
        try:
            # moto's state belongs to the process: start from none, whatever a server before left
            httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()
            httpx.post(f"{self.endpoint}/moto-api/reset").raise_for_status()
            iam = boto3.client(
                "iam",
                endpoint_url=self.endpoint,
                region_name="us-east-1",
                aws_access_key_id="setup",
                aws_secret_access_key="setup",
            )
            iam.create_user(UserName="models")
            iam.put_user_policy(UserName="models", PolicyName="s3", PolicyDocument=_ALLOW_S3)
            key = iam.create_access_key(UserName="models")["AccessKey"]
            self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
            # Every request from now on is authenticated.
            httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
        except BaseException:
            self._server.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"inf")  # as moto starts
        self._server.stop()

    def entry(self, bucket: str = "models", **overrides: str) -> dict[str, str]:
        """A storage-config entry for this server, in ModelMesh's format."""
        return {
            "type": "s3",
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "endpoint_url": self.endpoint,
            "region": "us-east-1",
            "default_bucket": bucket,
            **overrides,
        }

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def upload(self, bucket: str, key: str, file: Path) -> None:
        client = self.client()
        if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=bucket)
        client.upload_file(str(file), bucket, key)


def storage_config_file(path: Path, entries: dict[str, dict[str, str]]) -> Path:
    """A storage-config file as the ``storage-config`` secret's stringData: key -> JSON string."""
    path.write_text(json.dumps({key: json.dumps(entry) for key, entry in entries.items()}))
    return path
