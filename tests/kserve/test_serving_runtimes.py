"""ServingRuntimes: parsing, KServe's runtime selection, the registry's reaction and the API."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.adapters.api import build_api
from gateway.core.errors import InvalidSpec, ModelNotFound, Unavailable
from gateway.core.route_key import RouteKey
from gateway.kserve.resources import parse_inference_service, parse_serving_runtime
from gateway.kserve.serving_runtimes import RuntimeRecord, select
from tests.core.fakes import FakePod, FakePods
from tests.core.harness import harness, isvc
from tests.documents import SEED_RUNTIME


def runtime(
    name: str, *formats: dict[str, Any], kind: str = "ServingRuntime", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "supportedModelFormats": list(formats),
            "multiModel": True,
            "containers": [{"name": "server", "image": "x"}],
            **spec,
        },
    }


def record(doc: dict[str, Any]) -> RuntimeRecord:
    return RuntimeRecord(parse_serving_runtime(doc), doc, 0.0)


def model(fmt: str = "sklearn", version: str | None = None, named: str | None = None) -> Any:
    doc = isvc()
    doc["spec"]["predictor"]["model"]["modelFormat"] = {
        "name": fmt,
        **({"version": version} if version else {}),
    }
    if named:
        doc["spec"]["predictor"]["model"]["runtime"] = named
    return parse_inference_service(doc).model


def isvc_of(name: str, fmt: str = "sklearn", named: str | None = None) -> dict[str, Any]:
    doc = isvc(name)
    doc["spec"]["predictor"]["model"]["modelFormat"] = {"name": fmt}
    if named:
        doc["spec"]["predictor"]["model"]["runtime"] = named
    return doc


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


# -- parsing --------------------------------------------------------------


def test_the_seed_runtime_parses_unchanged_and_keeps_every_field() -> None:
    parsed = parse_serving_runtime(copy.deepcopy(SEED_RUNTIME))
    assert parsed.name == "peft-model-server" and parsed.spec.multiModel
    assert parsed.model_dump(mode="json", exclude_unset=True) == SEED_RUNTIME
    assert (
        parsed.spec.builtInAdapter is not None
        and parsed.spec.builtInAdapter.memBufferBytes == 134217728
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(kind="ServingGadget"), "unsupported kind 'ServingGadget'"),
        (
            lambda d: d.update(apiVersion="serving.kserve.io/v1beta1"),
            "use serving.kserve.io/v1alpha1",
        ),
        (
            lambda d: d["metadata"].update(name="Bad_Name"),
            "metadata.name: String should match pattern",
        ),
        (lambda d: d["spec"].pop("containers"), "spec.containers: Field required"),
        (
            lambda d: d["spec"].update(containers=[]),
            "spec.containers: Tuple should have at least 1 item",
        ),
        (
            lambda d: d["spec"]["containers"][0].pop("name"),
            "spec.containers.0.name: Field required",
        ),
        (
            lambda d: d["spec"]["supportedModelFormats"][0].pop("name"),
            "supportedModelFormats.0.name: Field required",
        ),
        (
            lambda d: d["spec"]["supportedModelFormats"][0].update(priority=0),
            "priority: Input should be greater",
        ),
        (
            lambda d: d["spec"]["builtInAdapter"].update(runtimeManagementPort=70000),
            "runtimeManagementPort",
        ),
        (
            lambda d: d["spec"].update(multiModel="perhaps"),
            "spec.multiModel: Input should be a valid boolean",
        ),
    ],
)
def test_bad_runtimes_are_refused_with_the_field(change: Any, message: str) -> None:
    doc = copy.deepcopy(SEED_RUNTIME)
    change(doc)
    with pytest.raises(InvalidSpec, match=message):
        parse_serving_runtime(doc)
    with pytest.raises(InvalidSpec, match="must be a mapping"):
        parse_serving_runtime([doc])


def test_a_dotted_name_is_a_valid_runtime_name() -> None:
    assert (
        parse_serving_runtime(runtime("mlserver-1.x", kind="ClusterServingRuntime")).name
        == "mlserver-1.x"
    )


# -- selection ------------------------------------------------------------

SK = {"name": "sklearn", "autoSelect": True}


def test_auto_selection_takes_the_highest_priority_then_namespaced_then_name() -> None:
    low = record(runtime("a-low", {**SK, "priority": 1}))
    high = record(runtime("z-high", {**SK, "priority": 5}))
    cluster_high = record(runtime("c-high", {**SK, "priority": 5}, kind="ClusterServingRuntime"))
    assert select(model(), [low, high], [cluster_high]).runtime is high
    assert select(model(), [low], [cluster_high]).runtime is cluster_high
    b, a = record(runtime("b", SK)), record(runtime("a", SK))
    assert select(model(), [b, a], []).runtime is a
    cluster_a = record(runtime("a", SK, kind="ClusterServingRuntime"))
    assert (
        select(model(), [b], [cluster_a]).runtime.name == "b"
    )  # namespaced first at equal priority
    assert select(model("SKLearn"), [a], []).runtime is a  # format names compare case-insensitively


def test_auto_selection_skips_disabled_single_model_and_not_auto_selected_runtimes() -> None:
    runtimes = [
        record(runtime("off", SK, disabled=True)),
        record(runtime("single", SK, multiModel=False)),
        record(runtime("manual", {"name": "sklearn"})),
    ]
    chosen = select(model(), runtimes, [])
    assert chosen.runtime is None and chosen.reason == "NoSupportingRuntime"
    assert chosen.message == "no runtime supports model format 'sklearn' with autoSelect"


def test_a_version_given_must_match() -> None:
    v1 = record(runtime("v1", {**SK, "version": "1"}))
    assert select(model(version="1"), [v1], []).runtime is v1
    assert select(model(), [v1], []).runtime is v1  # no version asked: any
    unversioned = record(runtime("any", SK))
    miss = select(model(version="2"), [v1, unversioned], [])
    assert miss.runtime is None and "model format 'sklearn' version '2'" in miss.message


def test_a_named_runtime() -> None:
    ns = record(runtime("mine", {"name": "sklearn"}))  # autoSelect not needed when named
    cluster = record(runtime("mine", SK, kind="ClusterServingRuntime"))
    assert select(model(named="mine"), [ns], [cluster]).runtime is ns  # namespaced first
    assert select(model(named="mine"), [], [cluster]).runtime is cluster
    missing = select(model(named="nowhere"), [ns], [cluster])
    assert (missing.runtime, missing.reason) == (
        None,
        "RuntimeNotRecognized",
    ) and "'nowhere'" in missing.message
    wrong = select(model("onnx", named="mine"), [ns], [])
    assert wrong.reason == "NoSupportingRuntime"
    assert wrong.message == "ServingRuntime 'mine' does not support model format 'onnx'"
    disabled = select(model(named="off"), [record(runtime("off", SK, disabled=True))], [])
    assert (
        disabled.reason == "RuntimeDisabled"
        and disabled.message == "ServingRuntime 'off' is disabled"
    )
    single = select(model(named="one"), [record(runtime("one", SK, multiModel=False))], [])
    assert single.reason == "NoSupportingRuntime" and "is not multiModel" in single.message


# -- registry -------------------------------------------------------------


async def test_built_in_runtimes_serve_every_pod_format(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    names = [r.name for r in h.registry.runtimes.list("ClusterServingRuntime")]
    assert names == ["huggingface-peft", "mlserver-1.x", "mmgw-synthetic", "triton-2.x"]
    assert h.registry.runtimes.list("ServingRuntime") == []
    assert await h.store.items("") == {}  # present, not stored
    for fmt, expected in [
        ("sklearn", "mlserver-1.x"),
        ("xgboost", "mlserver-1.x"),
        ("lightgbm", "mlserver-1.x"),
        ("onnx", "triton-2.x"),
        ("pytorch", "triton-2.x"),
        ("synthetic", "mmgw-synthetic"),
    ]:
        assert h.registry.runtimes.select(model(fmt)).runtime.name == expected
    # an adapter gets the language model runtime by its format; its base must name it
    adapter = isvc_of("tuned", "lora")
    adapter["metadata"]["annotations"]["mmgw.io/base-model"] = "tiny-lm"
    tuned = parse_inference_service(adapter)
    assert h.registry.runtimes.select(tuned.model).runtime.name == "huggingface-peft"
    assert h.registry.runtimes.select(model("peft-model")).runtime is None
    record_, _ = await h.registry.apply(isvc())
    assert h.status(record_)["runtime"] == {
        "kind": "ClusterServingRuntime",
        "name": "mlserver-1.x",
    }


async def test_runtimes_are_stored_restored_applied_and_deleted(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    rec, action = await h.registry.apply_runtime(copy.deepcopy(SEED_RUNTIME))
    assert action == "created" and rec.manifest == SEED_RUNTIME
    assert (await h.registry.apply_runtime(copy.deepcopy(SEED_RUNTIME)))[1] == "unchanged"
    printed = copy.deepcopy(SEED_RUNTIME)
    printed["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    assert (await h.registry.apply_runtime(printed))[1] == "unchanged"
    changed = copy.deepcopy(SEED_RUNTIME)
    changed["spec"]["disabled"] = True
    assert (await h.registry.apply_runtime(changed))[1] == "configured"
    cluster, _ = await h.registry.apply_runtime(runtime("shared", SK, kind="ClusterServingRuntime"))
    assert "namespace" not in cluster.manifest["metadata"]
    assert set(await h.store.items("")) == {
        "servingruntimes/peft-model-server",
        "clusterservingruntimes/shared",
    }
    await h.store.close()

    again = await harness(tmp_path, h.pods)
    assert again.registry.runtimes.get("ServingRuntime", "peft-model-server").runtime.spec.disabled
    assert "shared" in [r.name for r in again.registry.runtimes.list("ClusterServingRuntime")]
    await again.registry.delete_runtime("ServingRuntime", "peft-model-server")
    with pytest.raises(
        ModelNotFound, match="servingruntimes.serving.kserve.io 'peft-model-server' not found"
    ):
        again.registry.runtimes.get("ServingRuntime", "peft-model-server")
    with pytest.raises(ModelNotFound):
        await again.registry.delete_runtime("ServingRuntime", "peft-model-server")
    with pytest.raises(InvalidSpec, match="is built in"):
        await again.registry.delete_runtime("ClusterServingRuntime", "mlserver-1.x")
    other_ns = copy.deepcopy(SEED_RUNTIME)
    other_ns["metadata"]["namespace"] = "default"
    with pytest.raises(InvalidSpec, match="serves namespace 'modelmesh-serving'"):
        await again.registry.apply_runtime(other_ns)


async def test_a_built_in_runtime_can_be_replaced_and_comes_back_when_deleted(
    tmp_path: Path,
) -> None:
    h = await harness(tmp_path)
    rec, _ = await h.registry.apply(isvc())
    await settle()
    await h.registry.apply_runtime(
        runtime(
            "mlserver-1.x", {"name": "xgboost", "autoSelect": True}, kind="ClusterServingRuntime"
        )
    )
    status = h.status(h.registry.get("sklearn-mnist"))
    assert status["conditions"][0]["reason"] == "NoSupportingRuntime"
    assert h.pods.unloads == [
        ("10.0.0.1:9000", rec.serving.model_id)
    ]  # withdrawn: unloaded, unrouted
    with pytest.raises(ModelNotFound, match="no serving runtime"):
        h.registry.resolve("sklearn-mnist")
    await h.registry.delete_runtime("ClusterServingRuntime", "mlserver-1.x")
    await settle()
    assert h.status(h.registry.get("sklearn-mnist"))["conditions"][0]["status"] == "True"


async def test_no_supporting_runtime_is_stored_not_ready_and_never_loaded(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    rec, action = await h.registry.apply(isvc_of("peft", "peft-model"))
    assert action == "created"
    await settle()
    assert h.pods.loads == [] and not h.placement.is_registered(rec.serving.model_id)
    assert "inferenceservices/peft" in await h.store.items("")
    status = h.status(rec)
    assert status["conditions"] == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "NoSupportingRuntime",
            "message": "no runtime supports model format 'peft-model' with autoSelect",
        }
    ]
    assert status["modelStatus"]["transitionStatus"] == "InvalidSpec"
    assert status["modelStatus"]["lastFailureInfo"]["reason"] == "NoSupportingRuntime"
    assert "runtime" not in status
    with pytest.raises(
        ModelNotFound, match=r"model 'peft' has no serving runtime \(NoSupportingRuntime\)"
    ):
        h.registry.resolve("peft")
    with pytest.raises(ModelNotFound, match="is not registered"):
        h.registry.resolve(rec.serving.model_id)

    # A runtime for the format arrives: the model is registered and routed, but no
    # pod of that runtime is up (the fake pod serves only sklearn): RuntimeUnhealthy.
    await h.registry.apply_runtime(copy.deepcopy(SEED_RUNTIME))
    await settle()
    assert h.placement.is_registered(rec.serving.model_id)
    assert h.registry.resolve("peft") == rec.serving.model_id
    status = h.status(rec)
    assert status["runtime"] == {"kind": "ServingRuntime", "name": "peft-model-server"}
    assert status["conditions"][0]["reason"] == "RuntimeUnhealthy"

    # Disabled again: withdrawn and unloaded, still stored.
    disabled = copy.deepcopy(SEED_RUNTIME)
    disabled["spec"]["disabled"] = True
    await h.registry.apply_runtime(disabled)
    assert not h.placement.is_registered(rec.serving.model_id)
    with pytest.raises(ModelNotFound, match="no serving runtime"):
        h.registry.resolve("peft")
    await h.registry.delete("peft")
    assert await h.store.items("inferenceservices/") == {}


async def test_a_named_runtime_that_is_missing_or_wrong(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    missing, _ = await h.registry.apply(isvc_of("named", named="nowhere"))
    ready = h.status(missing)["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "RuntimeNotRecognized")
    wrong, action = await h.registry.apply(isvc_of("named", named="triton-2.x"))
    assert action == "configured"
    ready = h.status(wrong)["conditions"][0]
    assert ready["reason"] == "NoSupportingRuntime"
    assert (
        ready["message"]
        == "ClusterServingRuntime 'triton-2.x' does not support model format 'sklearn'"
    )
    right, _ = await h.registry.apply(isvc_of("named", named="mlserver-1.x"))
    await settle()
    assert h.status(right)["conditions"][0]["status"] == "True"
    assert h.registry.resolve("named") == right.serving.model_id
    # Back to a missing runtime: unloaded and unrouted.
    await h.registry.apply(isvc_of("named", named="nowhere"))
    assert h.pods.unloads == [("10.0.0.1:9000", right.serving.model_id)]
    with pytest.raises(ModelNotFound, match="RuntimeNotRecognized"):
        h.registry.resolve("named")


async def test_a_model_without_runtime_stays_unregistered_after_a_restart(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    rec, _ = await h.registry.apply(isvc_of("peft", "peft-model"))
    await h.store.close()
    again = await harness(tmp_path, h.pods)
    assert not again.placement.is_registered(rec.serving.model_id)
    assert (
        again.status(again.registry.get("peft"))["conditions"][0]["reason"] == "NoSupportingRuntime"
    )


# -- API ------------------------------------------------------------------

SRS = "/apis/serving.kserve.io/v1alpha1/namespaces/modelmesh-serving/servingruntimes"
CSRS = "/apis/serving.kserve.io/v1alpha1/clusterservingruntimes"


async def test_the_api_in_kubernetes_shape(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    app = build_api(h.registry, h.placement, namespace="modelmesh-serving")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as api:
        response = await api.put(f"{SRS}/peft-model-server", json=SEED_RUNTIME)
        assert response.status_code == 201 and response.headers["mmgw-apply-result"] == "created"
        assert (await api.put(f"{SRS}/peft-model-server", json=SEED_RUNTIME)).headers[
            "mmgw-apply-result"
        ] == "unchanged"
        item = (await api.get(f"{SRS}/peft-model-server")).json()
        assert item["spec"] == SEED_RUNTIME["spec"] and item["metadata"][
            "creationTimestamp"
        ].endswith("Z")
        listed = (await api.get(SRS)).json()
        assert listed["kind"] == "ServingRuntimeList" and [
            i["metadata"]["name"] for i in listed["items"]
        ] == ["peft-model-server"]
        cluster = (await api.get(CSRS)).json()
        assert [i["metadata"]["name"] for i in cluster["items"]] == [
            "huggingface-peft",
            "mlserver-1.x",
            "mmgw-synthetic",
            "triton-2.x",
        ]

        wrong_kind = await api.put(f"{CSRS}/peft-model-server", json=SEED_RUNTIME)
        assert (
            wrong_kind.status_code == 400
            and "kind must be ClusterServingRuntime" in wrong_kind.json()["message"]
        )
        bad = copy.deepcopy(SEED_RUNTIME)
        del bad["spec"]["containers"]
        refused = await api.put(f"{SRS}/peft-model-server", json=bad)
        assert refused.status_code == 400 and refused.json()["reason"] == "BadRequest"
        assert "spec.containers: Field required" in refused.json()["message"]
        assert (
            await api.get("/apis/serving.kserve.io/v1alpha1/namespaces/default/servingruntimes")
        ).status_code == 400
        renamed = await api.put(f"{SRS}/other", json=SEED_RUNTIME)
        assert (
            renamed.status_code == 400
            and "metadata.name must be 'other'" in renamed.json()["message"]
        )

        deleted = await api.delete(f"{SRS}/peft-model-server")
        assert deleted.json()["details"] == {"name": "peft-model-server", "kind": "servingruntimes"}
        gone = await api.get(f"{SRS}/peft-model-server")
        assert gone.status_code == 404 and gone.json()["reason"] == "NotFound"
        assert (await api.delete(f"{CSRS}/mlserver-1.x")).status_code == 400

        await api.put(
            "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices/peft",
            json=isvc_of("peft", "peft-model"),
        )
        isvc_item = (
            await api.get(
                "/apis/serving.kserve.io/v1beta1/namespaces/modelmesh-serving/inferenceservices/peft"
            )
        ).json()
        assert isvc_item["status"]["conditions"][0]["reason"] == "NoSupportingRuntime"


async def test_a_model_goes_only_to_pods_of_its_runtime_and_is_runtime_unhealthy_without_one(
    tmp_path: Path,
) -> None:
    pods = FakePods(**{"10.0.0.1:9000": FakePod(), "10.0.0.2:9000": FakePod()})
    h = await harness(tmp_path, pods)
    h.placement.add_pod("10.0.0.1:9000", "pod-a", runtime="mlserver-1.x")
    h.placement.add_pod("10.0.0.2:9000", "pod-b", runtime="other-runtime")
    await h.registry.apply_runtime(
        runtime(
            "my-sklearn", {"name": "sklearn", "autoSelect": True, "priority": 9}, multiModel=True
        )
    )
    record_, _ = await h.registry.apply(isvc())  # selects my-sklearn: no pod of it is up
    await settle()
    assert pods.loads == []
    condition = h.status(record_)["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("False", "RuntimeUnhealthy")
    assert (
        "no pod of runtime 'my-sklearn' that serves format 'sklearn' is up" in condition["message"]
    )
    with pytest.raises(Unavailable, match="no runtime pod of runtime 'my-sklearn'"):
        await h.router.route(RouteKey("sklearn-mnist", grpc=False))

    await h.registry.delete_runtime(
        "ServingRuntime", "my-sklearn"
    )  # back to mlserver-1.x: pod-a only
    await settle()
    assert await h.router.route(RouteKey("sklearn-mnist", grpc=False)) is not None
    assert {pod for pod, _ in pods.loads} == {"10.0.0.1:9000"}
    assert h.status(h.registry.get("sklearn-mnist"))["conditions"][0]["status"] == "True"


async def test_the_api_refuses_a_body_over_3_mib_and_json_nested_too_deep(tmp_path: Path) -> None:
    h = await harness(tmp_path)
    app = build_api(h.registry, h.placement, namespace="modelmesh-serving")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as api:
        big = b'{"spec": "' + b"x" * (3 << 20) + b'"}'
        response = await api.put(f"{SRS}/too-big", content=big)
        assert response.status_code == 413
        assert response.json()["reason"] == "RequestEntityTooLarge"
        assert "larger than 3 MiB" in response.json()["message"]
        deep = b"[" * 100_000 + b"]" * 100_000
        response = await api.put(f"{SRS}/too-deep", content=deep)
        assert response.status_code == 400 and "nested too deeply" in response.json()["message"]
        assert (await api.get(SRS)).json()["items"] == []  # nothing was stored
