"""Schemathesis against the server's OpenAPI schema (issue 22, item 5): no generated request, valid
or not, gets a 5xx; every answer is one the schema declares, in the declared shape; every 4xx body
names the field or the limit. In process over ASGI for both engines' app (``engine=process``:
:func:`t2iroute.serving.create_app`; ``engine=ray``: the router deployment's
:class:`~t2iroute.serving.ray.RouterServer`, whose backends are handles to model replicas,
here handles answered in this process). ``tests/test_serve.py`` runs a few examples over HTTP
against live servers of both engines, and ``scripts/probe_server.py`` many more.

The helpers here are what the probe uses too."""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

KEY = "sk-fuzz"
AUTH = {"Authorization": f"Bearer {KEY}"}
#: words a 4xx message names its field or limit with, where ``error.param`` is null
_NAMED = re.compile(
    r"API key|body|JSON|queue|prompt|image|route|method|max_route_prompts|model|size|seed|"
    r"response_format|artifact|log_dir|\bn\b"
)


def error_problem(status: int, body: Any) -> str | None:
    """Why a 4xx answer breaks the promise (one OpenAI-style error naming the field or the limit),
    or None when it holds. Non-4xx statuses hold here (5xx is checked apart)."""
    if not 400 <= status < 500:
        return None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("message"), str) or not err["message"]:
        return f"{status} without an error message: {str(body)[:120]}"
    if "Traceback" in err["message"]:
        return f"{status} with a traceback"
    if err.get("param") is None and not _NAMED.search(err["message"]):
        return f"{status} names no field or limit: {err['message'][:120]}"
    if err.get("param") is not None and not isinstance(err["param"], str):
        return f"{status}: param is {type(err['param']).__name__}"
    return None


def tiny_router(artifact):
    from t2iroute import Router

    return Router.load(artifact)


def process_app(artifact, image_dir, **kw):
    """``engine=process``: create_app around the tiny artifact's router, keys on."""
    from t2iroute.serving import create_app

    return create_app(tiny_router(artifact), api_keys=[KEY], image_dir=str(image_dir), **kw)


class _Call:
    def __init__(self, backends, name, args):
        self.backends, self.name, self.args = backends, name, args

    def result(self, timeout_s=None):
        backend, prompts, seeds = self.args
        return self.backends[backend].generate(prompts, seeds=seeds)


class _Method:
    def __init__(self, backends, name):
        self.backends, self.name = backends, name

    def remote(self, *args):
        return _Call(self.backends, self.name, args)


class LocalHandle:
    """A stand-in for a model deployment's handle: ``handle.generate.remote(...).result()`` runs the
    group's backends in this process (what :class:`~t2iroute.serving.ray.ModelServer` does
    on its replica)."""

    def __init__(self, specs):
        from t2iroute.backends import build_backends

        self.generate = _Method(build_backends(dict(specs)), "generate")


def ray_app(artifact, image_dir, **kw):
    """``engine=ray``: the router deployment's ASGI app, as Serve's ingress gets it."""
    from t2iroute.cluster import groups_of
    from t2iroute.serving.ray import RouterServer

    specs = tiny_router(artifact).backend_specs
    handles, group_of = {}, {}
    for key, group in groups_of(specs).items():
        handles[key] = LocalHandle(group)
        group_of.update({name: key for name in group})
    server = RouterServer(
        str(artifact),
        specs,
        handles,
        group_of,
        None,
        {"api_keys": [KEY], "image_dir": str(image_dir), **kw},
        retry_window_s=5.0,
        timeout_s=60.0,
    )
    return server.__serve_build_asgi_app__()


