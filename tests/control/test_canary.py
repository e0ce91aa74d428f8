"""KServe's canaryTrafficPercent on the shared pool (issue 15, item 1): re-applying a
changed predictor with ``canaryTrafficPercent: N`` keeps the rolled-out version serving
and sends N% of requests to the new one once it is ready; 100 or no field promotes it
(the old one is unloaded), 0 sends it nothing. The router's draw is counted over 10,000
requests, as the issue asks (within 1.5 points)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.control.router import Router
from gateway.core.errors import InvalidInput, InvalidSpec
from gateway.core.route_key import RouteKey

from ..core.harness import Harness, harness, isvc, routed, settle

KEY = RouteKey("sklearn-mnist", grpc=False)
REQUESTS = 10_000


def canary(percent: int | None, path: str = "v2.joblib") -> dict[str, Any]:
    document = isvc(path=path)
    if percent is not None:
        document["spec"]["predictor"]["canaryTrafficPercent"] = percent
    return document


@pytest.fixture
async def rolled_out(tmp_path: Path) -> tuple[Harness, Router, str]:
    h = await harness(tmp_path)
    old, _ = await h.registry.apply(isvc())
    await settle()
    # a seeded draw: the counts below do not change from run to run
    router = Router(h.registry, h.placement, random=random.Random(15).random)
    return h, router, old.serving.model_id


async def test_a_ten_percent_canary_gets_ten_percent_once_it_is_ready(
    rolled_out: tuple[Harness, Router, str],
) -> None:
    h, router, old = rolled_out
    h.pods.gate = asyncio.Event()
    new, action = await h.registry.apply(canary(10))
    assert action == "configured" and new.serving.model_id == old
    latest = new.target.model_id
    await settle()
    loading = await routed(router, KEY, REQUESTS)  # loading: a canary that is not ready gets none
    assert loading == Counter({old: REQUESTS})
    predictor = h.status(new)["components"]["predictor"]
    assert [t["percent"] for t in predictor["traffic"]] == [0, 100]
    h.pods.gate.set()
    await settle()
    served = await routed(router, KEY, REQUESTS)
    share = 100 * served[latest] / REQUESTS
    print(f"10% canary: {served[latest]} of {REQUESTS} requests ({share:.2f}%)")
    assert abs(share - 10) <= 1.5 and served[old] + served[latest] == REQUESTS
    record = h.registry.get("sklearn-mnist")
    assert h.registry.resolve("sklearn-mnist") == old  # the rollout is held: nothing moved
    predictor = h.status(record)["components"]["predictor"]
    assert predictor["traffic"] == [
        {"tag": "latest", "revisionName": latest, "latestRevision": True, "percent": 10},
        {"tag": "prev", "revisionName": old, "latestRevision": False, "percent": 90},
    ]
    assert predictor["latestReadyRevision"] == latest
    assert predictor["latestRolledoutRevision"] == old
    assert h.pods.unloads == []  # both versions stay loaded


async def test_raising_the_percent_then_promoting_moves_everything_and_unloads_the_old(
    rolled_out: tuple[Harness, Router, str],
) -> None:
    h, router, old = rolled_out
    new, _ = await h.registry.apply(canary(10))
    await settle()
    await h.registry.apply(canary(70))  # the same spec: only the share changes
    await settle()
    latest = new.target.model_id
    served = await routed(router, KEY, REQUESTS)
    share = 100 * served[latest] / REQUESTS
    print(f"70% canary: {served[latest]} of {REQUESTS} ({share:.2f}%)")
    assert abs(share - 70) <= 1.5
    await h.registry.apply(canary(None))  # promote: the field removed
    await settle()
    assert h.registry.resolve("sklearn-mnist") == latest
    assert await routed(router, KEY, REQUESTS) == Counter({latest: REQUESTS})
    assert h.pods.unloads == [("10.0.0.1:9000", old)]
    traffic = h.status(h.registry.get("sklearn-mnist"))["components"]["predictor"]["traffic"]
    assert traffic == [{"revisionName": latest, "latestRevision": True, "percent": 100}]


async def test_zero_percent_rolls_back_and_the_old_spec_reapplied_drops_the_canary(
    rolled_out: tuple[Harness, Router, str],
) -> None:
    h, router, old = rolled_out
    new, _ = await h.registry.apply(canary(30))
    await settle()
    await h.registry.apply(canary(0))  # rolled back: the latest spec gets nothing
    await settle()
    assert await routed(router, KEY, REQUESTS) == Counter({old: REQUESTS})
    h.registry.rollouts.check()  # what every replica does every few seconds: still held
    await settle()
    assert h.registry.resolve("sklearn-mnist") == old
    await h.registry.apply(isvc())  # the rolled-out spec again: the canary goes
    await settle()
    assert h.pods.unloads == [("10.0.0.1:9000", new.target.model_id)]
    assert await routed(router, KEY, REQUESTS) == Counter({old: REQUESTS})


async def test_a_canary_that_fails_to_load_gets_no_traffic(
    rolled_out: tuple[Harness, Router, str],
) -> None:
    h, router, old = rolled_out
    h.pods.pods["10.0.0.1:9000"].fail_loads = "corrupt file"
    await h.registry.apply(canary(50))
    await settle()
    assert await routed(router, KEY, REQUESTS) == Counter({old: REQUESTS})


@pytest.mark.parametrize("percent", [-1, 101, "ten"])
async def test_a_percent_outside_0_to_100_is_refused_naming_the_field(
    rolled_out: tuple[Harness, Router, str], percent: Any
) -> None:
    h, _, old = rolled_out
    with pytest.raises(InvalidSpec, match="canaryTrafficPercent"):
        await h.registry.apply(canary(percent))
    assert h.registry.get("sklearn-mnist").target.model_id == old  # nothing half-applied


async def test_another_replica_reads_the_same_split_and_does_not_promote_it(
    rolled_out: tuple[Harness, Router, str], tmp_path: Path
) -> None:
    h, _, old = rolled_out
    new, _ = await h.registry.apply(canary(25))
    await settle()
    other = await harness(tmp_path, h.pods)  # a second replica over the same store
    assert other.registry.split("sklearn-mnist") == (new.target.model_id, 25)
    other.registry.rollouts.check()  # what its watch does every few seconds
    await settle()
    assert other.registry.resolve("sklearn-mnist") == old  # held, not rolled out
    router = Router(other.registry, other.placement, random=random.Random(1).random)
    served = await routed(router, KEY, REQUESTS)
    assert abs(100 * served[new.target.model_id] / REQUESTS - 25) <= 1.5


async def test_a_request_pinned_to_a_version_gets_it_and_a_stale_pin_is_drawn_again(
    rolled_out: tuple[Harness, Router, str],
) -> None:
    """x-mmgw-variant: a version the name serves now is honoured (pinning, and a sticky
    client sending back what it was served); a past version of the name is drawn again; a
    value that is no version of the name is a 400 naming its versions."""
    h, router, old = rolled_out
    new, _ = await h.registry.apply(canary(10))
    await settle()
    latest = new.target.model_id
    for variant in (latest, old):
        pinned = RouteKey("sklearn-mnist", grpc=False, variant=variant)
        chosen = Counter([(await router.route(pinned)).model_id for _ in range(1000)])
        assert chosen == Counter({variant: 1000})
    await h.registry.apply(canary(None))  # promoted: the old version is gone
    await settle()
    stale = RouteKey("sklearn-mnist", grpc=False, variant=old)
    assert (await router.route(stale)).model_id == latest
    other = RouteKey("sklearn-mnist", grpc=True, variant="iris__isvc-0000000000")
    with pytest.raises(InvalidInput, match=f"is not a version of 'sklearn-mnist' .*{latest}"):
        await router.route(other)


async def test_a_late_echo_of_an_older_write_does_not_bring_the_old_split_back(
    rolled_out: tuple[Harness, Router, str],
) -> None:
    """A replica's mirror brings back its own writes, sometimes late: the echo of the 50%
    apply, arriving after the rollback to 0%, briefly sent half the requests to the rolled
    back version again (seen through Envoy). Records count their writes; an older one is
    not taken in."""
    h, router, old = rolled_out
    await h.registry.apply(canary(50))
    await settle()
    stale = h.registry.get("sklearn-mnist").to_json()
    await h.registry.apply(canary(0))
    await settle()
    assert h.registry.get("sklearn-mnist").version == stale["version"] + 1
    (mirror,) = [m for m in h.registry.followers() if m.prefix == "inferenceservices/"]
    await h.store.put("inferenceservices/sklearn-mnist", stale)  # the older write, again
    await mirror.sync()  # reported to the registry as a change
    assert h.registry.split("sklearn-mnist") == (h.registry.get("sklearn-mnist").target.model_id, 0)
    assert await routed(router, KEY, REQUESTS) == Counter({old: REQUESTS})


async def test_undo_drops_a_canary_then_goes_back_to_the_spec_rolled_out_before(
    rolled_out: tuple[Harness, Router, str],
) -> None:
    """`mmgw rollout undo`: during a canary, back to the rolled-out spec (the latest is
    unloaded); after a promotion, back to the spec rolled out before it, and again to undo
    the undo, as `kubectl rollout undo` goes back and forth."""
    h, router, old = rolled_out
    new, _ = await h.registry.apply(canary(40))
    await settle()
    latest = new.target.model_id
    record, action = await h.registry.undo("sklearn-mnist")
    await settle()
    assert action == "configured" and record.target.model_id == old == record.serving.model_id
    assert h.registry.split("sklearn-mnist") is None
    assert ("10.0.0.1:9000", latest) in h.pods.unloads
    assert await routed(router, KEY, REQUESTS) == Counter({old: REQUESTS})
    await h.registry.apply(canary(None))  # rolled out all at once
    await settle()
    assert h.registry.resolve("sklearn-mnist") == latest
    await h.registry.undo("sklearn-mnist")  # back to the one before
    await settle()
    assert h.registry.resolve("sklearn-mnist") == old
    await h.registry.undo("sklearn-mnist")  # and forth
    await settle()
    assert h.registry.resolve("sklearn-mnist") == latest


async def test_undo_with_nothing_rolled_out_before_is_refused(
    rolled_out: tuple[Harness, Router, str],
) -> None:
    h, _, _ = rolled_out
    with pytest.raises(InvalidSpec, match="no earlier rolled-out version to go back to"):
        await h.registry.undo("sklearn-mnist")
