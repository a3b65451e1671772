"""An OpenAI-compatible image endpoint that routes every request (FastAPI).

``POST /v1/images/generations`` takes the OpenAI images API's request (``prompt``, ``n``, ``size``,
``response_format``, ``model``) and answers in its shape, with the routing decision in an extra
``t2iroute`` field and in ``x-t2iroute-*`` headers. ``model`` selects the policy: ``router`` (the
artifact's default), ``router:lam=0.05``, ``router:budget=2.0``, ``router:quality_floor=30``,
``router:max_cost=1.5``, or a backend's name (forced). ``POST /v1/route`` returns decisions only;
``GET /v1/models`` lists router variants and backends; ``GET /health``; ``GET /metrics``
(Prometheus text). Bad requests get 400 with an OpenAI-style error naming the field; a full queue
gets 429 with ``Retry-After``.
"""


import base64
import io
import json
import logging
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # 1 MiB
POLICY_KEYS = ("lam", "budget", "quality_floor", "max_cost")


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.param, self.status, self.headers = param, status, headers or {}


def parse_model(model: Any, backends: list[str]) -> tuple[dict, str | None]:
    """``model`` -> (policy keywords, forced backend)."""
    if model is None or model == "router":
        return {}, None
    if not isinstance(model, str):
        raise RequestError(f"model must be a string, got {type(model).__name__}", "model")
    if model in backends:
        return {}, model
    if model.startswith("router:"):
        key, _, value = model[len("router:"):].partition("=")
        if key in POLICY_KEYS:
            try:
                v = float(value)
            except ValueError:
                raise RequestError(f"model {model!r}: {key} needs a number", "model") from None
            if v != v or v in (float("inf"), float("-inf")) or (key == "lam" and v < 0):
                raise RequestError(f"model {model!r}: {key} must be a finite number" +
                                   (" >= 0" if key == "lam" else ""), "model")
            return {key: v}, None
    raise RequestError(f"unknown model {model!r}: use router, router:lam=X, router:budget=X, "
                       f"router:quality_floor=X, router:max_cost=X or a backend ({', '.join(backends)})", "model")


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
        self.queue = Gauge("t2iroute_queue_depth", "generation requests accepted and not yet answered", registry=r)
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


