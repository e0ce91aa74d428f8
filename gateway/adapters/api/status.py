"""An InferenceService's status in KServe's shape, from the registry's view of it.

What ``kubectl get isvc -o yaml`` shows for ModelMesh: the Ready condition
(with KServe's and ModelMesh's reasons), ``url``, ``runtime``, and
``modelStatus`` (active and target model states, the transition, copies, the
last failure), and ``components.predictor`` (the revisions, which are concrete
ids, and the traffic split between them during a canary). ``served`` is ours:
what a public name served, per variant, since the gateway started (Envoy's
access log; the same figures as mmgw_api_request_seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.control.records import ServingView
from gateway.core.domain import ModelState
from gateway.core.traffic import VariantTotals
from gateway.kserve.serving_runtimes import RUNTIME_UNHEALTHY


def render(view: ServingView, public_url: str) -> dict[str, Any]:
    """The ``status`` of ``view.record``; ``public_url``: where users reach the gateway."""
    record = view.record
    url = f"{public_url}/v2/models/{record.name}"
    if view.problem is not None or view.runtime is None or view.serving is None:
        reason, message = view.problem or ("ModelNotReady", "")
        return _invalid(url, reason, message)
    serving, target = view.serving, view.target or view.serving
    runtime = view.runtime
    if record.target == record.serving:
        transition = "UpToDate"
    elif target.state is ModelState.FAILED_TO_LOAD:
        transition = "BlockedByFailedLoad"
    else:
        transition = "InProgress"
    failed = next((s for s in (target, serving) if s.state is ModelState.FAILED_TO_LOAD), None)
    condition: dict[str, Any] = {"type": "Ready", "status": "True" if serving.ready else "False"}
    if not serving.ready:
        if serving.state is ModelState.FAILED_TO_LOAD:
            condition.update(reason="ModelLoadFailed", message=serving.message)
        elif not view.runtime_up:
            condition.update(
                reason=RUNTIME_UNHEALTHY,
                message=(
                    f"no pod of runtime '{runtime.name}' that serves format "
                    f"'{record.serving.model_type}' is up (start one: mmgw pod --runtime-name "
                    f"{runtime.name})"
                ),
            )
        else:
            condition.update(reason="ModelNotReady", message=f"model is {serving.state.value}")
    status: dict[str, Any] = {
        "conditions": [condition],
        "url": url,
        "runtime": {"kind": runtime.kind, "name": runtime.name},
        "modelStatus": {
            "states": {
                "activeModelState": serving.state.value,
                "targetModelState": "" if record.target == record.serving else target.state.value,
            },
            "transitionStatus": transition,
            "copies": {"totalCopies": serving.copies},
        },
    }
    status["components"] = {"predictor": _predictor(view, serving.ready, target.ready)}
    if failed is not None:
        status["modelStatus"]["lastFailureInfo"] = {
            "reason": "ModelLoadFailed",
            "message": failed.message,
        }
    return status


def _predictor(view: ServingView, serving_ready: bool, latest_ready: bool) -> dict[str, Any]:
    """KServe's ``status.components.predictor``: the revisions (concrete ids) and how
    traffic is split between them now (the router's rule: Registry.canary)."""
    record = view.record
    serving, latest = record.serving.model_id, record.target.model_id
    predictor: dict[str, Any] = {
        "latestCreatedRevision": latest,
        "latestRolledoutRevision": serving,
    }
    ready = latest if latest_ready else serving if serving_ready else None
    if ready is not None:
        predictor["latestReadyRevision"] = ready
    if latest == serving:
        traffic = [{"revisionName": serving, "latestRevision": True, "percent": 100}]
    else:
        share = view.canary_share or 0  # a rollout under way, not held: 0 until it moves
        traffic = [
            {"tag": "latest", "revisionName": latest, "latestRevision": True, "percent": share},
            {
                "tag": "prev",
                "revisionName": serving,
                "latestRevision": False,
                "percent": 100 - share,
            },
        ]
    predictor["traffic"] = traffic
    return predictor


def _invalid(url: str, reason: str, message: str) -> dict[str, Any]:
    """The status of an InferenceService that cannot be served as specified."""
    return {
        "conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": message}],
        "url": url,
        "modelStatus": {
            "states": {
                "activeModelState": "",
                "targetModelState": ModelState.FAILED_TO_LOAD.value,
            },
            "transitionStatus": "InvalidSpec",
            "copies": {"totalCopies": 0},
            "lastFailureInfo": {"reason": reason, "message": message},
        },
    }


def served(totals: Mapping[str, VariantTotals]) -> list[dict[str, Any]]:
    """``status.served``: per variant (a concrete id; "" for requests refused before a pod),
    its requests, the failed ones among them, and their mean latency."""
    return [
        {
            "variant": variant,
            "requests": total.requests,
            "errors": total.errors,
            "meanLatencyMs": round(total.mean_ms, 3),
        }
        for variant, total in totals.items()
    ]
