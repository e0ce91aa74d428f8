"""mmgw: run the gateway's processes and manage its resources, kubectl-style.

mmgw demo                          Envoy + gateway + 3 pods + the sample model
mmgw apply -f FILE|DIR|- [-R] [--wait]   create or update InferenceServices,
                                   (Cluster)ServingRuntimes, Experiments
mmgw get isvc|sr|csr|experiments [NAME] [-o wide|name|json|yaml|jsonpath=...] [-l SEL] [-w]
mmgw get placement                 the placement table
mmgw describe isvc|sr|csr|experiment NAME   the resource, its conditions and events
mmgw delete isvc|sr|csr|experiment NAME  |  mmgw delete -f FILE|DIR
mmgw rollout undo isvc NAME        back to the spec rolled out before
mmgw completion bash|zsh           a shell completion script
mmgw serve | pod | envoy           run one process of a deployment
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import gateway
from gateway.core.domain import LOAD_TIMEOUT_SECONDS
from gateway.core.errors import GatewayError
from gateway.kserve.resources import DEFAULT_NAMESPACE, parse_quantity
from gateway.tools import completion
from gateway.tools.client import (
    CSR_NAMES,
    DEFAULT_SERVER,
    EXPERIMENT_NAMES,
    ISVC_NAMES,
    SR_NAMES,
    CliError,
)
from gateway.tools.commands import (
    cmd_apply,
    cmd_delete,
    cmd_describe,
    cmd_get,
    cmd_rollout,
)
from gateway.tools.launcher import Ports

if TYPE_CHECKING:
    from pydantic import BaseModel

_Settings = TypeVar("_Settings", bound="BaseModel")
__all__ = ["cmd_apply", "cmd_delete", "cmd_describe", "cmd_get", "cmd_rollout", "main", "parser"]
RESOURCES = (*ISVC_NAMES, *SR_NAMES, *CSR_NAMES, *EXPERIMENT_NAMES)


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


# -- process commands -----------------------------------------------------


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
        "max_adapters": args.max_adapters,
        "adapter_capacity_bytes": args.adapter_capacity,
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
        "otlp_endpoint": args.otlp_endpoint,
        "model_server": args.model_server,
        "mlserver_executable": args.mlserver,
        "mlserver_address": args.mlserver_address,
        "mlserver_rest_port": args.mlserver_rest_port,
        "mlserver_models_dir": args.mlserver_models_dir,
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
            otlp=args.otlp_endpoint,
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


class _Parser(argparse.ArgumentParser):
    """argparse with kubectl's exit status for a usage error: 1, not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"error: {message}\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="mmgw", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    top.add_argument("--version", action="version", version=f"mmgw {gateway.__version__}")
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

    def files(p: argparse.ArgumentParser, *, required: bool) -> None:
        p.add_argument(
            "-f",
            "--filename",
            action="append",
            required=required,
            help="a YAML or JSON file, a folder of them, or - for stdin (repeatable)",
        )
        p.add_argument(
            "-R", "--recursive", action="store_true", help="with -f DIR: its subfolders too"
        )

    p = client_command("apply", "create or update resources from YAML files")
    files(p, required=True)
    p.add_argument(
        "--wait", action="store_true", help="wait until each InferenceService applied is Ready"
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="with --wait: seconds (default %(default)s)"
    )
    p.set_defaults(func=cmd_apply)

    p = client_command(
        "get", "show InferenceServices, (Cluster)ServingRuntimes, Experiments or the placement"
    )
    p.add_argument("resource", choices=(*RESOURCES, "placement"))
    p.add_argument("name", nargs="?")
    p.add_argument(
        "-o",
        "--output",
        default="table",
        help="wide, name, json, yaml or jsonpath=TEMPLATE (default: a table)",
    )
    p.add_argument(
        "--no-headers", dest="headers", action="store_false", help="tables without the header"
    )
    p.add_argument("-l", "--selector", help="label selector: app=mnist,tier!=canary,env in (a,b)")
    p.add_argument(
        "-w", "--watch", action="store_true", help="then print each object again as it changes"
    )
    p.set_defaults(func=cmd_get)

    p = client_command("describe", "show one resource in detail, with its events")
    p.add_argument("resource", choices=RESOURCES)
    p.add_argument("name")
    p.set_defaults(func=cmd_describe)

    p = client_command("rollout", "roll an InferenceService back: `mmgw rollout undo isvc NAME`")
    p.add_argument("action", choices=("undo",))
    p.add_argument("resource", choices=ISVC_NAMES)
    p.add_argument("name")
    p.set_defaults(func=cmd_rollout)

    p = client_command(
        "delete", "delete an InferenceService, a (Cluster)ServingRuntime or an Experiment"
    )
    p.add_argument("resource", nargs="?", choices=RESOURCES)
    p.add_argument("name", nargs="?")
    files(p, required=False)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("completion", help="print a shell completion script: bash or zsh")
    p.add_argument("shell", choices=completion.SHELLS)
    p.set_defaults(func=lambda args: completion.cmd_completion(args, top))

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
    p.add_argument(
        "--max-adapters",
        type=int,
        help="adapters (lora over a base model the pod holds) at once, as vLLM's --max-loras "
        "(default 8; 0: none)",
    )
    p.add_argument(
        "--adapter-capacity",
        type=quantity,
        help="bytes the pod's adapters may take together, apart from --capacity (default 256Mi)",
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
    p.add_argument(
        "--otlp-endpoint",
        metavar="HOST:PORT",
        help="export a span per inference request to this OTLP gRPC collector (default: none)",
    )
    p.add_argument(
        "--model-server",
        choices=("auto", "mmgw", "mlserver"),
        help="who serves the models: this process (mmgw), a real MLServer beside it (mlserver), "
        "or as the ServingRuntime says (auto, the default: serverType mlserver with an MLServer "
        "model class)",
    )
    p.add_argument(
        "--mlserver",
        metavar="PATH",
        help="the mlserver command (default: the virtualenv `make mlserver` makes, else PATH)",
    )
    p.add_argument(
        "--mlserver-address",
        metavar="HOST:PORT",
        help="an MLServer started by someone else (a sidecar container): its gRPC address; the "
        "pod watches it instead of starting one",
    )
    p.add_argument(
        "--mlserver-rest-port", type=int, help="that MLServer's REST port, on the same host"
    )
    p.add_argument(
        "--mlserver-models-dir",
        type=Path,
        metavar="DIR",
        help="MLServer's models directory (MLSERVER_MODELS_DIR), shared with that MLServer "
        "(default: a temporary folder)",
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
        "--otlp-endpoint",
        metavar="HOST:PORT",
        help="trace every request (OpenTelemetry, W3C traceparent kept or started) and export "
        "the spans to this OTLP gRPC collector; default: no tracing",
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
