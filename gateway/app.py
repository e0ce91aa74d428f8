"""The gateway process's composition root: builds everything from GatewaySettings.

One asyncio loop serves the ext_proc server (Envoy's routing questions),
the management API (uvicorn) and the pods' health watch, all over the same
in-memory placement table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator

import uvicorn

from gateway.adapters.api import build_api
from gateway.adapters.eds import EndpointFiles
from gateway.adapters.extproc.accesslog import AccessLogReader
from gateway.adapters.extproc.processor import ExternalProcessor
from gateway.adapters.extproc.server import ExtProcServer
from gateway.adapters.metrics import Metrics
from gateway.adapters.podclient import GrpcPodClient
from gateway.control.events import EventBook, EventFanout
from gateway.control.registry import Registry
from gateway.control.replicas import FailureBook, PodPool, StoreCoordinator
from gateway.control.router import Router
from gateway.control.traffic import TrafficBook
from gateway.core import logs
from gateway.core.errors import StoreUnavailable
from gateway.core.placement import Placement
from gateway.core.traffic import Tally
from gateway.kserve.storage import StorageRoots, load_storage_config
from gateway.settings import GatewaySettings
from gateway.store import open_store

log = logging.getLogger("gateway")


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: GatewaySettings, *, stop: asyncio.Event | None = None) -> None:
    """Run the gateway until ``stop`` is set (or the task is cancelled)."""
    stop = stop or asyncio.Event()
    store = open_store(settings.store, settings.data_dir)
    coordinator = StoreCoordinator(store)
    await _reach_store(coordinator, settings.store_wait_seconds)
    pods = GrpcPodClient()
    metrics = Metrics()
    events = EventBook()
    placement = Placement(
        pods,
        settings.placement,
        events=EventFanout([metrics, events]),
        coordinator=coordinator,
    )
    metrics.watch(placement)
    pool = PodPool(store, placement)
    failures = FailureBook(store, placement)
    registry = Registry(
        store,
        placement,
        StorageRoots(
            settings.pvcs,
            load_storage_config(settings.storage_config) if settings.storage_config else {},
        ),
        settings.registry,
        namespace=settings.namespace,
        coordinator=coordinator,
    )
    # Registered models first, then the pods: a pod's loaded models are adopted
    # only if they are registered.
    followers = registry.followers()
    for mirror in [*followers, pool.mirror, failures.mirror]:
        await mirror.sync()
    await registry.restore()
    await placement.check_pods()
    pool.wake()

    processor = ExternalProcessor(
        Router(registry, placement),
        miss_timeout=settings.placement.load_timeout + 10,
        shadow_clusters=settings.shadow_clusters,
    )
    traffic = TrafficBook(
        registry,
        placement,
        Tally(settings.traffic_max_series),
        Tally(settings.traffic_max_series, folded=1),
    )
    metrics.watch_traffic(traffic.tally, traffic.at_pods)
    extproc = ExtProcServer(
        processor,
        settings.extproc_host,
        settings.extproc_port,
        access_log=AccessLogReader(traffic.record),
    )
    await extproc.start()

    api = _ApiServer(
        uvicorn.Config(
            build_api(
                registry,
                placement,
                namespace=settings.namespace,
                public_url=settings.public_url,
                metrics=metrics.exposition,
                served=traffic.variants,
                events=events.of,
                token=settings.api_token.get_secret_value() if settings.api_token else None,
            ),
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
    tasks = [
        asyncio.create_task(api.serve(), name="management API"),
        *(
            [
                asyncio.create_task(
                    EndpointFiles(placement, settings.envoy_eds_dir).run(), name="eds"
                )
            ]
            if settings.envoy_eds_dir is not None
            else []
        ),
        asyncio.create_task(placement.watch_pods(), name="pod health"),
        asyncio.create_task(coordinator.run(), name="replica coordination"),
        asyncio.create_task(registry.rollouts.watch(), name="rollouts"),
        *(
            asyncio.create_task(m.run(), name=f"mirror {m.prefix}")
            for m in [*followers, pool.mirror, failures.mirror]
        ),
    ]
    log.info(
        "gateway ready: ext_proc on %s:%d, management API on http://%s:%d, store %s, %d pods registered",
        settings.extproc_host,
        settings.extproc_port,
        settings.api_host,
        settings.api_port,
        store.description,
        len(pool.mirror.items),
    )
    try:
        done, _ = await asyncio.wait(
            [asyncio.create_task(stop.wait(), name="stop"), *tasks],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in done:
            if task.get_name() != "stop" and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        log.info("gateway stopping")
        api.should_exit = True
        await extproc.stop()
        for task in tasks:
            if task.get_name() != "management API":
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await registry.close()
        await coordinator.stop()
        await pods.close()
        await store.close()


async def _reach_store(coordinator: StoreCoordinator, wait: float) -> None:
    """Start the coordinator, trying again for ``wait`` seconds while the store is unreachable;
    then StoreUnavailable, naming the store, propagates."""
    deadline = time.monotonic() + wait
    delay = 0.25
    while True:
        try:
            await coordinator.start()
            return
        except StoreUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreUnavailable(f"{exc.message} (waited {wait:g} s)") from exc
            log.warning("waiting for the store: %s; trying again (%.0f s left)", exc.message, left)
            await asyncio.sleep(min(delay, left))
            delay = min(2 * delay, 2.0)


def main(settings: GatewaySettings) -> None:
    """Run the gateway in the foreground; SIGTERM or SIGINT stops it cleanly."""
    logs.configure(settings.log_level, settings.log_format)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop=stop)

    with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
        try:
            runner.run(run())
        except StoreUnavailable as exc:
            log.error("cannot start: %s", exc.message)
            raise SystemExit(1) from None


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop costs less per wakeup, which is most of the ext_proc's time at low load."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None
