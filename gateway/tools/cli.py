"""mmgw: run the gateway's processes and manage its resources, kubectl-style.

mmgw demo                          Envoy + gateway + 3 pods + the sample model
mmgw apply -f FILE                 create or update InferenceServices, (Cluster)ServingRuntimes,
                                   Experiments
mmgw get isvc|sr|csr|experiments [NAME]   list resources
mmgw get placement                 the placement table
mmgw delete isvc|sr|csr|experiment NAME
mmgw rollout undo isvc NAME        back to the spec rolled out before
mmgw serve | pod | envoy           run one process of a deployment
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
import yaml

from gateway.core.domain import LOAD_TIMEOUT_SECONDS
from gateway.core.errors import GatewayError
from gateway.core.protocol import CONCRETE_ID_SEPARATOR
from gateway.kserve import documents as kserve_documents
from gateway.kserve.resources import DEFAULT_NAMESPACE, parse_quantity
from gateway.tools.launcher import Ports

if TYPE_CHECKING:
    from pydantic import BaseModel

_Settings = TypeVar("_Settings", bound="BaseModel")

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


def quantity(text: str) -> int:
    """Bytes from a Kubernetes quantity: 1073741824, 512Mi, 1Gi, 2G."""
    try:
        return parse_quantity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r} (1 to 65535)")
    return value


def _pvc(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"--pvc takes NAME=DIR, got {text!r}")
    return name, Path(folder)


def _runtime(text: str) -> tuple[str, str]:
    model_type, sep, ref = text.partition("=")
    if not sep or not model_type or ":" not in ref:
        raise argparse.ArgumentTypeError(f"--runtime takes TYPE=module:Class, got {text!r}")
    return model_type, ref


# -- client commands ------------------------------------------------------


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


def _kind_of(resource: str) -> str:
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


def documents(paths: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in paths:
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


def cmd_apply(args: argparse.Namespace) -> int:
    client = Client(args.server, args.namespace, args.token)
    docs = list(documents(args.filename))
    if not docs:
        raise CliError("no objects passed to apply")
    failed = 0
    # Runtimes first, so that the InferenceServices of the same files find them.
    docs.sort(
        key=lambda d: (
            KINDS[d[1]["kind"]][1] if isinstance(d[1], dict) and d[1].get("kind") in KINDS else 9
        )
    )
    for path, doc in docs:
        metadata = doc.get("metadata") if isinstance(doc, dict) else None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind not in KINDS or name is None:
            what = " ".join(str(part) for part in (kind or "a document", name) if part is not None)
            print(
                f"error: {path}: {what}: only InferenceService (serving.kserve.io/v1beta1), ServingRuntime "
                "and ClusterServingRuntime (serving.kserve.io/v1alpha1) and Experiment "
                "(mlops.seldon.io/v1alpha1) with metadata.name can be applied",
                file=sys.stderr,
            )
            failed += 1
            continue
        printed = KINDS[kind][0]
        try:
            response = client.request("PUT", client.path(kind, check_name(name, kind)), json=doc)
        except CliError as exc:
            print(f"error: {printed}/{name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{printed}/{name} {response.headers.get('mmgw-apply-result', 'configured')}")
    return 1 if failed else 0


def _ready(item: dict[str, Any]) -> tuple[str, str]:
    for condition in item.get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            return condition.get("status", "Unknown"), condition.get("reason", "")
    return "Unknown", ""


def age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}Mi"


def placement_table(data: dict[str, Any]) -> str:
    """The placement table as people read it: a line per pod, then a line per copy on it."""
    rows = [["POD", "MODEL", "STATE", "SIZE", "LAST USE", "IN FLIGHT", "REQ/S"]]
    for pod in data["pods"]:
        health = "healthy" if pod["healthy"] else "UNREACHABLE"
        queue = pod["load_queue"]
        rows.append(
            [
                pod["pod"],
                f"({health}, {_mib(pod['used_bytes'])} of {_mib(pod['capacity_bytes'])}, "
                f"loading {queue['running']}, queued {queue['waiting']})",
                "",
                "",
                "",
                "",
                "",
            ]
        )
        for m in pod["models"]:
            if m["state"] == "FAILED":
                rows.append(
                    [
                        "",
                        m["model_id"],
                        "FAILED",
                        "",
                        f"{m['failed_seconds_ago']:.0f}s ago",
                        "",
                        m["reason"],
                    ]
                )
            else:
                rows.append(
                    [
                        "",
                        m["model_id"],
                        m["state"],
                        _mib(m["size_bytes"]),
                        f"{m['last_used_seconds_ago']:.0f}s ago",
                        str(m["in_flight"]),
                        f"{m['requests_per_second']:.1f}",
                    ]
                )
    return table(rows)


def cmd_get(args: argparse.Namespace) -> int:
    client = Client(args.server, args.namespace, args.token)
    if args.resource == "placement":
        if args.name:
            raise CliError("get placement takes no name")
        data = client.request("GET", "/v1/placement").json()
        if args.output == "json":
            print(json.dumps(data, indent=2))
        elif args.output == "yaml":
            print(yaml.safe_dump(data, sort_keys=False), end="")
        else:
            print(placement_table(data))
        return 0
    kind = _kind_of(args.resource)
    if args.name:
        items = [client.request("GET", client.path(kind, check_name(args.name, kind))).json()]
    else:
        items = client.request("GET", client.path(kind)).json()["items"]
    if args.output in ("json", "yaml"):
        data = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
        if args.output == "json":
            print(json.dumps(data, indent=2))
        else:
            print(yaml.safe_dump(data, sort_keys=False), end="")
        return 0
    if not items:
        where = "" if kind == "ClusterServingRuntime" else f" in {args.namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    if kind == "Experiment":
        print(experiment_table(items))
        return 0
    if kind != "InferenceService":
        print(runtime_table(items))
        return 0
    rows = [["NAME", "URL", "READY", "PREV", "LATEST", "REASON", "AGE"]]
    now = time.time()
    for item in items:
        ready, reason = _ready(item)
        prev, latest = _traffic_percents(item)
        created = item.get("metadata", {}).get("creationTimestamp")
        since = now - datetime.fromisoformat(created).timestamp() if created else None
        rows.append(
            [
                item["metadata"]["name"],
                item.get("status", {}).get("url", ""),
                ready,
                prev,
                latest,
                reason,
                age(since) if since is not None else "-",
            ]
        )
    print(table(rows))
    return 0


def _traffic_percents(item: dict[str, Any]) -> tuple[str, str]:
    """The PREV and LATEST columns, as `kubectl get isvc` shows KServe's traffic split:
    the rolled-out and the latest revision's percent (PREV empty when there is one)."""
    traffic = item.get("status", {}).get("components", {}).get("predictor", {}).get("traffic")
    if not traffic:
        return "", ""
    by_tag = {t.get("tag"): str(t.get("percent", "")) for t in traffic}
    if "prev" in by_tag:
        return by_tag["prev"], by_tag.get("latest", "")
    return "", str(traffic[0].get("percent", ""))


