"""The management API: Kubernetes' REST shape for InferenceServices and ServingRuntimes
(``routes``), with statuses rendered as KServe shows them (``status``)."""

from gateway.adapters.api.routes import build_api

__all__ = ["build_api"]
