"""An OpenAI-compatible image endpoint that routes every request (FastAPI).

``POST /v1/images/generations`` takes the OpenAI images API's request (``prompt``, ``n``, ``size``,
``response_format``, ``model``) and answers in its shape, with the routing decision in an extra
``t2iroute`` field and in ``x-t2iroute-*`` headers. ``model`` selects the policy: ``router`` (the
artifact's default), ``router:lam=0.05``, ``router:budget=2.0``, ``router:quality_floor=30``,
``router:max_cost=1.5``, ``router:policy={type: NAME, ...}`` (any registered policy, plug-ins too:
the policy grammar of the command line and ``Router.route``, :func:`t2iroute.router.policy.parse_policy`),
or a backend's name (forced). ``POST /v1/route`` returns decisions only;
``GET /v1/models`` lists router variants and backends; ``GET /health`` (liveness: ok as soon as the
process serves); ``GET /ready`` (readiness: 503 until the warm-up has loaded every backend and the
featurizer, then 200); ``GET /metrics`` (Prometheus text); ``GET /openapi.json`` (the request and
response schemas). Generation and route requests that arrive during the warm-up wait for it (in
the queue, so ``max_queue`` bounds them) rather than fail.

What a client can make the server do: bad input gets 400 with an OpenAI-style error naming the
field (a body over 1 MiB, malformed or too deeply nested JSON, a field of the wrong type, a policy
value no backend can meet such as ``router:budget=`` below the cheapest backend's cost); more
prompts in one ``/v1/route`` than ``max_route_prompts`` get 400 naming that limit; generation and
route requests share one queue of ``max_queue`` and a full queue gets 429 with ``Retry-After``. A
long route under a per-prompt policy is routed in pieces, so a single-prompt request is not stuck
behind it. Anything unexpected is one JSON 500 with a generic message (and one log line): the
connection stays usable, no traceback reaches the client.

The modules: :mod:`~t2iroute.serving.openai_api` (the OpenAI-compatible endpoints) and
:mod:`~t2iroute.serving.native_api` (route, health, readiness, metrics) hold the handlers on
FastAPI ``APIRouter`` objects; they get the server's :class:`~t2iroute.serving.state.ServerState` (the router,
limits, queue, warm-up, batcher, API keys, image directory) from ``app.state``;
:mod:`~t2iroute.serving.validation` checks requests by hand, :mod:`~t2iroute.serving.models` holds the
pydantic models of requests and answers (the OpenAPI schema), :mod:`~t2iroute.serving.errors` the
error object, :mod:`~t2iroute.serving.metrics` the Prometheus metrics. This module assembles them.
"""

import contextlib
import logging

from t2iroute.serving.errors import RequestError, error_response
from t2iroute.serving.validation import MAX_BODY, MAX_ROUTE_PROMPTS, parse_model

log = logging.getLogger(__name__)

__all__ = ["MAX_BODY", "MAX_ROUTE_PROMPTS", "RequestError", "create_app", "parse_model"]


