"""What the server checks in a request, by hand, before it builds the request model.

Each check raises :class:`~t2iroute.serving.errors.RequestError` with the message, status and
``param`` that clients (and ``tests/test_serve.py``, ``tests/test_fuzz_server.py``) see: a body
over :data:`MAX_BODY`, malformed or too deeply nested JSON, a field of the wrong type or out of
range, a ``model`` no routing can meet, a wrong API key. Pydantic's own validation would answer
some of these differently (a 422, other words), so the request models of
:mod:`t2iroute.serving.models` are built from the values checked here (``model_construct``) and
document the API in the OpenAPI schema. Imports nothing from FastAPI."""

import json
import math
import secrets
from typing import Any

from t2iroute.serving.errors import RequestError, short

MAX_BODY = 1 << 20  # 1 MiB
MAX_ROUTE_PROMPTS = 256  # prompts one /v1/route request may hold (serve's max_route_prompts)


def parse_model(model: Any, backends: list[str], costs=None, quality_range=None) -> tuple[dict, str | None]:
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
            kw = parse_policy(model[len("router:") :])  # the grammar of the CLI keys and Router.route
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
    raise RequestError(
        f"unknown model {model[:100]!r}: use router, router:lam=X, router:budget=X, "
        f"router:quality_floor=X, router:max_cost=X, router:policy={{type: NAME, ...}} "
        f"or a backend ({', '.join(backends)})",
        "model",
    )


async def read_body(request) -> dict:
    """The request's JSON object: at most :data:`MAX_BODY` bytes (by its content-length and as read)."""
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


def check_key(authorization: str, api_keys: list[str] | None) -> None:
    """401 unless ``authorization`` (the header) is ``Bearer KEY`` with one of ``api_keys`` (None or
    empty: no auth). Compared in constant time; a header of bytes that are not ASCII is a wrong key."""
    if not api_keys:
        return
    key = authorization[7:] if authorization.lower().startswith("bearer ") else ""
    if not any(secrets.compare_digest(key.encode("utf-8", "surrogateescape"), k.encode("utf-8")) for k in api_keys):
        raise RequestError("invalid or missing API key (Authorization: Bearer KEY)", None, status=401)


def prompt_of(data: dict, many: bool = False, max_prompts: int = MAX_ROUTE_PROMPTS):
    """``data["prompt"]``: a string, or with ``many`` a list of at most ``max_prompts`` strings."""
    from t2iroute.router.core import check_prompts

    if "prompt" not in data:
        raise RequestError("prompt is required", "prompt")
    p = data["prompt"]
    if many and isinstance(p, list):
        if not p:
            raise RequestError("prompt: an empty list", "prompt")
        if len(p) > max_prompts:
            raise RequestError(
                f"prompt: {len(p)} prompts in one request; at most {max_prompts} "
                "(max_route_prompts): split them over several requests",
                "prompt",
            )
    elif not isinstance(p, str):
        raise RequestError(f"prompt must be a string, got {type(p).__name__}", "prompt")
    try:
        check_prompts(p)
    except (ValueError, TypeError) as e:
        raise RequestError(f"prompt: {e}", "prompt") from None
    return p


def model_of(data: dict, state) -> tuple[dict, str | None]:
    """:func:`parse_model` of ``data["model"]`` against the server's router."""
    router = state.router
    return parse_model(data.get("model"), state.backends, router.costs, getattr(router, "observed_range", None))


def check_generation(data: dict, state):
    """A ``POST /v1/images/generations`` body -> (the server's ``ImageGenerationRequest``, policy
    keywords, forced backend). The fields are checked in this order; the first bad one is the error."""
    prompt = prompt_of(data)
    max_n = state.max_n
    n = data.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_n:
        raise RequestError(f"n must be an integer in [1, {max_n}], got {short(n)}", "n")
    size = data.get("size")
    if size is not None and (not isinstance(size, str) or (size != "auto" and size not in state.sizes)):
        raise RequestError(f"unsupported size {short(size)}: the backends make {sorted(state.sizes)} (or auto)", "size")
    fmt = data.get("response_format")
    fmt = "b64_json" if fmt is None else fmt
    if not isinstance(fmt, str) or fmt not in ("b64_json", "url"):
        raise RequestError(f"response_format must be b64_json or url, got {short(fmt)}", "response_format")
    if fmt == "url" and state.image_root is None:
        raise RequestError("response_format url needs the server's image_dir", "response_format")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63 - n:
        raise RequestError(f"seed must be an integer in [0, 2**63), got {short(seed)}", "seed")
    policy, forced = model_of(data, state)
    if forced is not None and forced not in state.router.backends:
        raise RequestError(
            f"model {forced!r}: this server has no config for that backend; it routes to it but cannot run it", "model"
        )
    req = state.models.generation.model_construct(
        prompt=prompt, n=n, size=size, response_format=fmt, seed=seed, model=data.get("model")
    )
    return req, policy, forced


def check_route(data: dict, state):
    """A ``POST /v1/route`` body -> (the server's ``RouteRequest``, policy keywords, forced backend)."""
    prompt = prompt_of(data, many=True, max_prompts=state.max_route_prompts)
    policy, forced = model_of(data, state)
    return state.models.route.model_construct(prompt=prompt, model=data.get("model")), policy, forced
