from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.core.errors import InvalidSpec, ModelNotFound
from gateway.core.placement import Solo
from tests.core.fakes import FakePod, FakePods
from tests.core.harness import harness, isvc, settle


async def test_apply_creates_then_is_unchanged_then_configured(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    record, action = await h.registry.apply(isvc())
    assert action == "created"
    assert record.serving.model_id.startswith("sklearn-mnist__isvc-")
    assert record.serving.predicted_size == 10  # 8 bytes on disk x 1.25
    assert (await h.registry.apply(isvc()))[1] == "unchanged"
    relabelled = isvc()
    relabelled["metadata"]["labels"] = {"team": "x"}
    record2, action = await h.registry.apply(relabelled)
    assert action == "configured" and record2.serving == record.serving


async def test_apply_ignores_the_metadata_the_server_sets(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    record, _ = await h.registry.apply(isvc())
    printed = isvc()  # as `mmgw get -o yaml` prints it, fed back to apply
    printed["metadata"].update(
        creationTimestamp="2020-01-01T00:00:00Z", resourceVersion="7", uid="u"
    )
    printed["status"] = {"conditions": []}
    again, action = await h.registry.apply(printed)
    assert action == "unchanged" and again == record
    assert "creationTimestamp" not in again.manifest["metadata"]


async def test_apply_loads_proactively_and_reports_ready(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    record, _ = await h.registry.apply(isvc())
    await settle()
    status = h.status(record)
    assert status["conditions"] == [{"type": "Ready", "status": "True"}]
    assert status["modelStatus"]["states"]["activeModelState"] == "Loaded"
    assert status["modelStatus"]["copies"]["totalCopies"] == 1
    assert h.registry.resolve("sklearn-mnist") == record.serving.model_id
    assert h.registry.resolve(record.serving.model_id) == record.serving.model_id


async def test_failed_load_shows_model_load_failed(tmp_path: Path) -> None:
    h = await harness(tmp_path, FakePods(a=FakePod(fail_loads="cannot open file")))
    record, _ = await h.registry.apply(isvc())
    await settle()
    ready = h.status(record)["conditions"][0]
    assert ready["status"] == "False" and ready["reason"] == "ModelLoadFailed"
    assert "cannot open file" in ready["message"]


async def test_bad_documents_leave_nothing_registered(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    no_format = isvc()
    del no_format["spec"]["predictor"]["model"]["modelFormat"]
    with pytest.raises(InvalidSpec, match="modelFormat"):
        await h.registry.apply(no_format)
    other_ns = isvc()
    other_ns["metadata"]["namespace"] = "default"
    with pytest.raises(InvalidSpec, match="serves namespace 'modelmesh-serving'"):
        await h.registry.apply(other_ns)
    assert h.registry.list() == []
    assert await h.store.items("") == {}
    with pytest.raises(ModelNotFound):
        h.registry.resolve("sklearn-mnist")


async def test_rolling_update_moves_traffic_once_loaded_then_unloads_the_old(
    tmp_path: Path,
) -> None:
    h = await harness(tmp_path)
    old, _ = await h.registry.apply(isvc())
    await settle()
    h.pods.gate = asyncio.Event()
    new, action = await h.registry.apply(isvc(path="v2.joblib"))
    assert action == "configured"
    assert new.target.model_id != old.serving.model_id
    await settle()
    # Loading: the name still routes to the old model, which stays loaded.
    assert h.registry.resolve("sklearn-mnist") == old.serving.model_id
    assert h.status(new)["modelStatus"]["transitionStatus"] == "InProgress"
    h.pods.gate.set()
    await settle()
    assert h.registry.resolve("sklearn-mnist") == new.target.model_id
    assert h.pods.unloads == [("10.0.0.1:9000", old.serving.model_id)]
    assert (
        h.status(h.registry.get("sklearn-mnist"))["modelStatus"]["transitionStatus"] == "UpToDate"
    )


async def test_blocked_rollout_keeps_the_old_version_serving(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    old, _ = await h.registry.apply(isvc())
    await settle()
    h.pods.pods["10.0.0.1:9000"].fail_loads = "corrupt file"
    new, _ = await h.registry.apply(isvc(path="v2.joblib"))
    await settle()
    assert h.registry.resolve("sklearn-mnist") == old.serving.model_id
    status = h.status(new)
    assert status["conditions"][0]["status"] == "True"
    assert status["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad"
    assert "corrupt file" in status["modelStatus"]["lastFailureInfo"]["message"]


async def test_delete_unloads_and_forgets(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    record, _ = await h.registry.apply(isvc())
    await settle()
    await h.registry.delete("sklearn-mnist")
    assert h.pods.unloads == [("10.0.0.1:9000", record.serving.model_id)]
    with pytest.raises(ModelNotFound):
        h.registry.resolve("sklearn-mnist")
    with pytest.raises(ModelNotFound):
        await h.registry.delete("sklearn-mnist")


async def test_restart_keeps_registrations_and_adopts_loaded_copies(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    record, _ = await h.registry.apply(isvc())
    await settle()
    await h.store.close()
    # A new gateway over the same store and the same (still running) pods.
    again = await harness(tmp_path, h.pods)
    assert [r.name for r in again.registry.list()] == ["sklearn-mnist"]
    assert again.placement.lookup(record.serving.model_id) == "10.0.0.1:9000"
    assert len(h.pods.loads) == 1  # nothing loaded twice


async def test_a_rollout_loads_as_many_copies_as_the_old_version_had(tmp_path: Path) -> None:
    pods = FakePods(a=FakePod(), b=FakePod(), c=FakePod())
    h = await harness(tmp_path, pods)
    old, _ = await h.registry.apply(isvc())
    await settle()
    assert await h.placement.ensure_copies(old.serving.model_id, 2) == 2
    new, _ = await h.registry.apply(isvc(path="v2.joblib"))
    for _ in range(10):
        await settle()
    assert h.registry.resolve("sklearn-mnist") == new.target.model_id
    assert h.placement.status(new.target.model_id).copies == 2


async def test_the_old_version_is_unloaded_only_after_the_grace(tmp_path: Path) -> None:
    h = await harness(tmp_path, grace=0.3)
    old, _ = await h.registry.apply(isvc())
    await settle()
    new, _ = await h.registry.apply(isvc(path="v2.joblib"))
    for _ in range(10):
        await settle()
    assert h.registry.resolve("sklearn-mnist") == new.target.model_id  # traffic moved at once
    assert h.pods.unloads == []  # requests on their way to the old version still find it
    await asyncio.sleep(0.5)
    assert h.pods.unloads == [("10.0.0.1:9000", old.serving.model_id)]


async def test_models_registered_before_any_pod_is_up_load_when_one_comes(tmp_path: Path) -> None:
    pods = FakePods(a=FakePod(down=True))
    h = await harness(tmp_path, pods)
    record, _ = await h.registry.apply(isvc())
    await settle()
    ready = h.status(record)["conditions"][0]
    assert (
        ready["status"] == "False" and ready.get("reason") != "ModelLoadFailed"
    )  # pending, not failed
    pods.pods["a"].down = False
    await h.placement.check_pods()
    await settle()
    assert h.status(record)["conditions"][0]["status"] == "True"


class Claims:
    """Claims shared by gateway replicas, as the store keeps them under each replica's lease."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}  # key -> replica

    def replica(self, name: str) -> ClaimingReplica:
        return ClaimingReplica(self, name)


class ClaimingReplica(Solo):
    def __init__(self, claims: Claims, name: str) -> None:
        self.claims, self.name, self.alive = claims, name, True

    async def claim(self, key: str) -> bool:
        return self.alive and self.claims.held.setdefault(key, self.name) == self.name

    async def release(self, key: str) -> None:
        if self.alive and self.claims.held.get(key) == self.name:
            del self.claims.held[key]

    def die(self) -> None:
        """Killed: it releases nothing, and its lease expiring takes its claims."""
        self.alive = False
        self.claims.held = {k: v for k, v in self.claims.held.items() if v != self.name}


async def test_a_rollout_left_by_a_replica_that_died_is_finished_by_another(tmp_path: Path) -> None:
    claims = Claims()
    first = claims.replica("a")
    a = await harness(tmp_path, coordinator=first)
    old, _ = await a.registry.apply(isvc())
    await settle()
    a.pods.gate = asyncio.Event()  # the new version's load hangs
    new, _ = await a.registry.apply(isvc(path="v2.joblib"))
    await settle()
    assert claims.held == {f"rollout/{new.target.model_id}": "a"}
    # A second replica over the same store and pods: the rollout is a's, it only serves.
    b = await harness(tmp_path, a.pods, coordinator=claims.replica("b"))
    b.registry.rollouts.check()
    await settle()
    assert b.registry.resolve("sklearn-mnist") == old.serving.model_id
    assert claims.held == {f"rollout/{new.target.model_id}": "a"}

    first.die()
    await a.registry.close()
    b.registry.rollouts.check()  # what its watch does every rollout_check seconds
    a.pods.gate.set()
    for _ in range(10):
        await settle()
    assert b.registry.resolve("sklearn-mnist") == new.target.model_id
    assert b.registry.get("sklearn-mnist").serving == new.target
    assert (await b.store.items("inferenceservices/"))["inferenceservices/sklearn-mnist"][
        "serving"
    ]["model_id"] == new.target.model_id
    assert claims.held == {}
    assert (a.pods.pods["10.0.0.1:9000"].loaded.keys()) == {
        new.target.model_id
    }  # the old version unloaded


async def test_a_blocked_rollout_keeps_its_claim_until_the_next_apply(tmp_path: Path) -> None:
    claims = Claims()
    h = await harness(tmp_path, coordinator=claims.replica("a"))
    old, _ = await h.registry.apply(isvc())
    await settle()
    h.pods.pods["10.0.0.1:9000"].fail_loads = "corrupt file"
    new, _ = await h.registry.apply(isvc(path="v2.joblib"))
    await settle()
    assert claims.held == {f"rollout/{new.target.model_id}": "a"}  # nobody else retries it
    tried = len(h.pods.loads)
    h.registry.rollouts.check()
    await settle()
    assert len(h.pods.loads) == tried  # nor does this replica, until the next apply
    assert h.registry.resolve("sklearn-mnist") == old.serving.model_id
    back, _ = await h.registry.apply(isvc())  # back to the version that serves
    assert back.target == back.serving == old.serving
    h.registry.rollouts.check()
    await settle()
    assert claims.held == {}
