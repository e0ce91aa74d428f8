"""The runtime pod process: a ``grpc.aio`` server with two services, and a REST listener.

``GRPCInferenceService`` (KServe V2 data plane) and ``ModelRuntime`` (load,
unload, sizes, status) are served on ``settings.host:settings.port``; the gRPC
error table lives in ``gateway.pod.servicer``. The Open Inference Protocol's
REST form is served on ``settings.rest_port`` (gateway.pod.rest), on the same
event loop and over the same models.

- ``PodServer``: build, ``start()`` (returns the bound port, useful with port 0),
  ``stop(grace)``; what tests and embedders use.
- ``serve(settings, ready=...)``: run until cancelled, then stop gracefully; a pod whose
  models a real MLServer serves runs ``gateway.pod.mlserver.adapter.AdapterServer``
  instead of ``PodServer``.
- ``main(settings)``: ``serve`` under ``asyncio.run``, stopping on SIGTERM/SIGINT.

No argument parsing and no environment reading here: the CLI builds the
``PodSettings``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import tempfile
from pathlib import Path

import grpc

from gateway._proto import model_runtime_pb2_grpc as rt_grpc
from gateway.core import logs
from gateway.store import open_store

from . import profile
from .mlserver.adapter import AdapterServer
from .on_demand import OnDemand
from .puller import Puller
from .registration import Registration, pod_info
from .repository import ModelRepository
from .rest import OipApp, RestServer
from .runtimes import RuntimeRegistry
from .servicer import InferenceServicer, RuntimeServicer, inference_handler
from .settings import PodSettings, bracketed
from .tracing import Tracing

__all__ = ["PodServer", "PodSettings", "main", "serve"]

log = logging.getLogger(__name__)


class PodServer:
    """A runtime pod's gRPC server and the models it holds."""

    def __init__(self, settings: PodSettings) -> None:
        self.settings = settings
        # Without a model cache folder of its own, the pod makes a temporary one at start.
        self.puller = Puller(settings.model_cache, settings.storage_config)
        self.models = ModelRepository(
            RuntimeRegistry(settings.runtimes),
            puller=self.puller,
            max_loading_concurrency=settings.max_loading_concurrency,
            loading_timeout_s=settings.model_loading_timeout_ms / 1000,
            unload_drain_s=settings.unload_drain_seconds,
            capacity_bytes=settings.capacity_bytes,
            max_adapters=settings.max_adapters,
        )
        self._ready = asyncio.Event()
        # spans per inference request, when a collector is named (off by default)
        self.tracing = Tracing(settings.otlp_endpoint, "mmgw-pod", settings.pod_id)
        self._server: grpc.aio.Server | None = None
        self._rest: RestServer | None = None
        self.port: int | None = None
        self.rest_port: int | None = None  # bound, once started (None: no REST listener)

    @property
    def address(self) -> str:
        """``host:port`` of the bound server (IPv6 hosts in brackets)."""
        if self.port is None:
            raise RuntimeError("the pod server is not started")
        return f"{bracketed(self.settings.host)}:{self.port}"

    def registration_info(self) -> dict[str, object]:
        """What the pod tells gateways about itself in the store (gateway.pod.registration)."""
        return pod_info(self.settings, self.port, self.models.model_types)

    async def start(self) -> int:
        """Bind and start serving; the bound port."""
        if self._server is not None:
            raise RuntimeError("the pod server is already started")
        settings = self.settings
        if settings.model_cache is None:
            self.puller.cache = Path(tempfile.mkdtemp(prefix=f"mmgw-{settings.pod_id}-models-"))
        self.puller.clear()  # files a previous run left
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                # Fail on a port another process holds, instead of sharing it.
                ("grpc.so_reuseport", 0),
            ]
        )
        # the data plane's messages come from clients: one that does not parse is answered
        # INVALID_ARGUMENT (servicer.tolerant), not grpc's UNKNOWN
        server.add_generic_rpc_handlers(
            (inference_handler(InferenceServicer(self.models, self._ready, self.tracing)),)
        )
        rt_grpc.add_ModelRuntimeServicer_to_server(
            RuntimeServicer(self.models, self._ready, settings, lambda: self.rest_port or 0),
            server,
        )
        target = f"{bracketed(settings.host)}:{settings.port}"
        try:
            port = server.add_insecure_port(target)
        except RuntimeError as exc:  # grpc raises when it cannot bind
            raise OSError(f"pod {settings.pod_id} cannot bind {target}: {exc}") from exc
        if port == 0:
            raise OSError(f"pod {settings.pod_id} cannot bind {target}")
        await server.start()
        self._server, self.port = server, port
        rest = RestServer(
            OipApp(self.models, self._ready, self.tracing),
            settings.host,
            settings.rest_port,
            max_body=settings.max_message_bytes,
        )
        try:
            self.rest_port = await rest.start()
        except OSError as exc:
            await server.stop(None)
            self._server = None
            raise OSError(
                f"pod {settings.pod_id} cannot bind its REST port "
                f"{bracketed(settings.host)}:{settings.rest_port}: {exc.strerror or exc}"
            ) from exc
        self._rest = rest
        self._ready.set()
        log.info(
            "pod %s serving gRPC on %s, REST on port %d",
            settings.pod_id,
            self.address,
            self.rest_port,
        )
        return port

    def serving(self) -> bool:
        """Whether the pod serves now (started, not stopping)."""
        return self._ready.is_set()

    async def wait(self) -> None:
        """Until the server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking RPCs, let in-flight ones finish for ``grace`` seconds, unload all."""
        server, self._server = self._server, None
        rest, self._rest = self._rest, None
        self._ready.clear()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        if rest is not None:
            await rest.stop(grace)
        if server is not None:
            await server.stop(grace)
            log.info("pod %s stopped", self.settings.pod_id)
        await self.models.close()
        self.tracing.close()
        if self.settings.model_cache is None and self.puller.cache is not None:
            shutil.rmtree(self.puller.cache, ignore_errors=True)
            self.puller.cache = None
        else:
            self.puller.clear()


