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
"""


import base64
import io
import json
import logging
import math
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from t2iroute.router.policy import POLICY_KEYWORDS

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # 1 MiB
MAX_ROUTE_PROMPTS = 256  # prompts one /v1/route request may hold (serve's max_route_prompts)
ROUTE_CHUNK = 16  # prompts routed per step of a long /v1/route under a per-prompt policy


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.param, self.status, self.headers = param, status, headers or {}


def parse_model(model: Any, backends: list[str], costs=None,
                quality_range=None) -> tuple[dict, str | None]:
    """``model`` -> (policy keywords, forced backend). With ``costs`` (the router's), a policy
    value that no routing can meet (a budget or cost cap below the cheapest backend) is refused
    too; with ``quality_range`` (the router's ``observed_range``), a quality floor outside it.
    Raises :class:`RequestError` (400, ``param="model"``) naming the value."""
    if model is None or model == "router":
        return {}, None
    if not isinstance(model, str):
        raise RequestError(f"model must be a string, got {type(model).__name__}", "model")
    if model in backends:
        return {}, model
    if model.startswith("router:"):
        from t2iroute.router.policy import parse_policy, policy_from_keywords

        shown = repr(model[:100])
        try:
            kw = parse_policy(model[len("router:"):])  # the grammar of the CLI keys and Router.route
        except ValueError as e:
            raise RequestError(f"model {shown}: {str(e).partition(': ')[2] or e}", "model") from None
        try:
            pol = policy_from_keywords(**kw)  # the policy's own checks (finite numbers, its fields)
        except (ValueError, TypeError) as e:
            raise RequestError(f"model {shown}: {e}", "model") from None
        v = kw.get("lam")
        if costs is not None and v is not None and len(costs) and not math.isfinite(v * float(max(costs))):
            raise RequestError(f"model {shown}: lam {v:g} times the costs overflows", "model")
        if costs is not None:
            try:
                pol.check(costs)
                pol.check_quality_range(quality_range)
            except (ValueError, TypeError) as e:
                raise RequestError(f"model {shown}: {e}", "model") from None
        return kw, None
    raise RequestError(f"unknown model {model[:100]!r}: use router, router:lam=X, router:budget=X, "
                       f"router:quality_floor=X, router:max_cost=X, router:policy={{type: NAME, ...}} "
                       f"or a backend ({', '.join(backends)})", "model")


class _Metrics:
    def __init__(self, backends):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("t2iroute_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.images = Counter("t2iroute_images", "images generated", ["backend"], registry=r)
        self.routed = Counter("t2iroute_routed", "prompts routed to each backend", ["backend"], registry=r)
        self.fallbacks = Counter("t2iroute_fallbacks", "backend failures that fell back", ["backend"], registry=r)
        self.imputed = Counter("t2iroute_imputed_features", "prompts with imputed feature groups", ["part"], registry=r)
        self.route_s = Histogram("t2iroute_routing_seconds", "routing time per request", registry=r,
                                 buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10))
        self.gen_s = Histogram("t2iroute_generation_seconds", "generation wall time per request", registry=r,
                               buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.batches = Counter("t2iroute_generate_batches", "Router.generate calls the server made", registry=r)
        self.batched = Counter("t2iroute_requests_batched", "generation requests that shared a batch with others",
                               registry=r)
        self.queue = Gauge("t2iroute_queue_depth", "generation and route requests accepted and not yet answered",
                           registry=r)
        self.warmup_s = Gauge("t2iroute_warmup_seconds", "how long the warm-up took (0 until it has finished)",
                              registry=r)
        for b in backends:
            self.images.labels(b)
            self.routed.labels(b)


class _RetryCollector:
    """``t2iroute_backend_retries_total``: calls sent again after a model replica died (engine=ray)."""

    def __init__(self, router):
        self.router = router

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily("t2iroute_backend_retries", "backend calls sent again after their replica died",
                                  labels=["backend"])
        for name, b in self.router.backends.items():
            if getattr(b, "n_retried", None) is not None:
                fam.add_metric([name], float(b.n_retried))
        yield fam


def _error_schema() -> dict:
    return {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def _responses(*codes: int, ok: dict | None = None) -> dict:
    """OpenAPI ``responses`` of an operation: 200 (``ok``: its content) and the error codes."""
    why = {400: "bad input (the error's param names the field)", 401: "no or a wrong API key",
           404: "no such image", 429: "the queue is full",
           500: "every backend failed to make an image"}
    out: dict = {c: {"description": why[c], "content": {"application/json": {"schema": _error_schema()}}}
                 for c in codes}
    if 429 in codes:
        out[429]["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
    if ok is not None:
        out[200] = {"description": "OK", "content": ok}
    return out


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def create_app(router, *, api_keys: list[str] | None = None, image_dir: str | None = None,
               max_queue: int = 64, max_n: int = 8, batch_window_s: float = 0.01, engine: str = "process",
               max_route_prompts: int = MAX_ROUTE_PROMPTS, warmup: bool = False, on_ready=None):
    """The FastAPI app serving ``router``. ``api_keys``: accepted bearer keys (None: no auth).

    Generation requests with the same ``model`` that arrive within ``batch_window_s`` of each other
    are generated as one ``Router.generate`` call (routed together, grouped by backend, batched by
    each backend's ``batch_size``); each request gets its own images back. A ``router:budget=``
    request calibrates lambda over the requests it was batched with. ``engine`` is reported by
    ``/health`` (``ray``: the backends are Ray Serve deployments, see :mod:`t2iroute.distributed.serve`).

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
    once and models load on first use."""
    import asyncio
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from t2iroute.router.core import MAX_PROMPT_CHARS
    from t2iroute.router.policy import policy_from_keywords

    max_route_prompts = int(max_route_prompts)
    if max_route_prompts < 1 or int(max_queue) < 1 or int(max_n) < 1:
        raise ValueError("max_route_prompts, max_queue and max_n must be at least 1")
    backends = list(router.backend_names)
    metrics = _Metrics(backends)
    metrics.registry.register(_RetryCollector(router))
    sizes = {f"{getattr(b, 'width', 0)}x{getattr(b, 'height', 0)}" for b in router.backends.values()}
    image_root = Path(image_dir) if image_dir else None
    lock = threading.Lock()
    state = {"inflight": 0}
    ready = threading.Event()
    warm = {"started": False, "warmup_s": None, "failed": {}}

    def run_warmup():
        from t2iroute.backends.base import load_backends

        t0 = time.perf_counter()
        try:
            router.warmup()
        except Exception as e:  # noqa: BLE001 -- routing reports it again on the first request
            warm["failed"]["featurizer"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            log.warning("warm-up: the featurizer cannot load: %s", warm["failed"]["featurizer"])
        loaded = load_backends(router.backends)
        warm["failed"].update({k: v for k, v in loaded.items() if isinstance(v, str)})
        warm["warmup_s"] = time.perf_counter() - t0
        metrics.warmup_s.set(warm["warmup_s"])
        n_ok = sum(not isinstance(v, str) for v in loaded.values())
        log.info("warm-up: the featurizer and %d backend(s) loaded in %.1f s%s", n_ok, warm["warmup_s"],
                 f"; failed: {sorted(warm['failed'])}" if warm["failed"] else "")
        ready.set()
        if on_ready is not None:
            try:
                on_ready(ready_info())
            except Exception as e:  # noqa: BLE001
                log.warning("warm-up: on_ready raised %s: %s", type(e).__name__, e)

    def start_warmup():
        with lock:
            if warm["started"]:
                return
            warm["started"] = True
        threading.Thread(target=run_warmup, name="t2iroute-warmup", daemon=True).start()

    def ready_info() -> dict:
        info = {"status": "ready" if ready.is_set() else "warming_up", "warmup": bool(warmup),
                "warmup_s": warm["warmup_s"]}
        if warm["failed"]:
            info["failed"] = dict(warm["failed"])
        return info

    async def wait_ready():
        while not ready.is_set():
            await asyncio.sleep(0.05)

    if not warmup:
        ready.set()

    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if warmup:
            start_warmup()
        yield

    app = FastAPI(title="t2iroute", docs_url=None, redoc_url=None, lifespan=lifespan)
    pending: dict = {}  # (policy, forced backend) -> jobs waiting for the batch window
    secured = {"security": [{"bearer": []}]} if api_keys else {}

    async def flush(key):
        await asyncio.sleep(batch_window_s)
        jobs = pending.pop(key)
        policy, forced = dict(key[0]), key[1]
        prompts = [p for j in jobs for p in j["prompts"]]
        seeds = [s for j in jobs for s in j["seeds"]]
        metrics.batches.inc()
        if len(jobs) > 1:
            metrics.batched.inc(len(jobs))
        try:
            results = await run_in_threadpool(router.generate, prompts, seed=seeds, backend=forced, **policy)
            error = None
        except Exception as e:  # noqa: BLE001 -- a request keeps its images if all of them were made
            results, error = getattr(e, "results", None) or [None] * len(prompts), e
        k = 0
        for j in jobs:
            mine = results[k:k + len(j["prompts"])]
            k += len(j["prompts"])
            if not j["future"].done():
                if all(r is not None for r in mine):
                    j["future"].set_result(mine)
                else:
                    j["future"].set_exception(error or RuntimeError("no image"))

    async def submit(prompts, seeds, policy, forced):
        key = (tuple(sorted(policy.items())), forced)
        fut = asyncio.get_running_loop().create_future()
        if key not in pending:
            pending[key] = []
            asyncio.get_running_loop().create_task(flush(key))
        pending[key].append({"prompts": prompts, "seeds": seeds, "future": fut})
        return await fut

    def error(status: int, message: str, param: str | None = None, headers: dict | None = None):
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status, "invalid_request_error"
                                                                          if status < 500 else "server_error")
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                            status_code=status, headers=headers)

    async def body(request: Request) -> dict:
        length = request.headers.get("content-length") or "0"
        if not length.isdigit():
            raise RequestError(f"content-length {length[:40]!r} is not a number", None)
        if int(length) > MAX_BODY:
            raise RequestError(f"request body over {MAX_BODY} bytes", None)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise RequestError(f"request body over {MAX_BODY} bytes", None)
        try:
            data = json.loads(raw or b"null")
        except RecursionError:
            raise RequestError("malformed JSON: nested too deeply", None) from None
        except ValueError as e:
            raise RequestError(f"malformed JSON: {e}", None) from None
        if not isinstance(data, dict):
            raise RequestError("the body must be a JSON object", None)
        return data

    def authorize(request: Request):
        if not api_keys:
            return
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not any(secrets.compare_digest(key.encode("utf-8", "surrogateescape"), k.encode("utf-8"))
                   for k in api_keys):
            raise RequestError("invalid or missing API key (Authorization: Bearer KEY)", None, status=401)

    def prompt_of(data: dict, many: bool = False):
        from t2iroute.router.core import check_prompts

        if "prompt" not in data:
            raise RequestError("prompt is required", "prompt")
        p = data["prompt"]
        if many and isinstance(p, list):
            if not p:
                raise RequestError("prompt: an empty list", "prompt")
            if len(p) > max_route_prompts:
                raise RequestError(f"prompt: {len(p)} prompts in one request; at most {max_route_prompts} "
                                   "(max_route_prompts): split them over several requests", "prompt")
        elif not isinstance(p, str):
            raise RequestError(f"prompt must be a string, got {type(p).__name__}", "prompt")
        try:
            check_prompts(p)
        except (ValueError, TypeError) as e:
            raise RequestError(f"prompt: {e}", "prompt") from None
        return p

    def model_of(data: dict):
        return parse_model(data.get("model"), backends, router.costs, getattr(router, "observed_range", None))

    def enter_queue():
        with lock:
            if state["inflight"] >= max_queue:
                raise RequestError(f"the queue is full ({max_queue} requests); retry shortly", None, status=429,
                                   headers={"Retry-After": "1"})
            state["inflight"] += 1
            metrics.queue.set(state["inflight"])

    def leave_queue():
        with lock:
            state["inflight"] -= 1
            metrics.queue.set(state["inflight"])

    @app.middleware("http")
    async def count(request: Request, call_next):
        # metrics are labelled by the route's template (never the raw path: a client could make a
        # label per URL); anything unexpected becomes one JSON 500 here, so that no exception
        # reaches uvicorn, which would close the keep-alive connection after the 500
        if warmup and not warm["started"]:  # a server that ran no lifespan startup
            start_warmup()
        try:
            response = await call_next(request)
        except Exception as e:  # noqa: BLE001
            msg = (str(e).splitlines() or [""])[0][:200]
            log.error("%s %s: 500: %s: %s", request.method, request.url.path[:100], type(e).__name__, msg)
            response = error(500, "internal server error (logged on the server)")
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "other"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        return error(e.status, str(e), e.param, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):  # unknown paths, wrong methods
        where = f"{request.method} {request.url.path[:100]}"
        message = {404: f"no route for {where}", 405: f"method not allowed: {where}"}.get(e.status_code,
                                                                                         f"{e.detail}: {where}")
        return error(e.status_code, message, None, getattr(e, "headers", None))

    def openapi():
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            if api_keys:
                schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                    "type": "http", "scheme": "bearer"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    object_ = {"type": "object"}
    prompt_schema = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS, "pattern": r"\S"}
    model_schema = {"type": ["string", "null"], "description": "router, router:lam=X, router:budget=X, "
                    "router:quality_floor=X, router:max_cost=X, router:policy={type: NAME, ...} or a backend", "examples": ["router", *backends]}
    formats = ["b64_json", "url"] if image_root is not None else ["b64_json"]
    gen_request = {"type": "object", "required": ["prompt"], "properties": {
        "prompt": prompt_schema,
        "n": {"type": "integer", "minimum": 1, "maximum": max_n},
        "size": {"type": ["string", "null"], "enum": [*sorted(sizes), "auto", None]},
        "response_format": {"type": ["string", "null"], "enum": [*formats, None]},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2 ** 63 - 1 - max_n},
        "model": model_schema}}
    route_request = {"type": "object", "required": ["prompt"], "properties": {
        "prompt": {"anyOf": [prompt_schema, {"type": "array", "items": prompt_schema, "minItems": 1,
                                             "maxItems": max_route_prompts}]},
        "model": model_schema}}

    def body_of(schema: dict) -> dict:
        return {"requestBody": {"required": True, "content": _json(schema)}, **secured}

    @app.get("/health", responses=_responses(ok=_json(object_)))
    async def health():
        return {"status": "ok", "ready": ready.is_set(), "backends": backends, "queue_depth": state["inflight"],
                "engine": engine}

    @app.get("/ready", responses={**_responses(ok=_json(object_)), 503: {
        "description": "warming up: the backends are still loading", "content": _json(object_),
        "headers": {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}}})
    async def ready_probe():
        """Readiness (a Kubernetes readiness probe): 503 while the warm-up loads the models, then
        200; ``/health`` is liveness and answers ok throughout."""
        info = ready_info()
        if not ready.is_set():
            return JSONResponse(info, status_code=503, headers={"Retry-After": "1"})
        return info

    @app.get("/metrics", response_class=PlainTextResponse, responses=_responses(ok={"text/plain": {}}))
    async def prom():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", responses=_responses(401, ok=_json(object_)), openapi_extra=secured)
    async def models(request: Request):
        authorize(request)
        cost = dict(zip(router.backend_names, map(float, router.costs)))
        data = [{"id": "router", "object": "model", "owned_by": "t2iroute", "policy": router.policy.describe()}]
        data += [{"id": f"router:{k}=X", "object": "model", "owned_by": "t2iroute"} for k in POLICY_KEYWORDS]
        data += [{"id": b, "object": "model", "owned_by": "t2iroute", "predicted_cost": cost[b],
                  "cost_unit": router.cost_unit, "configured": b in router.backends} for b in backends]
        return {"object": "list", "data": data}

    @app.post("/v1/route", responses=_responses(400, 401, 429, ok=_json(object_)),
              openapi_extra=body_of(route_request))
    async def route(request: Request):
        """Routing decisions only. A list is routed together (a budget calibrates on all of it);
        under a per-prompt policy it is routed a few prompts at a time, each step a turn of its
        own, so that other requests are served in between."""
        authorize(request)
        data = await body(request)
        p = prompt_of(data, many=True)
        policy, forced = model_of(data)
        items = p if isinstance(p, list) else [p]
        chosen = policy_from_keywords(**policy) or router.policy
        step = ROUTE_CHUNK if getattr(chosen, "per_prompt", False) else len(items)
        enter_queue()
        try:
            await wait_ready()
            t0 = time.perf_counter()
            ds = []
            for i in range(0, len(items), step):
                ds += await run_in_threadpool(router.route, items[i:i + step], **policy)
            metrics.route_s.observe(time.perf_counter() - t0)
        finally:
            leave_queue()
        out = [{**d.to_dict(), "backend": forced or d.backend, "cost_unit": router.cost_unit} for d in ds]
        return {"data": out} if isinstance(p, list) else out[0]

    @app.post("/v1/images/generations", responses=_responses(400, 401, 429, 500, ok=_json(object_)),
              openapi_extra=body_of(gen_request))
    async def generations(request: Request):
        authorize(request)
        data = await body(request)
        prompt = prompt_of(data)
        n = data.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_n:
            raise RequestError(f"n must be an integer in [1, {max_n}], got {_short(n)}", "n")
        size = data.get("size")
        if size is not None and (not isinstance(size, str) or (size != "auto" and size not in sizes)):
            raise RequestError(f"unsupported size {_short(size)}: the backends make {sorted(sizes)} "
                               "(or auto)", "size")
        fmt = data.get("response_format")
        fmt = "b64_json" if fmt is None else fmt
        if not isinstance(fmt, str) or fmt not in ("b64_json", "url"):
            raise RequestError(f"response_format must be b64_json or url, got {_short(fmt)}", "response_format")
        if fmt == "url" and image_root is None:
            raise RequestError("response_format url needs the server's image_dir", "response_format")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63 - n:
            raise RequestError(f"seed must be an integer in [0, 2**63), got {_short(seed)}", "seed")
        policy, forced = model_of(data)
        if forced is not None and forced not in router.backends:
            raise RequestError(f"model {forced!r}: this server has no config for that backend; it routes "
                               "to it but cannot run it", "model")
        enter_queue()
        try:
            await wait_ready()
            t0 = time.perf_counter()
            results = await submit([prompt] * n, [seed + i for i in range(n)], policy, forced)
            metrics.gen_s.observe(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 -- every backend failed: a 500 that says so
            log.warning("generation failed: %s: %s", type(e).__name__, e)
            return error(500, f"generation failed: {type(e).__name__}: {e}")
        finally:
            leave_queue()
        for r in results:
            metrics.images.labels(r.backend).inc()
            metrics.routed.labels(r.decision.backend).inc()
            metrics.route_s.observe(r.route_s)
            for f in r.fallbacks:
                metrics.fallbacks.labels(f["backend"]).inc()
            for part in r.decision.imputed:
                metrics.imputed.labels(part).inc()
        # PNG encoding (tens of ms for a 512 px image) and writes: off the event loop
        items = await run_in_threadpool(_image_items, [r.image for r in results], fmt, image_root,
                                        str(request.base_url).rstrip("/"))
        first = results[0]
        info = {"backend": first.backend, "routed_backend": first.decision.backend, "policy": first.decision.policy,
                "images": [{k: v for k, v in r.to_dict().items() if k != "decision"} for r in results],
                "decision": first.decision.to_dict(), "cost_unit": router.cost_unit}
        headers = {"x-t2iroute-backend": first.backend, "x-t2iroute-routed-backend": first.decision.backend,
                   "x-t2iroute-policy": first.decision.policy.get("type", ""),
                   "x-t2iroute-latency-s": f"{sum(r.latency_s for r in results):.4f}"}
        return JSONResponse({"created": int(time.time()), "data": items, "t2iroute": info}, headers=headers)

    if image_root is not None:
        from fastapi.responses import FileResponse

        @app.get("/images/{name}", response_class=Response, openapi_extra=secured,
                 responses=_responses(401, 404, ok={"image/png": {"schema": {"type": "string",
                                                                              "format": "binary"}}}))
        async def image(name: str, request: Request):
            """A ``response_format=url`` image; with API keys on, only for a request carrying one."""
            authorize(request)
            if not name.endswith(".png") or "/" in name or name.startswith(".") or len(name) != 36:
                raise RequestError("no such image", None, status=404)
            path = image_root / name
            if not path.is_file():
                raise RequestError("no such image", None, status=404)
            return FileResponse(path, media_type="image/png")

    return app


def _image_items(images, fmt: str, image_root: Path | None, base_url: str) -> list[dict]:
    """The response's ``data``: each image as base64 PNG, or written (atomically) under
    ``image_root`` and given as a URL. Blocking: run it in a thread."""
    from t2iroute.paths import atomic_write_bytes

    items = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        if fmt == "b64_json":
            items.append({"b64_json": base64.b64encode(buf.getvalue()).decode("ascii"), "revised_prompt": None})
        else:
            name = f"{uuid.uuid4().hex}.png"
            image_root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(image_root / name, buf.getvalue())
            items.append({"url": f"{base_url}/images/{name}", "revised_prompt": None})
    return items


def _short(value: Any) -> str:
    """``repr`` of a client's value, cut to 80 characters (it goes into an error message)."""
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."
