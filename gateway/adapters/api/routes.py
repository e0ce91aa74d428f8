"""The management API: InferenceServices in Kubernetes' REST shape, and the placement.

    PUT    /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}
    GET    /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices[/{name}]
    DELETE /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}
    PUT/GET/DELETE /apis/serving.kserve.io/v1alpha1/namespaces/{ns}/servingruntimes[/{name}]
    PUT/GET/DELETE /apis/serving.kserve.io/v1alpha1/clusterservingruntimes[/{name}]
    GET    /v1/placement
    GET    /                            the placement page (HTML); /docs: Swagger UI, offline
    GET    /api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name=NAME
    GET    /metrics                     Prometheus
    GET    /healthz

With a token (MMGW_API_TOKEN, required off loopback), every request but
/healthz (probes) and /metrics (Prometheus scrapes, read-only figures) needs
``Authorization: Bearer <token>``, else 401. Errors are Kubernetes Status objects; the table below maps core errors to
HTTP statuses. A request body is at most 3 MiB (Kubernetes' limit): 413 past it, before more
is read; a large body is parsed in a worker thread, so ext_proc on the same loop is not held up.
The apply result (created, configured, unchanged) is in the
``mmgw-apply-result`` response header, for the CLI to print as kubectl does.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.adapters.api import events as event_api
from gateway.adapters.api import repository
from gateway.adapters.api.openai_models import model_list as openai_models_list
from gateway.adapters.api.status import render as render_status
from gateway.adapters.api.status import served as served_status
from gateway.control.events import Event
from gateway.control.records import Record
from gateway.control.registry import Registry
from gateway.core.errors import (
    GatewayError,
    InvalidInput,
    InvalidSpec,
    ModelNotFound,
    Unavailable,
)
from gateway.core.placement import Placement
from gateway.core.traffic import VariantTotals
from gateway.kserve.documents import MAX_BYTES
from gateway.kserve.experiments import API_VERSION as EXPERIMENT_API_VERSION
from gateway.kserve.experiments import KIND as EXPERIMENT_KIND
from gateway.kserve.experiments import ExperimentRecord
from gateway.kserve.resources import (
    API_VERSION,
    CLUSTER_RUNTIME_KIND,
    DEFAULT_PUBLIC_URL,
    RUNTIME_API_VERSION,
    RUNTIME_KIND,
)
from gateway.kserve.serving_runtimes import RuntimeRecord

log = logging.getLogger(__name__)

ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices"
SR_PATH = "/apis/serving.kserve.io/v1alpha1/namespaces/{namespace}/servingruntimes"
CSR_PATH = "/apis/serving.kserve.io/v1alpha1/clusterservingruntimes"
EXPERIMENTS_PATH = "/apis/mlops.seldon.io/v1alpha1/namespaces/{namespace}/experiments"
APPLY_RESULT_HEADER = "mmgw-apply-result"

# core error -> (HTTP status, Kubernetes Status reason)
ERROR_TABLE: tuple[tuple[type[GatewayError], int, str], ...] = (
    (InvalidSpec, 400, "BadRequest"),
    (ModelNotFound, 404, "NotFound"),
    (Unavailable, 503, "ServiceUnavailable"),
)


# Open without the token: probes, Prometheus, the model repository index and OpenAI's model
# list (read-only; nothing there deploys code; they are what inference clients on :8008 may
# list).
# The placement page itself is open (it holds no data; it asks /v1/placement, with the
# token it is given, for the placement).
OPEN_PATHS = frozenset({"/", "/healthz", "/metrics", "/v2/repository/index", "/v1/models"})
PLACEMENT_PAGE = Path(__file__).parent / "static" / "placement.html"


def _status(
    code: int, reason: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return JSONResponse(body, status_code=code, headers=headers)


# Bodies under this are parsed on the event loop (microseconds); larger ones in a thread.
_INLINE_PARSE = 64 * 1024


class _TooLarge(Exception):
    """A request body past MAX_BYTES: 413, before more of it is read."""


async def capped_body(request: Request) -> bytes:
    """The request's body, read up to MAX_BYTES (Kubernetes' API server limit); _TooLarge past
    it, at once from Content-Length or as soon as the bytes pass it."""
    limit = MAX_BYTES
    message = f"the request body is larger than {limit // (1024 * 1024)} MiB, the API's limit"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(message)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(message)
        chunks.append(chunk)
    return b"".join(chunks)


def build_api(
    registry: Registry,
    placement: Placement,
    *,
    namespace: str,
    public_url: str = DEFAULT_PUBLIC_URL,
    metrics: Callable[[], bytes] | None = None,
    served: Callable[[str], Mapping[str, VariantTotals]] | None = None,
    events: Callable[[str], list[Event]] | None = None,
    token: str | None = None,
) -> FastAPI:
    """``served``: what a public name served, by variant (gateway.control.traffic), shown
    in the statuses of InferenceServices and Experiments as ``status.served``."""
    # Swagger UI at /docs from files that ship in a package (fastapi-offline), not a CDN
    app = FastAPIOffline(title="ModelMesh Gateway management API", docs_url="/docs", redoc_url=None)

    if token is not None:
        expected = f"Bearer {token}".encode()

        @app.middleware("http")
        async def _bearer_token(request: Request, call_next: Any) -> Response:
            if request.url.path in OPEN_PATHS:
                return await call_next(request)
            given = request.headers.get("authorization")
            if given is not None and hmac.compare_digest(given.encode(), expected):
                return await call_next(request)
            problem = (
                "the bearer token is not valid"
                if given
                else "the management API needs a bearer token"
            )
            return _status(
                401,
                "Unauthorized",
                f"{problem}: send 'Authorization: Bearer <token>' (mmgw --token or MMGW_TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(_TooLarge)
    async def _too_large(request: Request, exc: _TooLarge) -> JSONResponse:
        return _status(413, "RequestEntityTooLarge", str(exc), headers={"connection": "close"})

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        for kind, code, reason in ERROR_TABLE:
            if isinstance(exc, kind):
                return _status(code, reason, exc.message)
        return _status(500, "InternalError", exc.message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("management API: unexpected error", exc_info=exc)
        return _status(500, "InternalError", "internal error in the gateway")

    def check_namespace(ns: str) -> None:
        if ns != namespace:
            raise InvalidSpec(f"namespace '{ns}': this gateway serves namespace '{namespace}'")

    def timestamp(created: float) -> str:
        return (
            datetime.fromtimestamp(created, UTC)
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z")
        )

    def served_by(name: str) -> dict[str, Any]:
        """``status.served``, when ``name`` served any request."""
        totals = served(name) if served is not None else {}
        return {"served": served_status(totals)} if totals else {}

    def item(record: Record) -> dict[str, Any]:
        metadata = {**record.manifest["metadata"], "creationTimestamp": timestamp(record.created)}
        return {
            **record.manifest,
            "metadata": metadata,
            "status": {
                **render_status(registry.view(record), public_url),
                **served_by(record.name),
            },
        }

    def applied(body: dict[str, Any], action: str) -> JSONResponse:
        """An apply's answer: the resource, 201 when it was created, what happened."""
        return JSONResponse(
            body,
            status_code=201 if action == "created" else 200,
            headers={APPLY_RESULT_HEADER: action},
        )

    def deleted(name: str, plural: str) -> dict[str, Any]:
        """A delete's answer, a Kubernetes Status."""
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Success",
            "details": {"name": name, "kind": plural},
        }

    def runtime_item(record: RuntimeRecord) -> dict[str, Any]:
        return {
            **record.manifest,
            "metadata": {
                **record.manifest["metadata"],
                "creationTimestamp": timestamp(record.created),
            },
        }

    async def body_of(request: Request, name: str, namespace: str | None) -> dict[str, Any]:
        body = await capped_body(request)
        try:
            # a large body is parsed in a worker thread: the loop serves ext_proc meanwhile
            document = (
                json.loads(body)
                if len(body) < _INLINE_PARSE
                else await asyncio.to_thread(json.loads, body)
            )
        except ValueError as exc:
            raise InvalidSpec(f"the request body is not JSON: {exc}") from None
        except RecursionError:
            raise InvalidSpec("the request body is JSON nested too deeply") from None
        if not isinstance(document, dict):
            raise InvalidSpec("the request body must be one resource (a JSON object)")
        metadata = document.setdefault("metadata", {})
        if not isinstance(metadata, dict) or metadata.get("name", name) != name:
            raise InvalidSpec(f"metadata.name must be '{name}', the name in the path")
        metadata["name"] = name
        if namespace is not None:
            metadata.setdefault("namespace", namespace)
        return document

    def runtime_routes(path: str, kind: str, namespaced: bool) -> None:
        plural = f"{kind.lower()}s"

        def check(request: Request) -> str | None:
            namespace = request.path_params.get("namespace")
            if namespaced:
                check_namespace(namespace or "")
            return namespace

        async def list_runtimes(request: Request) -> dict[str, Any]:
            check(request)
            return {
                "apiVersion": RUNTIME_API_VERSION,
                "kind": f"{kind}List",
                "items": [runtime_item(r) for r in registry.runtimes.list(kind)],
            }

        async def get_runtime(request: Request, name: str) -> dict[str, Any]:
            check(request)
            return runtime_item(registry.runtimes.get(kind, name))

        async def apply_runtime(request: Request, name: str) -> JSONResponse:
            document = await body_of(request, name, check(request))
            if document.get("kind") != kind:
                raise InvalidSpec(f"kind must be {kind} at this path, not {document.get('kind')!r}")
            record, action = await registry.apply_runtime(document)
            return applied(runtime_item(record), action)

        async def delete_runtime(request: Request, name: str) -> dict[str, Any]:
            check(request)
            await registry.delete_runtime(kind, name)
            return deleted(name, plural)

        app.add_api_route(path, list_runtimes, methods=["GET"])
        app.add_api_route(path + "/{name}", get_runtime, methods=["GET"])
        app.add_api_route(path + "/{name}", apply_runtime, methods=["PUT"])
        app.add_api_route(path + "/{name}", delete_runtime, methods=["DELETE"])

    runtime_routes(SR_PATH, RUNTIME_KIND, namespaced=True)
    runtime_routes(CSR_PATH, CLUSTER_RUNTIME_KIND, namespaced=False)

    def experiment_item(record: ExperimentRecord) -> dict[str, Any]:
        candidates = [
            {"name": name, "weight": weight, "ready": registry.serving_ready(name)}
            for name, weight in ((c.name, c.weight) for c in record.experiment.spec.candidates)
        ]
        ready = any(c["ready"] and c["weight"] for c in candidates)
        return {
            **record.manifest,
            "metadata": {
                **record.manifest["metadata"],
                "creationTimestamp": timestamp(record.created),
            },
            "status": {
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "candidates": candidates,
                **served_by(record.name),
            },
        }

    @app.get(EXPERIMENTS_PATH)
    async def list_experiments(namespace: str) -> dict[str, Any]:
        check_namespace(namespace)
        return {
            "apiVersion": EXPERIMENT_API_VERSION,
            "kind": f"{EXPERIMENT_KIND}List",
            "items": [experiment_item(r) for r in registry.experiments.list()],
        }

    @app.get(EXPERIMENTS_PATH + "/{name}")
    async def get_experiment(namespace: str, name: str) -> dict[str, Any]:
        check_namespace(namespace)
        return experiment_item(registry.experiments.get(name))

    @app.put(EXPERIMENTS_PATH + "/{name}")
    async def apply_experiment(namespace: str, name: str, request: Request) -> JSONResponse:
        check_namespace(namespace)
        record, action = await registry.apply_experiment(await body_of(request, name, namespace))
        return applied(experiment_item(record), action)

    @app.delete(EXPERIMENTS_PATH + "/{name}")
    async def delete_experiment(namespace: str, name: str) -> dict[str, Any]:
        check_namespace(namespace)
        await registry.delete_experiment(name)
        return deleted(name, "experiments")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(ISVC_PATH)
    async def list_isvcs(namespace: str) -> dict[str, Any]:
        check_namespace(namespace)
        return {
            "apiVersion": API_VERSION,
            "kind": "InferenceServiceList",
            "items": [item(r) for r in registry.list()],
        }

    @app.get(ISVC_PATH + "/{name}")
    async def get_isvc(namespace: str, name: str) -> dict[str, Any]:
        check_namespace(namespace)
        return item(registry.get(name))

    @app.put(ISVC_PATH + "/{name}")
    async def apply_isvc(namespace: str, name: str, request: Request) -> JSONResponse:
        check_namespace(namespace)
        document = await body_of(request, name, namespace)
        record, action = await registry.apply(document)
        return applied(item(record), action)

    # The rollback subresource (as extensions/v1beta1 Deployments had): back to the spec
    # rolled out before, or to the rolled-out one while a rollout or canary is under way.
    @app.post(ISVC_PATH + "/{name}/rollback")
    async def rollback_isvc(namespace: str, name: str) -> JSONResponse:
        check_namespace(namespace)
        record, action = await registry.undo(name)
        return JSONResponse(item(record), headers={APPLY_RESULT_HEADER: action})

    @app.delete(ISVC_PATH + "/{name}")
    async def delete_isvc(namespace: str, name: str) -> dict[str, Any]:
        check_namespace(namespace)
        await registry.delete(name)
        return deleted(name, "inferenceservices")

    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> JSONResponse:
        try:
            ready = repository.ready_only(await capped_body(request))
        except InvalidInput as exc:
            return JSONResponse({"error": exc.message}, status_code=400)
        views = [registry.view(r) for r in registry.list()]
        return JSONResponse(repository.index(views, ready=ready))

    @app.get("/v1/models")
    async def openai_models() -> dict[str, Any]:
        return openai_models_list([registry.view(r) for r in registry.list()])

    @app.get("/v1/placement")
    async def get_placement() -> dict[str, Any]:
        return placement.snapshot()

    @app.get("/", include_in_schema=False)
    async def placement_page() -> HTMLResponse:
        """Pods x models, refreshed live from /v1/placement (static/placement.html)."""
        return HTMLResponse(PLACEMENT_PAGE.read_bytes())

    @app.get(event_api.PATH)
    async def list_events(namespace: str, fieldSelector: str | None = None) -> dict[str, Any]:  # noqa: N803 - Kubernetes' query parameter
        check_namespace(namespace)
        name = event_api.involved_name(fieldSelector)
        found = events(name) if events is not None and name is not None else []
        return event_api.event_list(namespace, name, found)

    if metrics is not None:

        @app.get("/metrics")
        async def get_metrics() -> Response:
            return Response(metrics(), media_type=CONTENT_TYPE_LATEST)

    return app