async def serve(settings: PodSettings, *, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled (or the server ends), then stop with the grace period.

    ``ready`` is set once the port is bound and the services answer.
    """
    store = open_store(settings.store, settings.data_dir) if settings.store else None
    pod: PodServer | AdapterServer | None = None
    registering: asyncio.Task[None] | None = None
    try:
        if store is not None and settings.runtime_name:
            runtime = profile.profile(await profile.fetch(store, settings.runtime_name))
            settings = profile.configure(settings, runtime)
            log.info(
                "pod %s of servingruntime '%s': %d bytes for models, formats %s, loads bounded by %d ms",
                settings.pod_id,
                runtime.name,
                settings.capacity_bytes,
                ", ".join(sorted(settings.runtimes)),
                settings.model_loading_timeout_ms,
            )
        if settings.model_server == "mlserver":
            pod = AdapterServer(settings, tuple(settings.runtimes), settings.mlserver_env)
        else:
            pod = PodServer(settings)
            if store is not None:
                pod.models.load_on_demand = OnDemand(store, pod.models).ensure
        await pod.start()
        if store is not None:
            registration = Registration(
                store, settings.pod_id, pod.registration_info(), pod.models, serving=pod.serving
            )
            registering = asyncio.create_task(registration.run(), name="registration")
        if ready is not None:
            ready.set()
        await pod.wait()
    finally:
        if registering is not None:  # leave the pool first: gateways stop sending requests
            registering.cancel()
            await asyncio.gather(registering, return_exceptions=True)
        if pod is not None:
            await pod.stop()
        if store is not None:
            await store.close()


def main(settings: PodSettings) -> None:
    """Run a pod in this process until SIGTERM or SIGINT."""
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(_serve_until_signal(settings))


async def _serve_until_signal(settings: PodSettings) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(serve(settings), name=f"pod {settings.pod_id}")
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # cancelled ourselves, not by a signal
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
