"""The server's OpenAPI schema documents its API from the pydantic models of t2iroute.serving.models:
every endpoint, the request bodies' fields with this server's bounds, the answers' shapes, the
error object, and the bearer scheme where a key is needed. In process, no sockets."""

import pytest

pytest.importorskip("fastapi")
jsonschema = pytest.importorskip("jsonschema")

KEY = "sk-openapi"
H = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def app(tiny_artifact, tmp_path_factory):
    from t2iroute import Router
    from t2iroute.serving import create_app

    return create_app(
        Router.load(tiny_artifact),
        api_keys=[KEY],
        image_dir=str(tmp_path_factory.mktemp("img")),
        max_n=3,
        max_route_prompts=5,
    )


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _body(schema: dict, path: str) -> dict:
    return _resolve(schema, schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"])


def _values(prop: dict) -> list:
    """The strings a nullable enum property allows (``enum``, or ``const`` for one)."""
    return [v for s in prop["anyOf"] for v in s.get("enum", [s["const"]] if "const" in s else [])]


def _check(schema: dict, path: str, method: str, status: int, value) -> None:
    """``value`` is valid against the schema the operation declares for ``status`` (JSON)."""
    declared = schema["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**declared, "components": schema["components"]}).validate(value)


def test_the_schema_lists_every_endpoint_with_its_methods(app):
    paths = app.openapi()["paths"]
    assert {p: sorted(ops) for p, ops in paths.items()} == {
        "/health": ["get"],
        "/ready": ["get"],
        "/metrics": ["get"],
        "/v1/models": ["get"],
        "/v1/images/generations": ["post"],
        "/v1/route": ["post"],
        "/v1/feedback": ["post"],
        "/admin/reload": ["post"],
        "/images/{name}": ["get"],
    }


def test_the_generation_request_model_has_its_fields_and_this_servers_bounds(app):
    schema = app.openapi()
    body = _body(schema, "/v1/images/generations")
    assert body["title"] == "ImageGenerationRequest" and body["required"] == ["prompt"]
    props = body["properties"]
    assert set(props) == {"prompt", "n", "size", "response_format", "seed", "model"}
    assert props["prompt"]["type"] == "string" and props["prompt"]["minLength"] == 1
    assert (props["n"]["minimum"], props["n"]["maximum"]) == (1, 3)  # max_n=3
    enums = {k: _values(props[k]) for k in ("size", "response_format")}
    assert enums == {"size": ["64x64", "auto"], "response_format": ["b64_json", "url"]}
    assert {"router", "fast", "mid", "slow"} <= set(props["model"]["examples"])


def test_without_an_image_dir_url_is_not_offered_and_no_key_is_asked(tiny_artifact):
    from t2iroute import Router
    from t2iroute.serving import create_app

    schema = create_app(Router.load(tiny_artifact)).openapi()
    assert "/images/{name}" not in schema["paths"] and "securitySchemes" not in schema["components"]
    assert _values(_body(schema, "/v1/images/generations")["properties"]["response_format"]) == ["b64_json"]
    assert not any("security" in op for ops in schema["paths"].values() for op in ops.values())


def test_the_route_request_model_takes_a_prompt_or_a_bounded_list(app):
    schema = app.openapi()
    body = _body(schema, "/v1/route")
    assert body["title"] == "RouteRequest" and set(body["properties"]) == {"prompt", "model"}
    one, many = body["properties"]["prompt"]["anyOf"]
    assert one["type"] == "string" and many["type"] == "array"
    assert (many["minItems"], many["maxItems"]) == (1, 5)  # max_route_prompts=5


def test_answers_and_errors_are_documented_by_their_models(app):
    schema = app.openapi()
    paths = schema["paths"]
    ok = _resolve(
        schema, paths["/v1/images/generations"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    )
    assert ok["title"] == "ImagesResponse" and set(ok["required"]) == {"created", "data", "t2iroute"}
    for path, method, codes in [
        ("/v1/images/generations", "post", ["400", "401", "429", "500"]),
        ("/v1/route", "post", ["400", "401", "429"]),
        ("/v1/models", "get", ["401"]),
    ]:
        for code in codes:
            err = _resolve(schema, paths[path][method]["responses"][code]["content"]["application/json"]["schema"])
            assert err["title"] == "ErrorResponse" and err["required"] == ["error"], (path, code)
    assert "Retry-After" in paths["/v1/route"]["post"]["responses"]["429"]["headers"]
    for path, title in [("/v1/models", "ModelList"), ("/health", "Health"), ("/ready", "Readiness")]:
        assert (
            _resolve(schema, paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"])["title"]
            == title
        )


def test_the_bearer_scheme_is_on_every_endpoint_that_needs_a_key(app):
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    secured = {p for p, ops in schema["paths"].items() for op in ops.values() if op.get("security")}
    assert secured == {
        "/v1/models",
        "/v1/images/generations",
        "/v1/route",
        "/v1/feedback",
        "/admin/reload",
        "/images/{name}",
    }


def test_real_answers_match_the_declared_models(app):
    from starlette.testclient import TestClient

    schema = app.openapi()
    with TestClient(app) as c:
        r = c.post("/v1/images/generations", json={"prompt": "a cat", "model": "fast", "n": 2}, headers=H)
        assert r.status_code == 200, r.text
        _check(schema, "/v1/images/generations", "post", 200, r.json())
        for prompt in ("a cat", ["a cat", "two dogs"]):
            r = c.post("/v1/route", json={"prompt": prompt, "model": "router:lam=0.1"}, headers=H)
            _check(schema, "/v1/route", "post", 200, r.json())
        _check(schema, "/v1/models", "get", 200, c.get("/v1/models", headers=H).json())
        _check(schema, "/health", "get", 200, c.get("/health").json())
        _check(schema, "/ready", "get", 200, c.get("/ready").json())
        r = c.post("/v1/images/generations", json={"prompt": "a cat", "n": 4}, headers=H)
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"  # max_n=3: the manual check's error
        _check(schema, "/v1/images/generations", "post", 400, r.json())
        with pytest.raises(jsonschema.ValidationError):  # the models are no blanket "object"
            _check(schema, "/v1/images/generations", "post", 200, {"created": 1, "data": []})


def test_the_http_reference_page_lists_exactly_the_served_endpoints(app):
    """docs/reference/http.md's table names every endpoint of the schema with its method, and no other;
    the ones it marks as needing a key refuse a request without one."""
    import re
    from pathlib import Path

    from fastapi.testclient import TestClient

    page = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "http.md").read_text()
    rows = re.findall(r"^\| (GET|POST) \| `([^`]+)` \| (yes|no) \|", page, flags=re.M)
    documented = {(path, method.lower()) for method, path, _ in rows}
    served = {(path, m) for path, ops in app.openapi()["paths"].items() for m in ops}
    assert documented == served
    client = TestClient(app)
    for method, path, key in rows:
        status = client.request(
            method, path.replace("{name}", "missing.png"), json={"prompt": "a red circle"}
        ).status_code
        assert (status == 401) == (key == "yes"), (method, path, status)
