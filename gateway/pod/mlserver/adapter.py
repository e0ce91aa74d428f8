"""The adapter's server: the model-runtime API over the models a real MLServer serves.

``AdapterServer`` has the shape of ``gateway.pod.server.PodServer`` (start, wait, stop,
registration_info, models), so ``serve`` runs either. Its gRPC server serves
``ModelRuntime`` only: inference goes from Envoy to MLServer's own ports, which the pod
reports in RuntimeStatus (``data_grpc_port``, ``rest_port``) with
``model_named_in_request`` set. It is ready while MLServer is: when MLServer dies its
models are forgotten and the pod answers STARTING until MLServer is back (the gateway
takes it out of the pool meanwhile and places its models elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import grpc

from gateway._proto import model_runtime_pb2_grpc as rt_grpc

from ..puller import Puller
from ..registration import pod_info
from ..repository import ModelRepository
from ..runtimes import RuntimeRegistry
from ..servicer import RuntimeServicer
from ..settings import PodSettings, bracketed
from .model import MLServerBackend, model_class
from .process import MLServerProcess, MLServerSidecar, find_executable

log = logging.getLogger(__name__)


class AdapterServer:
    """A pod whose models a real MLServer serves."""

    def __init__(
        self, settings: PodSettings, formats: tuple[str, ...], env: Mapping[str, str]
    ) -> None:
        self.settings = settings
        # MLServer's working folder (its metrics files), and its models directory unless given
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"mmgw-{settings.pod_id}-mlserver-"))
        self.models_dir = settings.mlserver_models_dir or self.work_dir / "models"
        self._ready = asyncio.Event()
        self.mlserver: MLServerProcess | MLServerSidecar
        if settings.mlserver_address:
            self.mlserver = MLServerSidecar(
                settings.mlserver_address,
                settings.mlserver_rest_port,
                on_up=self._up,
                on_down=self._down,
            )
        else:
            self.mlserver = MLServerProcess(
                find_executable(settings.mlserver_executable),
                self.models_dir,
                env,
                work_dir=self.work_dir,
                host=settings.host,
                on_up=self._up,
                on_down=self._down,
                max_message_bytes=settings.max_message_bytes,
            )
        self.backend = MLServerBackend(
            self.mlserver.client, self.models_dir, settings.size_multiplier
        )
        runtime = model_class(self.backend)
        self.puller = Puller(settings.model_cache, settings.storage_config)
        self.models = ModelRepository(
            RuntimeRegistry(dict.fromkeys(formats, runtime)),
            puller=self.puller,
            max_loading_concurrency=settings.max_loading_concurrency,
            loading_timeout_s=settings.model_loading_timeout_ms / 1000,
            unload_drain_s=0,  # requests go to MLServer: the adapter cannot see them in flight
            capacity_bytes=settings.capacity_bytes,
        )
        self._server: grpc.aio.Server | None = None
        self._watching: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the adapter is not started")
        return f"{bracketed(self.settings.host)}:{self.port}"

    def registration_info(self) -> dict[str, object]:
        return pod_info(self.settings, self.port, self.models.model_types)

    def serving(self) -> bool:
        """Whether MLServer is up (the registration says so: gateways act on it at once)."""
        return self._ready.is_set()

    def _up(self) -> None:
        self._ready.set()
        self.models.on_change()  # the registration is written again, saying so
        log.info("pod %s: MLServer serves its models; the pod is ready", self.settings.pod_id)

    def _down(self, reason: str) -> None:
        self._ready.clear()
        forgotten = self.models.forget_all()
        self.models.on_change()  # also with nothing to forget: it is not serving
        log.error(
            "pod %s: %s; %d models lost with it, the pod is not ready until it is back",
            self.settings.pod_id,
            reason,
            len(forgotten),
        )

    async def start(self) -> int:
        settings = self.settings
        if settings.model_cache is None:
            self.puller.cache = Path(tempfile.mkdtemp(prefix=f"mmgw-{settings.pod_id}-models-"))
        self.puller.clear()
        self.models_dir.mkdir(parents=True, exist_ok=True)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        rt_grpc.add_ModelRuntimeServicer_to_server(
            RuntimeServicer(
                self.models,
                self._ready,
                settings,
                lambda: self.mlserver.http_port,
                data_grpc_port=lambda: self.mlserver.grpc_port,
                model_named_in_request=True,
            ),
            server,
        )
        target = f"{bracketed(settings.host)}:{settings.port}"
        try:
            port = server.add_insecure_port(target)
        except RuntimeError as exc:
            raise OSError(f"pod {settings.pod_id} cannot bind {target}: {exc}") from exc
        await server.start()
        self._server, self.port = server, port
        self._watching = asyncio.create_task(self.mlserver.run(), name="mlserver")
        log.info(
            "pod %s: adapter on %s, MLServer gRPC on port %d, REST on port %d",
            settings.pod_id,
            self.address,
            self.mlserver.grpc_port,
            self.mlserver.http_port,
        )
        return port

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        server, self._server = self._server, None
        self._ready.clear()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        if server is not None:
            await server.stop(grace)
        await self.models.close()
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
        for task in list(self.backend.pending):
            task.cancel()
        await self.mlserver.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if self.settings.model_cache is None and self.puller.cache is not None:
            shutil.rmtree(self.puller.cache, ignore_errors=True)
        else:
            self.puller.clear()
        log.info("pod %s stopped", self.settings.pod_id)