def _age_of(item: dict[str, Any]) -> str:
    created = item.get("metadata", {}).get("creationTimestamp")
    return age(time.time() - datetime.fromisoformat(created).timestamp()) if created else "-"


def experiment_table(items: list[dict[str, Any]]) -> str:
    """Experiments: their candidates with weights (ready ones marked), default, what each
    candidate served (requests, and failed ones) and age."""
    rows = [["NAME", "READY", "CANDIDATES", "DEFAULT", "SERVED", "AGE"]]
    for item in items:
        status = item.get("status", {})
        candidates = ",".join(
            f"{c['name']}={c['weight']}{'' if c.get('ready') else '(not ready)'}"
            for c in status.get("candidates", [])
        )
        ready = status.get("conditions", [{}])[0].get("status", "")
        default = item.get("spec", {}).get("default") or "-"
        rows.append(
            [
                item["metadata"]["name"],
                ready,
                candidates,
                default,
                served_summary(status.get("served", [])),
                _age_of(item),
            ]
        )
    return table(rows)


def served_summary(served: list[dict[str, Any]]) -> str:
    """``status.served`` in a table cell: requests per InferenceService (a variant's name
    without its hash), failed ones in brackets; "refused" for those no pod was asked."""
    totals: dict[str, list[int]] = {}
    for row in served:
        variant = row.get("variant") or "refused"
        owner = variant.rpartition(CONCRETE_ID_SEPARATOR)[0] or variant
        total = totals.setdefault(owner, [0, 0])
        total[0] += int(row.get("requests", 0))
        total[1] += int(row.get("errors", 0))
    return (
        ",".join(
            f"{owner}={requests}" + (f"({errors} failed)" if errors else "")
            for owner, (requests, errors) in totals.items()
        )
        or "-"
    )