def fuzz(
    schema,
    *,
    max_examples: int,
    headers: dict | None = None,
    modes=("positive", "negative"),
    derandomize: bool = True,
    seed: int | None = None,
    call: Callable | None = None,
    budget_s: float | None = None,
) -> tuple[int, list[str]]:
    """Every operation of ``schema`` x ``modes``, ``max_examples`` generated requests each:
    (requests sent, problems). A problem is a 5xx, a status or body the schema does not declare,
    or a 4xx that names no field. ``call(case) -> response`` sends one (default: ``case.call``)."""
    import time

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    tried, problems = 0, []
    t_end = None if budget_s is None else time.monotonic() + budget_s
    send = call or (lambda case: case.call(headers=headers))

    def one(case, checks, label):
        nonlocal tried
        if t_end is not None and time.monotonic() > t_end:
            return
        tried += 1
        try:
            response = send(case)
        except Exception as e:  # noqa: BLE001 -- a connection reset or an app exception
            problems.append(f"{label}: {type(e).__name__}: {str(e)[:200]}")
            return
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 -- schemathesis' FailureGroup
            problems.append(f"{label}: {response.status_code}: {' '.join(str(e).split())[:300]}")
            return
        try:
            body = response.json()
        except Exception:  # noqa: BLE001
            body = None
        why = error_problem(response.status_code, body)
        if why:
            problems.append(f"{label}: {why}")

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in modes:
            checks = [
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ]
            if mode == "negative":
                checks.append(negative_data_rejection)
            label = f"{op.method.upper()} {op.path} ({mode})"
            run = given(case=op.as_strategy(generation_mode=GenerationMode(mode)))(_bind(one, checks, label))
            run = settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                derandomize=derandomize,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )(run)
            if seed is not None:
                run = hseed(seed)(run)
            try:
                run()
            except Unsatisfiable:  # nothing to negate (an operation without parameters or body)
                if mode != "negative":
                    raise
    return tried, problems


def _bind(one, checks, label):
    def run(case):
        one(case, checks, label)

    return run


@pytest.fixture(scope="module")
def apps(tiny_artifact, tmp_path_factory):
    return {
        "process": process_app(tiny_artifact, tmp_path_factory.mktemp("images-process")),
        "ray": ray_app(tiny_artifact, tmp_path_factory.mktemp("images-ray")),
    }


@pytest.mark.parametrize("engine", ["process", "ray"])
def test_schemathesis_finds_no_5xx_and_only_declared_answers(apps, engine):
    """Positive and negative examples for every operation of the schema, with the key."""
    if engine == "ray":
        pytest.importorskip("ray.exceptions")  # RayModelBackend reads Ray's error types
    schema = schemathesis.openapi.from_asgi("/openapi.json", apps[engine])
    tried, problems = fuzz(schema, max_examples=25, headers=AUTH)
    assert tried >= 100
    assert not problems, "\n".join(problems[:20])


def test_schemathesis_without_a_key_gets_401_everywhere_but_health(apps):
    schema = schemathesis.openapi.from_asgi("/openapi.json", apps["process"])
    seen: list[tuple[str, int]] = []

    def call(case):
        response = case.call()
        seen.append((case.operation.path, response.status_code))
        return response

    tried, problems = fuzz(schema, max_examples=5, modes=("positive",), call=call)
    assert not problems, "\n".join(problems[:20])
    assert {path for path, _ in seen} >= {
        "/health",
        "/metrics",
        "/v1/models",
        "/v1/route",
        "/v1/images/generations",
        "/images/{name}",
    }
    for path, status in seen:
        assert (status == 200) if path in ("/health", "/ready", "/metrics", "/openapi.json") else (status == 401), (
            path,
            status,
        )


def test_the_ray_router_deployment_serves_the_same_app(apps, tiny_artifact, tmp_path):
    """engine=ray's ingress is create_app's app: the same routes, schema and error handling."""
    from starlette.testclient import TestClient

    pro, ray = apps["process"], apps["ray"]
    assert sorted(r.path for r in ray.routes) == sorted(r.path for r in pro.routes)
    assert ray.openapi()["paths"] == pro.openapi()["paths"]
    with TestClient(ray) as c:
        assert c.get("/health").json()["engine"] == "ray"
        r = c.post("/v1/images/generations", json={"prompt": "a cat", "size": ["64x64"]}, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["param"] == "size"
        r = c.post("/v1/route", json={"prompt": "a cat", "model": "router:max_cost=0"}, headers=AUTH)
        assert r.status_code == 400 and "max_cost 0" in r.json()["error"]["message"]


def test_error_problem_flags_what_breaks_the_promise():
    assert error_problem(200, None) is None
    assert error_problem(400, {"error": {"message": "n must be...", "param": "n"}}) is None
    assert error_problem(401, {"error": {"message": "invalid or missing API key", "param": None}}) is None
    assert error_problem(400, {"detail": "x"}) is not None
    assert error_problem(404, {"error": {"message": "Not Found", "param": None}}) is not None