def create_app(
    router,
    *,
    api_keys: list[str] | None = None,
    image_dir: str | None = None,
    max_queue: int = 64,
    max_n: int = 8,
    batch_window_s: float = 0.01,
    engine: str = "process",
    max_route_prompts: int = MAX_ROUTE_PROMPTS,
    warmup: bool = False,
    on_ready=None,
    artifact_path: str | None = None,
    local: dict | None = None,
    autoscorer=None,
    loop: dict | None = None,
    loop_scorer=None,
    reload_poll_s: float = 0.0,
):
    """The FastAPI app serving ``router``. ``api_keys``: accepted bearer keys (None: no auth).

    Generation requests with the same ``model`` that arrive within ``batch_window_s`` of each other
    are generated as one ``Router.generate`` call (routed together, grouped by backend, batched by
    each backend's ``batch_size``); each request gets its own images back. A ``router:budget=``
    request calibrates lambda over the requests it was batched with. ``engine`` is reported by
    ``/health`` (``ray``: the backends are Ray Serve deployments, see :mod:`t2iroute.serving.ray`).

    ``max_queue`` bounds the generation and route requests in progress together (more get 429);
    ``max_route_prompts`` the prompts of one ``/v1/route`` request (more get 400); ``max_n`` the
    images of one generation request.

    With ``api_keys``, every endpoint but ``/health``, ``/ready``, ``/metrics`` and ``/openapi.json`` needs
    ``Authorization: Bearer KEY``, ``GET /images/<id>.png`` (the ``response_format=url`` images)
    included: an image URL is not a credential (URLs reach logs, proxies and browser histories),
    so whoever fetches it sends the key, as for the request that made it. Without keys the
    random 128-bit id is all that guards an image.

    ``warmup``: when the server starts (or at its first request, under a server that runs no
    lifespan events), a background thread loads the featurizer's models (``Router.warmup``) and
    every backend's weights (their ``load()``); ``/ready`` answers 503 until it has finished, then
    200 with the seconds it took (``/health`` answers ok throughout). Generation and route requests
    arriving meanwhile wait for it. A backend that cannot load is logged and listed in ``/ready``;
    the router falls back from it as without a warm-up. ``on_ready(info)`` is called once the
    warm-up is over (``info``: what ``/ready`` reports). Without ``warmup`` the app is ready at
    once and models load on first use.

    ``artifact_path`` (and ``local``, the loading user's featurizer settings): the folder the
    router was loaded from, which ``POST /admin/reload`` loads again (:meth:`ServerState.reload`).
    ``autoscorer``: a :class:`~t2iroute.serving.autoscore.AutoScorer` offered every generation's
    images (it scores a share in the background). ``loop``: the serving loop's settings
    (:func:`t2iroute.serving.loop.loop_settings`: decision log, exploration, autoscore) applied
    to ``router`` here, on either engine; ``loop_scorer``: its scorer already loaded.
    ``reload_poll_s``: check the artifact folder's manifest checksum this often and reload when
    it changes (0: only on ``POST /admin/reload``); every router replica of ``engine=ray`` polls
    for itself."""
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from t2iroute.serving.native_api import probe_router, route_router
    from t2iroute.serving.openai_api import images_router, openai_router
    from t2iroute.serving.state import ServerState

    if int(max_route_prompts) < 1 or int(max_queue) < 1 or int(max_n) < 1:
        raise ValueError("max_route_prompts, max_queue and max_n must be at least 1")
    state = ServerState(
        router,
        api_keys=api_keys,
        image_dir=image_dir,
        max_queue=max_queue,
        max_n=max_n,
        batch_window_s=batch_window_s,
        engine=engine,
        max_route_prompts=max_route_prompts,
        warmup=warmup,
        on_ready=on_ready,
        artifact_path=artifact_path,
        local=local,
    )
    if loop:
        from t2iroute.serving.loop import apply_loop

        autoscorer = apply_loop(router, loop, scorer=loop_scorer) or autoscorer
    state.autoscorer = autoscorer
    if reload_poll_s and float(reload_poll_s) > 0:
        state.start_reload_poller(float(reload_poll_s))
    if autoscorer is not None:
        autoscorer.metrics = state.metrics
        autoscorer.router_of = lambda: state.router  # the router of the moment (reloads swap it)
    app = FastAPI(title="t2iroute", docs_url=None, redoc_url=None, lifespan=_lifespan)
    app.state.t2iroute = state
    for part in (probe_router, openai_router, route_router, *([images_router] if state.image_root else [])):
        _add_routes(app, part)
    app.middleware("http")(_count_requests)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # unknown paths, wrong methods
    app.openapi = lambda: _openapi(app)
    return app


def _add_routes(app, router) -> None:
    """``router``'s endpoints, added to ``app`` as they are, so that ``app.routes`` lists each one
    (newer FastAPI's ``include_router`` lists a router as one entry, included lazily). The handlers
    keep no state of their own: one route object serves every app."""
    app.router.routes.extend(router.routes)


@contextlib.asynccontextmanager
async def _lifespan(app):
    state = app.state.t2iroute
    if state.warmup:
        state.start_warmup()
    yield


async def _count_requests(request, call_next):
    # metrics are labelled by the route's template (never the raw path: a client could make a
    # label per URL); anything unexpected becomes one JSON 500 here, so that no exception
    # reaches uvicorn, which would close the keep-alive connection after the 500
    state = request.app.state.t2iroute
    if state.warmup and not state.warm_started:  # a server that ran no lifespan startup
        state.start_warmup()
    try:
        response = await call_next(request)
    except Exception as e:  # noqa: BLE001
        msg = (str(e).splitlines() or [""])[0][:200]
        log.error("%s %s: 500: %s: %s", request.method, request.url.path[:100], type(e).__name__, msg)
        response = error_response(500, "internal server error (logged on the server)")
    route = request.scope.get("route")
    endpoint = getattr(route, "path", None) or "other"
    state.metrics.requests.labels(endpoint, str(response.status_code)).inc()
    return response


async def _request_error(request, e: RequestError):
    return error_response(e.status, str(e), e.param, e.headers)


async def _http_error(request, e):
    where = f"{request.method} {request.url.path[:100]}"
    message = {404: f"no route for {where}", 405: f"method not allowed: {where}"}.get(
        e.status_code, f"{e.detail}: {where}"
    )
    return error_response(e.status_code, message, None, getattr(e, "headers", None))


def _openapi(app) -> dict:
    """The app's OpenAPI schema (built once): the routes' answers and errors, the request models
    with this server's bounds (:class:`t2iroute.serving.models.RequestModels`), and, with API keys
    on, the bearer scheme on each endpoint that needs a key."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        from fastapi.routing import APIRoute

        from t2iroute.serving.state import authorize

        state = app.state.t2iroute
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {})
        for name, model_schema in state.models.schemas().items():
            components.setdefault("schemas", {}).update(model_schema.pop("$defs", {}))
            components["schemas"][name] = model_schema
        if state.api_keys:
            components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
            for route in app.routes:
                if isinstance(route, APIRoute) and any(d.dependency is authorize for d in route.dependencies):
                    for method in route.methods:
                        schema["paths"][route.path][method.lower()]["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema
