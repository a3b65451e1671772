"""t2iroute's own endpoints: ``POST /v1/route`` (decisions only), ``GET /health`` (liveness),
``GET /ready`` (readiness) and ``GET /metrics`` (Prometheus text)."""

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from t2iroute.router.policy import policy_from_keywords
from t2iroute.serving.models import Health, Readiness, RouteDecision, RouteList, RouteRequest, request_body, responses
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
            ds += await run_in_threadpool(router.route, items[i : i + step], **policy)
        state.metrics.route_s.observe(time.perf_counter() - t0)
    out = [{**d.to_dict(), "backend": forced or d.backend, "cost_unit": router.cost_unit} for d in ds]
    return {"data": out} if isinstance(req.prompt, list) else out[0]
