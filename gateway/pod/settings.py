"""``PodSettings``: everything a runtime pod is configured with, in one frozen object.

Built by the CLI (or a test) and handed to ``gateway.pod.server.main``/``serve``;
nothing here reads the environment or parses arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.core.domain import LOAD_TIMEOUT_SECONDS, SIZE_MULTIPLIER

from .runtimes import BUILTIN_RUNTIMES, RuntimeRef

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PodSettings:
    """Settings of one runtime pod.

    - ``host``/``port``: the one address both gRPC services bind to, exactly as
      given (port 0 picks a free port; ``PodServer.start`` returns it).
    - ``pod_id``: this pod's name in logs.
    - ``capacity_bytes``: memory the pod offers for models. The gateway's
      placement does the accounting, as in ModelMesh; the pod only refuses a load
      whose expected size no longer fits (0: no limit).
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
    - ``storage_config``: storage key -> entry (gateway.kserve.storage.load_storage_config),
      for the models the puller downloads from S3.
    - ``model_cache``: the folder downloaded models go to; the pod owns it and
      empties it at start and stop. None: a temporary folder, removed at stop.
    """

    port: int
    capacity_bytes: int
    pod_id: str
    host: str = "127.0.0.1"
    max_loading_concurrency: int = 1
    model_loading_timeout_ms: int = int(1000 * LOAD_TIMEOUT_SECONDS)
    size_multiplier: float = SIZE_MULTIPLIER
    max_message_bytes: int = 64 * MiB
    shutdown_grace_s: float = 2.0
    unload_drain_seconds: float = 30.0
    runtimes: Mapping[str, RuntimeRef] = field(default_factory=lambda: BUILTIN_RUNTIMES)
    store: str = ""
    data_dir: Path = Path(".mmgw")
    advertise: str = ""
    runtime_name: str = ""
    explicit: frozenset[str] = (
        frozenset()
    )  # fields given on the command line: the runtime's YAML leaves them
    storage_config: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    model_cache: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.capacity_bytes < 0:
            raise ValueError("capacity_bytes must not be negative")
        if self.max_loading_concurrency < 1:
            raise ValueError("max_loading_concurrency must be at least 1")
        if self.model_loading_timeout_ms <= 0:
            raise ValueError("model_loading_timeout_ms must be positive")
        if self.size_multiplier <= 0:
            raise ValueError("size_multiplier must be positive")
        if self.max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        if self.shutdown_grace_s < 0:
            raise ValueError("shutdown_grace_s must not be negative")
        if self.unload_drain_seconds < 0:
            raise ValueError("unload_drain_seconds must not be negative")
        if not self.host:
            raise ValueError("host must not be empty")
