"""Weighted splits across InferenceServices, as Seldon Core 2's Experiment (issue 15,
item 2): requests for the public name are split by weight among the candidates that are
ready, counted over 10,000 routed requests; bad documents are refused at apply, naming
the problem, with nothing stored."""

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

REQUESTS = 10_000
PUBLIC = RouteKey("mnist-ab", grpc=False)


def experiment(*candidates: tuple[str, int], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "mnist-ab"},
        "spec": {"candidates": [{"name": n, "weight": w} for n, w in candidates], **spec},
    }


@pytest.fixture
async def two(tmp_path: Path) -> tuple[Harness, Router, dict[str, str]]:
    """InferenceServices mnist-a and mnist-b, loaded; their concrete ids by name."""
    h = await harness(tmp_path)
    ids = {}
    for name, path in (("mnist-a", "mnist-svm.joblib"), ("mnist-b", "v2.joblib")):
        record, _ = await h.registry.apply(isvc(name, path))
        ids[name] = record.serving.model_id
    await settle()
    return h, Router(h.registry, h.placement, random=random.Random(2).random), ids


async def _served(router: Router, key: RouteKey = PUBLIC) -> Counter[str]:
    return await routed(router, key, REQUESTS)


async def test_a_70_30_split_lands_within_one_and_a_half_points(
    two: tuple[Harness, Router, dict[str, str]],
) -> None:
    h, router, ids = two
    _, action = await h.registry.apply_experiment(experiment(("mnist-a", 70), ("mnist-b", 30)))
    assert action == "created"
    served = await _served(router)
    share = 100 * served[ids["mnist-a"]] / REQUESTS
    print(f"70/30 experiment: {served[ids['mnist-a']]} / {served[ids['mnist-b']]} of {REQUESTS}")
    assert abs(share - 70) <= 1.5 and sum(served.values()) == REQUESTS
    # a candidate's own name still reaches only that candidate
    assert await _served(router, RouteKey("mnist-b", grpc=False)) == Counter(
        {ids["mnist-b"]: REQUESTS}
    )


async def test_a_candidate_that_is_not_ready_gets_none_and_the_default_serves_meanwhile(
    tmp_path: Path,
) -> None:
    h = await harness(tmp_path)
    a, _ = await h.registry.apply(isvc("mnist-a", "mnist-svm.joblib"))
    await settle()
    h.pods.gate = asyncio.Event()  # mnist-b's load hangs
    b, _ = await h.registry.apply(isvc("mnist-b", "v2.joblib"))
    await settle()
    await h.registry.apply_experiment(experiment(("mnist-a", 50), ("mnist-b", 50)))
    router = Router(h.registry, h.placement, random=random.Random(3).random)
    assert await _served(router) == Counter({a.serving.model_id: REQUESTS})
    h.pods.gate.set()
    await settle()
    served = await _served(router)
    assert abs(100 * served[b.serving.model_id] / REQUESTS - 50) <= 1.5


async def test_a_pin_names_a_candidates_version(
    two: tuple[Harness, Router, dict[str, str]],
) -> None:
    h, router, ids = two
    await h.registry.apply_experiment(experiment(("mnist-a", 50), ("mnist-b", 50)))
    pinned = RouteKey("mnist-ab", grpc=False, variant=ids["mnist-b"])
    assert await _served(router, pinned) == Counter({ids["mnist-b"]: REQUESTS})
    stale = RouteKey("mnist-ab", grpc=False, variant="mnist-a__isvc-0000000000")
    assert sum((await _served(router, stale)).values()) == REQUESTS  # drawn again
    with pytest.raises(InvalidInput, match="not a version of any candidate of experiment"):
        await router.route(RouteKey("mnist-ab", grpc=False, variant="iris__isvc-1"))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (experiment(("mnist-a", -1), ("mnist-b", 1)), "candidates.0.weight"),
        (experiment(("mnist-a", 0), ("mnist-b", 0)), "every weight is 0"),
        (experiment(("mnist-a", 1), ("mnist-a", 1)), "mnist-a named more than once"),
        (experiment(("mnist-a", 1), ("mnist-c", 1)), "mnist-c: no InferenceService"),
        (experiment(("mnist-a", 1), default="mnist-b"), "default: 'mnist-b' is not one of"),
        (
            experiment(("mnist-a", 1), ("mnist-b", 1), mirror={"name": "mnist-b", "percent": 5}),
            "mirror: 'mnist-b' is also a candidate",
        ),
        (experiment(("mnist-a", 1), mirror={"name": "mnist-b", "percent": 101}), "mirror.percent"),
        (experiment(("mnist-a", 1), mirror={"name": "mnist-z", "percent": 5}), "mnist-z: no Infer"),
        (experiment(), "candidates"),
        ({**experiment(("mnist-a", 1)), "apiVersion": "mlops.seldon.io/v2"}, "apiVersion"),
    ],
    ids=[
        "negative",
        "all-zero",
        "duplicate",
        "unknown",
        "default-not-candidate",
        "mirror-is-candidate",
        "mirror-percent",
        "mirror-unknown",
        "none",
        "api-version",
    ],
)
async def test_a_bad_experiment_is_refused_naming_the_problem(
    two: tuple[Harness, Router, dict[str, str]], document: dict[str, Any], message: str
) -> None:
    h, _, _ = two
    with pytest.raises(InvalidSpec, match=message):
        await h.registry.apply_experiment(document)
    assert h.registry.experiments.list() == []
    assert await h.store.items("experiments/") == {}


async def test_a_public_name_and_an_inference_service_name_never_collide(
    two: tuple[Harness, Router, dict[str, str]],
) -> None:
    h, _, _ = two
    taken = experiment(("mnist-a", 1))
    taken["metadata"]["name"] = "mnist-b"
    with pytest.raises(InvalidSpec, match="'mnist-b' is an InferenceService"):
        await h.registry.apply_experiment(taken)
    await h.registry.apply_experiment(experiment(("mnist-a", 1)))
    with pytest.raises(InvalidSpec, match="'mnist-ab' is an Experiment's public name"):
        await h.registry.apply(isvc("mnist-ab"))


async def test_another_replica_reads_the_experiment_from_the_store(
    two: tuple[Harness, Router, dict[str, str]], tmp_path: Path
) -> None:
    h, _, ids = two
    await h.registry.apply_experiment(experiment(("mnist-a", 20), ("mnist-b", 80)))
    other = await harness(tmp_path, h.pods)
    served = await _served(Router(other.registry, other.placement, random=random.Random(4).random))
    assert abs(100 * served[ids["mnist-b"]] / REQUESTS - 80) <= 1.5
    await h.registry.delete_experiment("mnist-ab")
    assert h.registry.experiments.split("mnist-ab") is None
