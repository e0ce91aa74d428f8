"""The model repository extension's index (Triton's and MLServer's ``POST /v2/repository/index``).

Envoy routes ``/v2/repository/index`` on :8008 to the management API, so that
``tritonclient.http``'s ``get_model_repository_index()`` lists the registered
InferenceServices: ``[{"name", "version", "state", "reason"}]`` with Triton's
states. ModelMesh loads lazily, so a registered model that is not loaded now
(Standby, or Pending before its first load) is READY as KServe says it is: the
next request loads it. The request body may be ``{"ready": true}`` (only the
ready ones); errors are the Open Inference Protocol's ``{"error": ...}``.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.control.records import ServingView
from gateway.core.domain import ModelState
from gateway.core.errors import InvalidInput
from gateway.core.protocol import MODEL_VERSION

_STATES = {
    ModelState.PENDING: "LOADING",
    ModelState.LOADING: "LOADING",
    ModelState.LOADED: "READY",
    ModelState.STANDBY: "READY",
    ModelState.FAILED_TO_LOAD: "UNAVAILABLE",
}


def ready_only(body: bytes) -> bool:
    """The request's ``ready`` flag; an empty body is ``{}``."""
    if not body.strip():
        return False
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidInput('the request body must be a JSON object, e.g. {"ready": true}') from None
    if not isinstance(document, dict):
        raise InvalidInput('the request body must be a JSON object, e.g. {"ready": true}')
    ready = document.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("'ready' must be true or false")
    return ready


def index(views: list[ServingView], *, ready: bool) -> list[dict[str, Any]]:
    entries = []
    for view in views:
        serving = view.serving
        if view.problem is not None or serving is None:
            state, reason = "UNAVAILABLE", (view.problem or ("", ""))[1]
        else:
            state, reason = _STATES[serving.state], serving.message
        if ready and state != "READY":
            continue
        entries.append(
            {"name": view.record.name, "version": MODEL_VERSION, "state": state, "reason": reason}
        )
    return entries
