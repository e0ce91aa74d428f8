"""A registry + placement over fake pods and a real embedded store, for core and adapter tests."""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapters.api.status import render as render_status
from gateway.control.records import Record, RegistrySettings
from gateway.control.registry import Registry
from gateway.control.router import Route, Router
from gateway.core.placement import Coordinator, Placement
from gateway.core.route_key import RouteKey
from gateway.kserve.resources import DEFAULT_PUBLIC_URL
from gateway.kserve.storage import StorageRoots
from gateway.store import EmbeddedStore
from tests.documents import SEED_ISVC

from .fakes import FakePod, FakePods


def isvc(name: str = "sklearn-mnist", path: str = "mnist-svm.joblib") -> dict[str, Any]:
    doc = copy.deepcopy(SEED_ISVC)
    doc["metadata"]["name"] = name
    doc["spec"]["predictor"]["model"]["storage"]["path"] = path
    return doc


@dataclass
class Harness:
    pods: FakePods
    placement: Placement
    registry: Registry
    router: Router
    store: EmbeddedStore

    def status(self, record: Record) -> dict[str, Any]:
        """The record's status as the management API renders it."""
        return render_status(self.registry.view(record), DEFAULT_PUBLIC_URL)


async def harness(
    tmp_path: Path,
    pods: FakePods | None = None,
    *,
    grace: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    coordinator: Coordinator | None = None,
) -> Harness:
    pvc = tmp_path / "pvc"
    pvc.mkdir(exist_ok=True)
    for name in ("mnist-svm.joblib", "v2.joblib"):
        (pvc / name).write_bytes(b"m" * 8)
    pods = pods or FakePods(**{"10.0.0.1:9000": FakePod()})
    placement = Placement(pods, clock=clock)
    for address in pods.pods:
        placement.add_pod(address)
    store = EmbeddedStore(tmp_path / "registry.db")
    registry = Registry(
        store,
        placement,
        StorageRoots({"my-models-pvc": pvc}),
        RegistrySettings(rollout_grace=grace),
        coordinator=coordinator,
    )
    await registry.restore()
    await placement.check_pods()
    return Harness(pods, placement, registry, Router(registry, placement), store)


async def settle() -> None:
    """Let the event loop run the tasks a call started (background loads, rollouts)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def routed(router: Router, key: RouteKey, count: int) -> Counter[str]:
    """Which concrete model each of ``count`` requests for ``key`` is routed to."""
    served: Counter[str] = Counter()
    for _ in range(count):
        route = await router.route(key)
        assert isinstance(route, Route) and route.model_id is not None
        served[route.model_id] += 1
    return served
