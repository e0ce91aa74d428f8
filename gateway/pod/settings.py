"""``PodSettings``: everything a runtime pod is configured with, in one frozen settings tree.

Each value comes from the command line (gateway.tools.cli maps the flags), else
from the pod's environment (``MMGW_<FIELD>``, e.g. ``MMGW_STORE``,
``MMGW_DATA_DIR``, ``MMGW_CAPACITY_BYTES``), else from its default here.
Nothing reads them at import time. What was given either way is
``model_fields_set``: a pod of a ServingRuntime takes its capacity and load
timeout from the runtime's YAML unless they were given (gateway.pod.profile).

- ``host``/``port``: the one address both gRPC services bind to, exactly as
  given (port 0 picks a free port; ``PodServer.start`` returns it).
- ``rest_port``: the Open Inference Protocol REST listener, on ``host``
  (gateway.pod.rest; 0 picks a free port). The pod reports it to the gateway
  in RuntimeStatus; Envoy's cluster "pods_rest" must list it.
- ``pod_id``: this pod's name in logs and in the store (default: host name and port).
- ``capacity_bytes``: memory the pod offers for models. The gateway's
  placement does the accounting, as in ModelMesh; the pod only refuses a load
  whose expected size no longer fits (0: no limit).
- ``max_adapters``, ``adapter_capacity_bytes``: room for adapters (``lora`` models over a
  base the pod holds), as vLLM's ``max_loras``: the gateway keeps at most this many, of
  at most these bytes together, on the pod, and evicts adapters to make room as it evicts
  models; the pod refuses an adapter beyond the count. Apart from ``capacity_bytes``.
- ``max_loading_concurrency``, ``model_loading_timeout_ms``: loads at once,
  and the bound on each (reported to the gateway in RuntimeStatus).
- ``size_multiplier``: PredictModelSize = bytes on disk x this.
- ``max_message_bytes``: gRPC send and receive limit.
- ``shutdown_grace_s``: how long in-flight RPCs may finish on shutdown.
- ``unload_drain_seconds``: how long an unload waits for the model's requests
  in flight to finish before it unloads anyway.
- ``runtimes``: model type -> ``Model`` class or "module:Class" path.
- ``store``: where the pod registers itself ("embedded" under ``data_dir``,
  or etcd://HOST:PORT); "" registers nowhere (a pod driven directly).
- ``advertise``: the address gateways and Envoy reach the pod at; by
  default ``host:port``, or this host's own IP address when ``host`` is a
  wildcard (0.0.0.0 in a container).
- ``runtime_name``: the ServingRuntime this pod is one of ("" : any); with a
  store, its YAML configures the pod (gateway.pod.profile).
- ``storage_config``: storage key -> entry, for the models the puller
  downloads from S3; given as ModelMesh's storage-config file or folder, it is
  read (gateway.kserve.storage.load_storage_config).
- ``model_server``, ``mlserver_*``: whether a real MLServer serves this pod's models
  (gateway.pod.mlserver), and where it is.
- ``model_cache``: the folder downloaded models go to; the pod owns it and
  empties it at start and stop. None: a temporary folder, removed at stop.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core.domain import LOAD_TIMEOUT_SECONDS, SIZE_MULTIPLIER
from gateway.core.logs import LogFormat
from gateway.kserve.storage import load_storage_config

from .runtimes import BUILTIN_RUNTIMES, RuntimeRef

MiB = 1024 * 1024


class PodSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MMGW_", frozen=True, arbitrary_types_allowed=True, extra="forbid"
    )

    port: int = Field(ge=0, le=65535)
    host: str = Field(default="127.0.0.1", min_length=1)
    rest_port: int = Field(default=0, ge=0, le=65535)
    pod_id: str = ""
    capacity_bytes: int = Field(default=1 << 30, ge=0)
    max_adapters: int = Field(default=8, ge=0)
    adapter_capacity_bytes: int = Field(default=256 * MiB, ge=0)
    max_loading_concurrency: int = Field(default=1, ge=1)
    model_loading_timeout_ms: int = Field(default=int(1000 * LOAD_TIMEOUT_SECONDS), gt=0)
    size_multiplier: float = Field(default=SIZE_MULTIPLIER, gt=0)
    max_message_bytes: int = Field(default=64 * MiB, gt=0)
    shutdown_grace_s: float = Field(default=2.0, ge=0)
    unload_drain_seconds: float = Field(default=30.0, ge=0)
    runtimes: dict[str, RuntimeRef] = Field(default_factory=lambda: dict(BUILTIN_RUNTIMES))
    store: str = ""
    data_dir: Path = Path(".mmgw")
    advertise: str = ""
    runtime_name: str = ""
    storage_config: dict[str, dict[str, str]] = Field(default_factory=dict)
    model_cache: Path | None = None
    # Who serves the models (gateway.pod.mlserver): "mmgw", this process; "mlserver", a real
    # MLServer beside it; "auto", as its ServingRuntime says (gateway.pod.profile)
    model_server: Literal["auto", "mmgw", "mlserver"] = "auto"
    # the ``mlserver`` command that starts it ("": MLServer's virtualenv made by
    # `make mlserver`, else ``mlserver`` on the PATH)
    mlserver_executable: str = ""
    # an MLServer this pod does not start (its sidecar container): its gRPC "host:port",
    # its REST port on the same host, and the models directory it shares with the pod
    mlserver_address: str = ""
    mlserver_rest_port: int = Field(default=0, ge=0, le=65535)
    mlserver_models_dir: Path | None = None
    # the environment MLServer starts with (its ServingRuntime container's: gateway.pod.profile)
    mlserver_env: dict[str, str] = Field(default_factory=dict)
    log_level: str = "INFO"
    log_format: LogFormat = "text"  # or "json": one object per line (gateway.core.logs)
    # HOST:PORT of an OTLP gRPC collector: a span per inference request (gateway.pod.tracing)
    otlp_endpoint: str = ""

    @field_validator("storage_config", mode="before")
    @classmethod
    def _read_storage_config(cls, value: Any) -> Any:
        """A path names ModelMesh's storage-config file or folder: read it."""
        return load_storage_config(Path(value)) if isinstance(value, str | Path) else value

    @model_validator(mode="after")
    def _default_pod_id(self) -> PodSettings:
        if not self.pod_id:  # unique per host, as a Kubernetes pod's name
            object.__setattr__(self, "pod_id", f"{socket.gethostname()}-{self.port}")
        return self

    def with_changes(self, **changes: Any) -> PodSettings:
        """A validated copy with ``changes``; what was given stays marked as given."""
        copy = PodSettings(**{**self.model_dump(), **changes})
        object.__setattr__(copy, "__pydantic_fields_set__", set(self.model_fields_set))
        return copy


def bracketed(host: str) -> str:
    """``host`` as the host part of "host:port" (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
