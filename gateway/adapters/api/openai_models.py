"""OpenAI's ``GET /v1/models``: the language models and adapters registered.

Envoy routes ``/v1/models`` on :8008 here. Listed: every InferenceService that can be
served and generates text (formats ``peft-model`` and ``lora``), as vLLM lists its base
model and LoRA adapters: ``{"id", "object": "model", "created", "owned_by", "root",
"parent"}``, where an adapter's ``parent`` is its base model's name (null for a base).
"""

from __future__ import annotations

from typing import Any

from gateway.control.records import ServingView
from gateway.core.protocol import TEXT_FORMATS

OWNER = "modelmesh-gateway"


def model_list(views: list[ServingView]) -> dict[str, Any]:
    data = []
    for view in views:
        spec = view.record.target
        if view.problem is not None or spec.model_type not in TEXT_FORMATS:
            continue
        data.append(
            {
                "id": view.record.name,
                "object": "model",
                "created": int(view.record.created),
                "owned_by": OWNER,
                "root": spec.base or view.record.name,
                "parent": spec.base or None,
            }
        )
    return {"object": "list", "data": data}
