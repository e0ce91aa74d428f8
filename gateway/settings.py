"""The gateway's settings: one object, built by the composition root.

Values come from the command line (gateway.tools.cli), then MMGW_* environment
variables, then these defaults. Nothing reads them at import time.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.control.records import RegistrySettings
from gateway.core.logs import LogFormat
from gateway.core.placement import PlacementSettings
from gateway.core.protocol import SHADOW_CLUSTERS
from gateway.kserve.resources import DEFAULT_NAMESPACE, DEFAULT_PUBLIC_URL


class GatewaySettings(BaseSettings):
    # Nested settings by a double underscore: MMGW_PLACEMENT__CHURN_GUARD=2.
    model_config = SettingsConfigDict(env_prefix="MMGW_", env_nested_delimiter="__", frozen=True)

    data_dir: Path = Path(".mmgw")
    namespace: str = DEFAULT_NAMESPACE
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # The management API's bearer token; required when api_host is not a loopback address.
    api_token: SecretStr | None = None
    extproc_host: str = "127.0.0.1"
    extproc_port: int = 9000
    # Where the registry, the placement's claims and the pods' registrations live:
    # "embedded" (SQLite under data_dir) or etcd://HOST:PORT (several replicas).
    store: str = "embedded"
    # How long a starting gateway waits for the store to answer (etcd started at the same
    # moment, or restarting) before it gives up and exits 1.
    store_wait_seconds: float = 60.0
    # PVC name -> local folder; default: my-models-pvc -> <data_dir>/models
    pvcs: dict[str, Path] = Field(default_factory=dict)
    # ModelMesh's storage-config (S3 storage keys): a file or a folder, see gateway.kserve.storage
    storage_config: Path | None = None
    public_url: str = DEFAULT_PUBLIC_URL  # where users reach InferenceServices (status.url)
    # A local Envoy's pod endpoints: the folder of its EDS files (gateway.adapters.eds), which
    # the gateway keeps equal to the registered pods; None: Envoy's pods are static.
    envoy_eds_dir: Path | None = None
    # The placement engine's and the registry's settings, each with its default declared
    # once where it is used (gateway.core.placement.settings, gateway.control.registry).
    # The Envoy clusters an Experiment's mirror copies go to, by wire form ("grpc", "oip"):
    # envoy.yaml's by default; istio/gateway.yaml sets the ingress gateway's.
    shadow_clusters: dict[str, str] = Field(default_factory=lambda: dict(SHADOW_CLUSTERS))
    # At most this many label sets (name, variant, protocol, code) in the per-variant request
    # metrics (gateway.core.traffic); requests past it are counted under "(other)".
    traffic_max_series: int = Field(default=2_000, ge=1)
    placement: PlacementSettings = PlacementSettings()
    registry: RegistrySettings = RegistrySettings()
    log_level: str = "INFO"
    log_format: LogFormat = "text"  # or "json": one object per line (gateway.core.logs)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @model_validator(mode="after")
    def _default_pvc(self) -> GatewaySettings:
        if not self.pvcs:
            object.__setattr__(self, "pvcs", {"my-models-pvc": self.data_dir / "models"})
        return self

    @model_validator(mode="after")
    def _token_off_loopback(self) -> GatewaySettings:
        if self.api_token is not None and not self.api_token.get_secret_value():
            object.__setattr__(self, "api_token", None)  # MMGW_API_TOKEN="" is no token
        if self.api_token is None and not is_loopback(self.api_host):
            raise ValueError(
                f"the management API would listen on {self.api_host}, not a loopback address, without a token; "
                "deploying a model runs code, so set MMGW_API_TOKEN (clients send it as a bearer token) "
                "or listen on 127.0.0.1"
            )
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to a public address
