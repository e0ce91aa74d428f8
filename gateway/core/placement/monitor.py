"""Watching the pods: health, what each holds, request rates, copies by traffic.

Every ``health_interval``, and at once when a connection to a pod breaks, each
pod is asked for its status. A pod that refuses the connection loses its copies
at once (the next request loads them elsewhere); one that is connected but
answers nothing in time (busy, or hung) has its copies tried last, and loses
them after ``unresponsive_checks`` such checks in a row. A pod that (re)joins
has what it already holds adopted, and the requests in flight it reports are
kept for eviction. ``tick`` turns the routed counts into rates;
on the leader replica it also adds a copy of a model whose traffic per copy
stays above ``copy_rate_threshold`` (of an adapter whose requests in flight per
copy stay at ``adapter_busy_threshold`` or more, on another pod holding its base,
which gets a copy first if none has room), fits pods that run over capacity, unloads
what nobody registered and expires failure records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from gateway.core.domain import CopyState
from gateway.core.errors import PodUnresponsive
from gateway.core.placement.loader import Loader, in_background
from gateway.core.placement.ports import Coordinator, PodClient, PodStatus
from gateway.core.placement.table import ModelRecord, PodRecord, Table

log = logging.getLogger(__name__)


class Monitor:
    def __init__(
        self, table: Table, loader: Loader, client: PodClient, coordinator: Coordinator
    ) -> None:
        self._table = table
        self._loader = loader
        self._client = client
        self._coordinator = coordinator
        self._settings = table.settings
        self._pods = table.pods
        self._models = table.models
        self._strangers: dict[tuple[str, str], float] = {}  # (pod, model id) -> first seen
        self._last_tick = table.clock()
        # set when a connection to a pod broke: the pods are checked now, not at the interval
        self._disconnected = asyncio.Event()
        client.on_disconnect(lambda _address: self._disconnected.set())

    def remove_pod(self, address: str) -> None:
        """A pod left the pool (its registration is gone): its copies go with it."""
        pod = self._pods.pop(address, None)
        if pod is not None:
            log.info("pod %s left the pool with %d copies", pod.pod, len(pod.copies))
            self._table.lose_copies(pod)

    def observe(self, address: str, models: Mapping[str, int], *, serving: bool = True) -> None:
        """A pod's own list of what it holds (from its registration): take in loads
        and evictions other gateway replicas made there. ``serving`` False: the pod says it
        cannot serve now (its MLServer died): it leaves the pool at once, without waiting
        for a health check, and rejoins when a check finds it ready."""
        pod = self._pods.get(address)
        if pod is None:
            return
        pod.reported = dict(models)
        pod.unloading &= pod.reported.keys()
        if not serving:
            self._lose(pod, "it reports that it cannot serve")
        if not pod.healthy:
            return
        now = self._table.clock()
        for model_id, entry in list(pod.copies.items()):
            if (
                entry.state is CopyState.LOADED
                and model_id not in models
                and now - entry.loaded_at > self._settings.report_grace
            ):
                log.info(
                    "%s is gone from pod %s (unloaded by another gateway replica, or lost with its "
                    "model server)",
                    model_id,
                    pod.pod,
                )
                self._table.drop(pod, model_id)
        for model_id, size in models.items():
            model = self._models.get(model_id)
            if model is not None and model_id not in pod.copies and model_id not in pod.unloading:
                self._table.put(pod, model, CopyState.LOADED, size, now)
                model.ever_loaded, model.size = True, size
                model.arrived.set()

    async def watch_pods(self) -> None:
        """Check every pod's health, update rates and scale copies, every ``health_interval``;
        check the pods (only) again at once when a connection to one breaks."""
        loop = asyncio.get_running_loop()
        next_round = loop.time()
        while True:
            self._disconnected.clear()
            await self.check_pods()
            if loop.time() >= next_round:
                self.tick()
                next_round = loop.time() + self._settings.health_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._disconnected.wait(), next_round - loop.time())

    async def check_pods(self) -> None:
        await asyncio.gather(*(self._check(pod) for pod in list(self._pods.values())))

    async def _check(self, pod: PodRecord) -> None:
        try:
            status = await self._client.status(pod.address, self._settings.health_timeout)
        except PodUnresponsive as exc:  # busy or hung: dead only after several in a row
            pod.missed_checks += 1
            if pod.healthy and pod.missed_checks < self._settings.unresponsive_checks:
                log.warning(
                    "pod %s did not answer its health check (%s), %d of %d: its copies are "
                    "tried last",
                    pod.pod,
                    exc,
                    pod.missed_checks,
                    self._settings.unresponsive_checks,
                )
            else:
                self._lose(pod, f"{exc}, {pod.missed_checks} checks in a row")
            return
        except Exception as exc:  # a refused connection, or any other failure: gone
            self._lose(pod, str(exc))
            return
        if pod.missed_checks:
            if pod.healthy:
                log.info("pod %s answers its health checks again", pod.pod)
            pod.missed_checks = 0
        pod.capacity, pod.model_types = status.capacity, status.model_types
        pod.max_adapters, pod.adapter_capacity = status.max_adapters, status.adapter_capacity
        rest_address = _on_host(pod.address, status.rest_port)
        data_address = _on_host(pod.address, status.data_grpc_port)
        if (rest_address, data_address, status.model_named_in_request) != (
            pod.rest_address,
            pod.data_address,
            pod.named_in_request,
        ):  # routes made for the old ones must be made again
            pod.rest_address, pod.data_address = rest_address, data_address
            pod.named_in_request = status.model_named_in_request
            self._table.generation += 1
        if not pod.healthy:
            pod.healthy = True
            self._reconcile(pod, status)
            log.info(
                "pod %s is ready: capacity %d bytes, holding %d models",
                pod.pod,
                pod.capacity,
                len(pod.copies),
            )
            for model_id, model in self._models.items():  # registered while no pod could load them
                if not (
                    model.copies
                    or model.loading
                    or model.ever_loaded
                    or model.deferred
                    or model.last_error
                ):
                    self._loader.load_in_background(model_id)
        for model_id, entry in pod.copies.items():
            entry.inflight = status.inflight.get(model_id, 0)
        pod.reported = dict(status.loaded)
        pod.unloading &= pod.reported.keys()

    def _reconcile(self, pod: PodRecord, status: PodStatus) -> None:
        """Adopt what a (re)joining pod already holds (what nobody registered goes in ``tick``)."""
        for model_id in [m for m in pod.copies if m not in status.loaded]:
            self._table.drop(pod, model_id)
        now = self._table.clock()
        for model_id, size in status.loaded.items():
            model = self._models.get(model_id)
            if model is not None and model_id not in pod.copies and model_id not in pod.unloading:
                self._table.put(pod, model, CopyState.LOADED, size, now)
                model.ever_loaded = True

    def _lose(self, pod: PodRecord, reason: str) -> None:
        if pod.healthy:
            log.warning(
                "pod %s is unreachable (%s): dropping its %d copies",
                pod.pod,
                reason,
                len(pod.copies),
            )
            self._table.lose_copies(pod)

    def tick(self) -> None:
        """Update request rates and add a copy where traffic per copy stays high."""
        self._table.settle()
        now = self._table.clock()
        elapsed, self._last_tick = now - self._last_tick, now
        if elapsed <= 0:
            return
        for pod in self._pods.values():
            for entry in pod.copies.values():
                per_second = (entry.routed - entry.routed_at_tick) / elapsed
                entry.routed_at_tick = entry.routed
                entry.rate = 0.5 * entry.rate + 0.5 * per_second
        if not self._coordinator.leader():
            return  # the leader replica adds copies, fits pods and unloads strangers
        for pod in self._pods.values():
            if pod.healthy and pod.capacity and pod.view().used > pod.capacity:
                asyncio.ensure_future(self._loader.fit(pod))
        self._unload_strangers(now)
        for model_id, model in self._models.items():
            for failed_on, (when, _) in list(model.failures.items()):
                if now - when >= self._settings.failure_expiry:
                    del model.failures[failed_on]
                    in_background(self._coordinator.forgive(model_id, failed_on))
        threshold = self._settings.copy_rate_threshold
        queued = self._settings.adapter_busy_threshold
        for model in self._models.values():
            loaded = model.loaded()
            hot = bool(loaded) and (
                sum(e.rate for e in loaded) / len(loaded) > threshold
                or (bool(model.spec.base) and sum(e.busy() for e in loaded) / len(loaded) >= queued)
            )
            model.hot_ticks = model.hot_ticks + 1 if hot else 0
            if (
                model.hot_ticks >= self._settings.scale_ticks
                and model.adding is None
                and model.loading is None
            ):
                model.hot_ticks = 0
                model.adding = asyncio.ensure_future(self._scale_up(model))

    def _unload_strangers(self, now: float) -> None:
        """Unload models that pods hold but nobody has registered for ``stranger_grace`` seconds
        (deleted while a pod was away, or left by a replica that died)."""
        seen = set()
        for pod in self._pods.values():
            if not pod.healthy:
                continue
            for model_id in pod.reported.keys() - self._models.keys() - pod.unloading:
                key = (pod.address, model_id)
                seen.add(key)
                first = self._strangers.setdefault(key, now)
                if now - first >= self._settings.stranger_grace:
                    log.info("unloading %s from pod %s: no longer registered", model_id, pod.pod)
                    pod.unloading.add(model_id)
                    asyncio.ensure_future(self._loader.unload_quietly(pod, model_id))
        self._strangers = {k: v for k, v in self._strangers.items() if k in seen}

    async def _scale_up(self, model: ModelRecord) -> None:
        try:
            await self._loader.add_copy(model, "traffic per copy above the threshold")
        finally:
            model.adding = None


def _on_host(address: str, port: int) -> str:
    """ "host:port" of another listener of the pod at ``address`` (its REST listener, its data
    plane's server): the address's host with ``port``; "" for port 0 (it has none)."""
    return f"{address.rsplit(':', 1)[0]}:{port}" if port else ""