def runtime_table(items: list[dict[str, Any]]) -> str:
    """(Cluster)ServingRuntimes as `kubectl get servingruntimes` prints them."""
    rows = [["NAME", "DISABLED", "MODELTYPE", "CONTAINERS", "AGE"]]
    for item in items:
        spec = item.get("spec", {})
        formats = spec.get("supportedModelFormats") or [{}]
        rows.append(
            [
                item["metadata"]["name"],
                "true" if spec.get("disabled") else "",
                formats[0].get("name", ""),
                ",".join(c.get("name", "") for c in spec.get("containers", [])),
                _age_of(item),
            ]
        )
    return table(rows)


def cmd_delete(args: argparse.Namespace) -> int:
    client = Client(args.server, args.namespace, args.token)
    kind = _kind_of(args.resource)
    client.request("DELETE", client.path(kind, check_name(args.name, kind)))
    print(f'{KINDS[kind][0]} "{args.name}" deleted')
    return 0


# -- process commands -----------------------------------------------------


def cmd_rollout(args: argparse.Namespace) -> int:
    """`mmgw rollout undo isvc NAME`: back to the spec rolled out before (or, while a rollout
    or canary is under way, to the one rolled out now), as `kubectl rollout undo`."""
    client = Client(args.server, args.namespace, args.token)
    name = check_name(args.name)
    client.request("POST", f"{client.isvc(name)}/rollback")
    print(f"{KINDS['InferenceService'][0]}/{name} rolled back")
    return 0


