"""The management API as the CLI speaks to it: the HTTP client, resource kinds and names,
and the documents ``-f`` names (files, stdin, folders)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from gateway.kserve import documents as kserve_documents

DEFAULT_SERVER = "http://127.0.0.1:8080"
RUNTIMES_API = "/apis/serving.kserve.io/v1alpha1"  # ServingRuntime and ClusterServingRuntime
ISVC_NAMES = ("isvc", "inferenceservice", "inferenceservices")
SR_NAMES = ("sr", "servingruntime", "servingruntimes")
CSR_NAMES = ("csr", "clusterservingruntime", "clusterservingruntimes")
EXPERIMENT_NAMES = ("experiment", "experiments")
# kind -> (the kubectl-style type printed, the order apply sends it in)
KINDS = {
    "ClusterServingRuntime": ("clusterservingruntime.serving.kserve.io", 0),
    "ServingRuntime": ("servingruntime.serving.kserve.io", 1),
    "InferenceService": ("inferenceservice.serving.kserve.io", 2),
    # after the InferenceServices: an Experiment's candidates must exist
    "Experiment": ("experiment.mlops.seldon.io", 3),
}


class CliError(Exception):
    """Printed as 'error: ...' with exit status 1."""


class Client:
    def __init__(self, server: str, namespace: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = httpx.Client(base_url=server, timeout=30, headers=headers)
        self._server = server
        namespaces = "/apis/serving.kserve.io/v1beta1/namespaces"
        self.isvcs = f"{namespaces}/{quote(namespace, safe='')}/inferenceservices"
        self.collections = {
            "InferenceService": self.isvcs,
            "ServingRuntime": f"{RUNTIMES_API}/namespaces/{quote(namespace, safe='')}/servingruntimes",
            "ClusterServingRuntime": f"{RUNTIMES_API}/clusterservingruntimes",
            "Experiment": f"/apis/mlops.seldon.io/v1alpha1/namespaces/{quote(namespace, safe='')}/experiments",
        }
        self.events = f"/api/v1/namespaces/{quote(namespace, safe='')}/events"

    def isvc(self, name: str) -> str:
        return f"{self.isvcs}/{quote(name, safe='')}"

    def path(self, kind: str, name: str | None = None) -> str:
        return self.collections[kind] + ("" if name is None else f"/{quote(name, safe='')}")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the management API at {self._server} ({exc}); is `mmgw serve` or `make demo` running?"
            ) from None
        if response.status_code >= 400:
            reason, message = response.reason_phrase, response.text
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict):  # a Kubernetes Status, or FastAPI's {"detail": ...}
                reason = body.get("reason") or reason
                message = body.get("message") or body.get("detail") or message
            raise CliError(f"Error from server ({reason}): {message}")
        return response


def check_name(name: object, kind: str = "InferenceService") -> str:
    """``name`` if valid for ``kind`` (an RFC 1123 label; a subdomain for runtimes), else CliError."""
    from gateway.kserve.resources import NAME_PATTERN, SUBDOMAIN_PATTERN

    if kind in ("InferenceService", "Experiment"):
        if not isinstance(name, str) or len(name) > 63 or not re.fullmatch(NAME_PATTERN, name):
            raise CliError(
                f"invalid name {name!r}: lowercase letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters"
            )
    elif not isinstance(name, str) or len(name) > 253 or not re.fullmatch(SUBDOMAIN_PATTERN, name):
        raise CliError(
            f"invalid name {name!r}: lowercase letters, digits, '-' and '.', "
            "each part starting and ending with a letter or digit, at most 253 characters"
        )
    return name


def kind_of(resource: str) -> str:
    if resource in SR_NAMES:
        return "ServingRuntime"
    if resource in CSR_NAMES:
        return "ClusterServingRuntime"
    if resource in EXPERIMENT_NAMES:
        return "Experiment"
    return "InferenceService"


def _read_bounded(path: str) -> str:
    """The file's text (stdin for "-"), refused past what the management API takes."""
    limit = kserve_documents.MAX_BYTES
    if path == "-":
        text = sys.stdin.read(limit + 1)
    else:
        with Path(path).open(encoding="utf-8") as file:
            text = file.read(limit + 1)
    if len(text) > limit:
        raise CliError(f"{path}: larger than {limit // (1024 * 1024)} MiB, the API's request limit")
    return text


YAML_SUFFIXES = (".yaml", ".yml", ".json")


def files_of(paths: Sequence[str], *, recursive: bool) -> Iterator[str]:
    """The files ``-f`` names: each file (or - for stdin) as given; in a folder, its
    .yaml, .yml and .json files in name order (with ``recursive``, its subfolders' too),
    others skipped with a line on stderr, as kubectl does."""
    for path in paths:
        folder = Path(path)
        if path == "-" or not folder.is_dir():
            yield path
            continue
        found = sorted(folder.rglob("*") if recursive else folder.iterdir())
        for entry in found:
            if entry.is_dir():
                continue
            if entry.suffix in YAML_SUFFIXES:
                yield str(entry)
            else:
                print(f"skipped {entry}: not a .yaml, .yml or .json file", file=sys.stderr)


def documents(
    paths: Sequence[str], *, recursive: bool = False
) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in files_of(paths, recursive=recursive):
        try:
            text = _read_bounded(path)
            loaded = kserve_documents.load_all(text)
        except OSError as exc:
            raise CliError(f"{path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise CliError(f"{path}: not valid YAML: {exc}") from None
        except kserve_documents.TooManyNodes as exc:
            raise CliError(f"{path}: {exc}") from None
        for doc in loaded:
            if doc is None:
                continue
            if isinstance(doc, dict) and doc.get("kind") == "List":
                items = doc.get("items") or []
                if not isinstance(items, list):
                    raise CliError(f"{path}: a List's items must be a list")
                yield from ((path, item) for item in items)
            else:
                yield path, doc
