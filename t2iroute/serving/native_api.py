"""t2iroute's own endpoints: ``POST /v1/route`` (decisions only), ``GET /health`` (liveness),
``GET /ready`` (readiness) and ``GET /metrics`` (Prometheus text)."""

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from t2iroute.router.policy import policy_from_keywords
from t2iroute.serving.errors import RequestError
from t2iroute.serving.models import (
    Feedback,
    FeedbackRequest,
    ReloadInfo,
    Health,
    Readiness,
    RouteDecision,
    RouteList,
    RouteRequest,
    request_body,
    responses,
)
from t2iroute.serving.state import State, authorize
from t2iroute.serving.validation import check_route, read_body

ROUTE_CHUNK = 16  # prompts routed per step of a long /v1/route under a per-prompt policy

#: the probes and metrics: open to all, also with API keys on
probe_router = APIRouter()
#: routing decisions: with API keys on, only for a request carrying one
route_router = APIRouter(dependencies=[Depends(authorize)])


@probe_router.get("/health", responses=responses(ok=Health))
async def health(state: State):
    return {
        "status": "ok",
        "ready": state.ready.is_set(),
        "backends": state.backends,
        "queue_depth": state.inflight,
        "engine": state.engine,
        "artifact": state.artifact_info(),
    }


@probe_router.get(
    "/ready",
    responses={
        **responses(ok=Readiness),
        503: {
            "description": "warming up: the backends are still loading",
            "model": Readiness,
            "headers": {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}},
        },
    },
)
async def ready_probe(state: State):
    """Readiness (a Kubernetes readiness probe): 503 while the warm-up loads the models, then
    200; ``/health`` is liveness and answers ok throughout."""
    info = state.ready_info()
    if not state.ready.is_set():
        return JSONResponse(info, status_code=503, headers={"Retry-After": "1"})
    return info


@probe_router.get("/metrics", response_class=PlainTextResponse, responses=responses(ok={"text/plain": {}}))
async def prom(state: State):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@route_router.post(
    "/v1/route",
    responses=responses(400, 401, 429, ok=RouteDecision | RouteList),
    openapi_extra=request_body(RouteRequest),
)
async def route(request: Request, state: State):
    """Routing decisions only. A list is routed together (a budget calibrates on all of it);
    under a per-prompt policy it is routed a few prompts at a time, each step a turn of its
    own, so that other requests are served in between."""
    req, policy, forced = check_route(await read_body(request), state)
    router = state.router
    items = req.prompt if isinstance(req.prompt, list) else [req.prompt]
    chosen = policy_from_keywords(**policy) or router.policy
    step = ROUTE_CHUNK if getattr(chosen, "per_prompt", False) else len(items)
    with state.queue_slot():
        await state.wait_ready()
        t0 = time.perf_counter()
        ds = []
        for i in range(0, len(items), step):
            # decisions only: nothing is generated, so nothing is learned from exploring here
            ds += await run_in_threadpool(router.route, items[i : i + step], explore=0.0, **policy)
        state.metrics.route_s.observe(time.perf_counter() - t0)
    out = [{**d.to_dict(), "backend": forced or d.backend, "cost_unit": router.cost_unit} for d in ds]
    return {"data": out} if isinstance(req.prompt, list) else out[0]


@route_router.post(
    "/v1/feedback",
    responses=responses(400, 401, 404, ok=Feedback),
    openapi_extra=request_body(FeedbackRequest),
)
async def feedback(request: Request, state: State):
    """A realized score for an image this server made (``t2iroute.id`` of its response), in the
    metric's units: a served image becomes an observed cell for ``t2iroute train feedback=LOG``.
    404 for an id the decision log does not hold; 400 when the server keeps no log."""
    from t2iroute.router.decisions import UnknownId

    data = await read_body(request)
    unknown = sorted(set(data) - {"id", "score", "source"})
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}: a feedback body has id, score and source", unknown[0])
    rid, score, source = data.get("id"), data.get("score"), data.get("source", "user")
    if not isinstance(rid, str) or not rid.strip() or len(rid) > 200:
        raise RequestError("id must be the image's id (t2iroute.id of its response)", "id")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score or abs(score) == float("inf"):
        raise RequestError(f"score must be a finite number in the metric's units, got {str(score)[:40]!r}", "score")
    if source not in ("user", "autoscore"):
        raise RequestError(f"source must be user or autoscore, got {str(source)[:40]!r}", "source")
    if state.router.decision_log is None:
        raise RequestError(
            "this server keeps no decision log (serve ... log_dir=DIR): feedback has nowhere to go", None
        )
    try:
        replaced = await run_in_threadpool(state.router.feedback, rid, float(score), source=source)
    except UnknownId:
        raise RequestError(f"no image with id {rid[:80]!r} in the decision log", "id", status=404) from None
    state.metrics.feedback.labels(source=source).inc()
    return {"id": rid, "recorded": True, "replaced": bool(replaced)}


@route_router.post("/admin/reload", responses=responses(401, 409, ok=ReloadInfo))
async def reload(state: State):
    """Load the artifact folder again and serve it (``t2iroute train`` replaces the folder
    atomically): requests already generating finish on the old router, later ones run on the new
    one; a new artifact that does not load leaves the old one serving (409 saying why)."""
    from t2iroute.errors import ArtifactError, ConfigError

    try:
        return await run_in_threadpool(state.reload)
    except (ArtifactError, ConfigError, OSError) as e:
        raise RequestError(f"reload failed, still serving the previous artifact: {e}", None, status=409) from None
