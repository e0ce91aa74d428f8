"""The gateway's settings: one object, built by the composition root.

Values come from the command line (gateway.cli), then MMGW_* environment
variables, then these defaults. Nothing reads them at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PODS = ("127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMGW_", frozen=True)

    data_dir: Path = Path(".mmgw")
    namespace: str = "modelmesh-serving"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    extproc_host: str = "127.0.0.1"
    extproc_port: int = 9000
    pods: tuple[str, ...] = DEFAULT_PODS
    # PVC name -> local folder; default: my-models-pvc -> <data_dir>/models
    pvcs: dict[str, Path] = Field(default_factory=dict)
    # ModelMesh's storage-config (S3 storage keys): a file or a folder, see gateway.storage
    storage_config: Path | None = None
    public_url: str = "http://127.0.0.1:8008"
    size_multiplier: float = 1.25
    churn_guard_seconds: float = 1.0
    load_timeout_seconds: float = 90.0
    loads_per_pod: int = 1
    copy_rate_threshold: float = 200.0  # requests/s per copy above which a copy is added
    health_interval_seconds: float = 1.0
    log_level: str = "INFO"
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @model_validator(mode="after")
    def _default_pvc(self) -> GatewaySettings:
        if not self.pvcs:
            object.__setattr__(self, "pvcs", {"my-models-pvc": self.data_dir / "models"})
        return self