def create_app(router, *, api_keys: list[str] | None = None, image_dir: str | None = None,
               max_queue: int = 64, max_n: int = 8, batch_window_s: float = 0.01, engine: str = "process"):
    """The FastAPI app serving ``router``. ``api_keys``: accepted bearer keys (None: no auth).

    Generation requests with the same ``model`` that arrive within ``batch_window_s`` of each other
    are generated as one ``Router.generate`` call (routed together, grouped by backend, batched by
    each backend's ``batch_size``); each request gets its own images back. A ``router:budget=``
    request calibrates lambda over the requests it was batched with. ``engine`` is reported by
    ``/health`` (``ray``: the backends are Ray Serve deployments, see :mod:`t2iroute.distributed.serve`)."""
    import asyncio
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    backends = list(router.backend_names)
    metrics = _Metrics(backends)
    metrics.registry.register(_RetryCollector(router))
    sizes = {f"{getattr(b, 'width', 0)}x{getattr(b, 'height', 0)}" for b in router.backends.values()}
    image_root = Path(image_dir) if image_dir else None
    lock = threading.Lock()
    state = {"inflight": 0}
    app = FastAPI(title="t2iroute", docs_url=None, redoc_url=None)
    pending: dict = {}  # (policy, forced backend) -> jobs waiting for the batch window

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
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            raise RequestError(f"request body over {MAX_BODY} bytes", None)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise RequestError(f"request body over {MAX_BODY} bytes", None)
        try:
            data = json.loads(raw or b"null")
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
        if not any(secrets.compare_digest(key, k) for k in api_keys):
            raise RequestError("invalid or missing API key (Authorization: Bearer KEY)", None, status=401)

    def prompt_of(data: dict, many: bool = False):
        from t2iroute.router.core import check_prompts

        if "prompt" not in data:
            raise RequestError("prompt is required", "prompt")
        p = data["prompt"]
        if many and isinstance(p, list):
            if not p:
                raise RequestError("prompt: an empty list", "prompt")
        elif not isinstance(p, str):
            raise RequestError(f"prompt must be a string, got {type(p).__name__}", "prompt")
        try:
            check_prompts(p)
        except (ValueError, TypeError) as e:
            raise RequestError(f"prompt: {e}", "prompt") from None
        return p

    @app.middleware("http")
    async def count(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001
            metrics.requests.labels(request.url.path, "500").inc()
            raise
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        return error(e.status, str(e), e.param, e.headers)

    @app.get("/health")
    async def health():
        return {"status": "ok", "backends": backends, "queue_depth": state["inflight"], "engine": engine}

    @app.get("/metrics")
    async def prom():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        cost = dict(zip(router.backend_names, map(float, router.costs)))
        data = [{"id": "router", "object": "model", "owned_by": "t2iroute", "policy": router.policy.describe()}]
        data += [{"id": f"router:{k}=X", "object": "model", "owned_by": "t2iroute"} for k in POLICY_KEYS]
        data += [{"id": b, "object": "model", "owned_by": "t2iroute", "predicted_cost": cost[b],
                  "cost_unit": router.cost_unit, "configured": b in router.backends} for b in backends]
        return {"object": "list", "data": data}

    @app.post("/v1/route")
    async def route(request: Request):
        authorize(request)
        data = await body(request)
        p = prompt_of(data, many=True)
        policy, forced = parse_model(data.get("model"), backends)
        t0 = time.perf_counter()
        res = await run_in_threadpool(router.route, p, **policy)
        metrics.route_s.observe(time.perf_counter() - t0)
        ds = res if isinstance(res, list) else [res]
        out = [{**d.to_dict(), "backend": forced or d.backend, "cost_unit": router.cost_unit} for d in ds]
        return {"data": out} if isinstance(p, list) else out[0]

    @app.post("/v1/images/generations")
    async def generations(request: Request):
        authorize(request)
        data = await body(request)
        prompt = prompt_of(data)
        n = data.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_n:
            raise RequestError(f"n must be an integer in [1, {max_n}], got {n!r}", "n")
        size = data.get("size")
        if size not in (None, "auto") and size not in sizes:
            raise RequestError(f"unsupported size {size!r}: the backends make {sorted(sizes)}", "size")
        fmt = data.get("response_format") or "b64_json"
        if fmt not in ("b64_json", "url"):
            raise RequestError(f"response_format must be b64_json or url, got {fmt!r}", "response_format")
        if fmt == "url" and image_root is None:
            raise RequestError("response_format url needs the server's image_dir", "response_format")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63 - n:
            raise RequestError(f"seed must be an integer in [0, 2**63), got {seed!r}", "seed")
        policy, forced = parse_model(data.get("model"), backends)
        with lock:
            if state["inflight"] >= max_queue:
                raise RequestError(f"the queue is full ({max_queue} requests); retry shortly", None, status=429,
                                   headers={"Retry-After": "1"})
            state["inflight"] += 1
            metrics.queue.set(state["inflight"])
        try:
            t0 = time.perf_counter()
            results = await submit([prompt] * n, [seed + i for i in range(n)], policy, forced)
            metrics.gen_s.observe(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 -- every backend failed: a 500 that says so
            log.warning("generation failed: %s: %s", type(e).__name__, e)
            return error(500, f"generation failed: {type(e).__name__}: {e}")
        finally:
            with lock:
                state["inflight"] -= 1
                metrics.queue.set(state["inflight"])
        items = []
        for r in results:
            metrics.images.labels(r.backend).inc()
            metrics.routed.labels(r.decision.backend).inc()
            metrics.route_s.observe(r.route_s)
            for f in r.fallbacks:
                metrics.fallbacks.labels(f["backend"]).inc()
            for part in r.decision.imputed:
                metrics.imputed.labels(part).inc()
            buf = io.BytesIO()
            r.image.save(buf, format="PNG")
            if fmt == "b64_json":
                items.append({"b64_json": base64.b64encode(buf.getvalue()).decode("ascii"),
                              "revised_prompt": None})
            else:
                name = f"{uuid.uuid4().hex}.png"
                image_root.mkdir(parents=True, exist_ok=True)
                (image_root / name).write_bytes(buf.getvalue())
                items.append({"url": str(request.base_url).rstrip("/") + f"/images/{name}", "revised_prompt": None})
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

        @app.get("/images/{name}")
        async def image(name: str):
            if not name.endswith(".png") or "/" in name or name.startswith(".") or len(name) != 36:
                raise RequestError("no such image", None, status=404)
            path = image_root / name
            if not path.is_file():
                raise RequestError("no such image", None, status=404)
            return FileResponse(path, media_type="image/png")

    return app