def _settings(kind: type[_Settings], given: dict[str, Any]) -> _Settings:
    """Settings from the flags given (None: not given), the environment and the defaults;
    CliError naming each setting that is wrong."""
    from pydantic import ValidationError

    try:
        return kind(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise CliError("; ".join(problems)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import app
    from gateway.settings import GatewaySettings

    given = {
        "data_dir": args.data_dir,
        "api_host": args.api_host,
        "api_port": args.api_port,
        "extproc_host": args.extproc_host,
        "extproc_port": args.extproc_port,
        "store": args.store,
        "store_wait_seconds": args.store_wait,
        "pvcs": dict(args.pvc) if args.pvc else None,
        "public_url": args.public_url,
        "envoy_eds_dir": args.envoy_eds_dir,
        "namespace": args.namespace,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "storage_config": args.storage_config,
    }
    app.main(_settings(GatewaySettings, given))
    return 0


def cmd_pod(args: argparse.Namespace) -> int:
    from gateway.pod import server
    from gateway.pod.runtimes import BUILTIN_RUNTIMES

    given = {
        "host": args.host,
        "port": args.port,
        "rest_port": args.rest_port,
        "capacity_bytes": args.capacity,
        "pod_id": args.id,
        "max_loading_concurrency": args.max_loading_concurrency,
        "model_loading_timeout_ms": args.model_loading_timeout_ms,
        "unload_drain_seconds": args.unload_drain_seconds,
        "max_message_bytes": args.max_message_bytes,
        "runtimes": {**BUILTIN_RUNTIMES, **dict(args.runtime)} if args.runtime else None,
        "store": args.store,
        "data_dir": args.data_dir,
        "advertise": args.advertise,
        "runtime_name": args.runtime_name,
        "storage_config": args.storage_config,
        "model_cache": args.model_cache,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    server.main(_settings(server.PodSettings, given))
    return 0


def cmd_envoy(args: argparse.Namespace) -> int:
    from gateway.tools import envoy_config, launcher

    host, _, port = args.extproc.rpartition(":")
    config = envoy_config.render(
        envoy_config.EnvoyPorts(
            listen_host=args.listen_host,
            listen_port=args.port,
            admin_port=args.admin_port,
            extproc_host=host,
            extproc_port=int(port),
            max_request_bytes=args.max_request_bytes,
            pods=tuple(args.pods),
            rest_pods=tuple(args.rest_pods),
            api=args.api,
            eds_dir=args.eds_dir,
            access_log=args.access_log,
        )
    )
    path = envoy_config.write(config, args.data_dir / "envoy.yaml")
    binary = str(launcher.envoy_binary())
    os.execv(binary, [binary, "-c", str(path), "--disable-hot-restart", "--log-level", "warning"])


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.tools import demo, launcher

    ports = launcher.Ports(
        envoy=args.port,
        envoy_admin=args.admin_port,
        api=args.api_port,
        extproc=args.extproc_port,
        pods=tuple(args.pod_ports),
        pod_rest=tuple(args.pod_rest_ports),
    )
    return demo.run(args.data_dir, ports, store=args.store)


# -- parser ---------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="mmgw", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = top.add_subparsers(dest="command", required=True)

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument(
            "--server",
            "-s",
            default=os.environ.get("MMGW_SERVER", DEFAULT_SERVER),
            help="management API URL (env MMGW_SERVER; default %(default)s)",
        )
        p.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE)
        p.add_argument(
            "--token",
            default=os.environ.get("MMGW_TOKEN"),
            help="the management API's bearer token (env MMGW_TOKEN)",
        )
        return p

    p = client_command("apply", "create or update resources from YAML files")
    p.add_argument(
        "-f", "--filename", action="append", required=True, help="YAML file, or - for stdin"
    )
    p.set_defaults(func=cmd_apply)

    p = client_command(
        "get", "show InferenceServices, (Cluster)ServingRuntimes or the placement table"
    )
    p.add_argument(
        "resource", choices=(*ISVC_NAMES, *SR_NAMES, *CSR_NAMES, *EXPERIMENT_NAMES, "placement")
    )
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    p.set_defaults(func=cmd_get)

    p = client_command("rollout", "roll an InferenceService back: `mmgw rollout undo isvc NAME`")
    p.add_argument("action", choices=("undo",))
    p.add_argument("resource", choices=ISVC_NAMES)
    p.add_argument("name")
    p.set_defaults(func=cmd_rollout)

    p = client_command(
        "delete", "delete an InferenceService, a (Cluster)ServingRuntime or an Experiment"
    )
    p.add_argument("resource", choices=(*ISVC_NAMES, *SR_NAMES, *CSR_NAMES, *EXPERIMENT_NAMES))
    p.add_argument("name")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("serve", help="run the gateway: ext_proc, placement engine, management API")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--api-host")
    p.add_argument("--api-port", type=int)
    p.add_argument("--extproc-host")
    p.add_argument("--extproc-port", type=int)
    p.add_argument(
        "--store",
        metavar="URL",
        help="embedded (default: SQLite under --data-dir) or etcd://HOST:PORT; env MMGW_STORE",
    )
    p.add_argument(
        "--store-wait",
        type=float,
        metavar="SECONDS",
        help="how long to wait at start for the store to answer (default 60); env MMGW_STORE_WAIT_SECONDS",
    )
    p.add_argument(
        "--pvc", action="append", type=_pvc, metavar="NAME=DIR", help="map a PVC name to a folder"
    )
    p.add_argument("--public-url", help="Envoy's URL, shown in InferenceService status")
    p.add_argument(
        "--envoy-eds-dir",
        type=Path,
        metavar="DIR",
        help="keep a local Envoy's pod endpoints in this folder's EDS files (mmgw envoy --eds-dir)",
    )
    p.add_argument(
        "--storage-config",
        type=Path,
        metavar="FILE|DIR",
        help="ModelMesh's storage-config: S3 storage keys (or MMGW_STORAGE_CONFIG)",
    )
    p.add_argument("--namespace")
    p.add_argument("--log-level")
    p.add_argument(
        "--log-format", choices=("text", "json"), help="json: one object per line (default text)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("pod", help="run one runtime pod")
    p.add_argument("--host", help="the address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--rest-port",
        type=int,
        help="the Open Inference Protocol REST listener, on --host (default 0: a free port, "
        "reported to the gateway)",
    )
    p.add_argument(
        "--capacity",
        type=quantity,
        help="model memory in bytes (512Mi, 1Gi, ...; default: the runtime's memory limit minus "
        "memBufferBytes with --runtime-name, else 1Gi)",
    )
    p.add_argument("--id")
    p.add_argument("--max-loading-concurrency", type=int, help="loads at once (default 1)")
    p.add_argument(
        "--model-loading-timeout-ms",
        type=int,
        help="bound on each load (default: the runtime's modelLoadingTimeoutMillis, "
        f"else {int(1000 * LOAD_TIMEOUT_SECONDS)})",
    )
    p.add_argument(
        "--runtime",
        action="append",
        type=_runtime,
        metavar="TYPE=module:Class",
        help="serve model type TYPE with this Model class (adds to or replaces the built-in ones)",
    )
    p.add_argument(
        "--unload-drain-seconds",
        type=float,
        help="how long an unload waits for the model's requests in flight (default 30)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=quantity,
        help="gRPC send and receive limit (8Mi, 1Gi, ...; default 64Mi)",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="register in this store: embedded (under --data-dir) or etcd://HOST:PORT; env MMGW_STORE",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="the gateway's data folder, for --store embedded (default .mmgw; env MMGW_DATA_DIR)",
    )
    p.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="the address gateways and Envoy reach this pod at (default: this host's IP and --port)",
    )
    p.add_argument(
        "--runtime-name",
        help="the ServingRuntime this pod is one of: its YAML gives the pod's capacity, load timeout "
        "and model class (MLSERVER_MODEL_IMPLEMENTATION); default: any runtime, built-in classes",
    )
    p.add_argument(
        "--storage-config",
        type=Path,
        metavar="FILE|DIR",
        help="ModelMesh's storage-config: the S3 storage keys the puller may download from",
    )
    p.add_argument(
        "--model-cache",
        type=Path,
        metavar="DIR",
        help="the pod's own folder for downloaded models, emptied at start and stop "
        "(default: a temporary folder)",
    )
    p.add_argument("--log-level", help="default INFO")
    p.add_argument(
        "--log-format", choices=("text", "json"), help="json: one object per line (default text)"
    )
    p.set_defaults(func=cmd_pod)

    p = sub.add_parser("envoy", help="run Envoy with envoy/envoy.yaml rendered for these ports")
    p.add_argument("--listen-host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8008)
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--extproc", default="127.0.0.1:9000", metavar="HOST:PORT")
    p.add_argument("--max-request-bytes", type=quantity, default=16 << 20)
    p.add_argument(
        "--pods",
        nargs="+",
        metavar="HOST:PORT",
        default=list(Ports().pod_addresses),  # where `mmgw demo` runs its pods
        help="the runtime pods' addresses (Envoy's endpoints; the pods register them in the store)",
    )
    p.add_argument(
        "--rest-pods",
        nargs="+",
        metavar="HOST:PORT",
        default=list(Ports().pod_rest_addresses),
        help="the same pods' REST listeners (mmgw pod --rest-port), in the order of --pods",
    )
    p.add_argument(
        "--eds-dir",
        type=Path,
        metavar="DIR",
        help="read the pods' endpoints from the EDS files the gateway writes there (mmgw serve "
        "--envoy-eds-dir): pods that register later are routable; default: --pods, fixed",
    )
    p.add_argument(
        "--access-log",
        metavar="PATH",
        help="write a JSON line per request (request id, model, variant, pod, status, "
        "durations) to PATH, or to stdout with -; default: none",
    )
    p.add_argument(
        "--api",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="the management API, for POST /v2/repository/index (default %(default)s)",
    )
    p.add_argument("--data-dir", type=Path, default=Path(".mmgw"))
    p.set_defaults(func=cmd_envoy)

    p = sub.add_parser(
        "demo", help="run Envoy, the gateway, 3 pods and the sample model in the foreground"
    )
    p.add_argument("--data-dir", type=Path, default=Path(".mmgw"))
    p.add_argument("--port", type=port, default=8008, help="Envoy's listener (default %(default)s)")
    p.add_argument(
        "--admin-port", type=port, default=9901, help="Envoy's admin (default %(default)s)"
    )
    p.add_argument(
        "--api-port", type=port, default=8080, help="management API (default %(default)s)"
    )
    p.add_argument(
        "--extproc-port", type=port, default=9000, help="ext_proc server (default %(default)s)"
    )
    p.add_argument(
        "--store",
        default=os.environ.get("MMGW_STORE", "embedded"),
        metavar="URL",
        help="embedded (default) or etcd://HOST:PORT, an etcd you run; env MMGW_STORE",
    )
    p.add_argument(
        "--pod-ports",
        type=port,
        nargs="+",
        default=[9101, 9102, 9103],
        metavar="PORT",
        help="one runtime pod per port (default %(default)s)",
    )
    p.add_argument(
        "--pod-rest-ports",
        type=port,
        nargs="+",
        default=[9111, 9112, 9113],
        metavar="PORT",
        help="each pod's REST listener, one per --pod-ports entry (default %(default)s)",
    )
    p.set_defaults(func=cmd_demo)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        message = str(exc)
        print(
            message if message.startswith("Error from server") else f"error: {message}",
            file=sys.stderr,
        )
        return 1
    except GatewayError as exc:  # a configuration a process cannot use (a storage config, ...)
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mmgw get ... | head`: the reader is gone, say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
