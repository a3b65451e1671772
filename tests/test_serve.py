"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official openai client and httpx."""

import base64
import io
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["process", pytest.param("ray", marks=pytest.mark.ray)])
def server(request, tmp_path_factory, tiny_artifact):
    """The app on 127.0.0.1: in this process under uvicorn, or on Ray Serve (a local two-CPU cluster,
    a router deployment and one model deployment for the three tiny budgets)."""
    from t2iroute import Router

    router = Router.load(tiny_artifact)
    image_dir = str(tmp_path_factory.mktemp("images"))
    if request.param == "ray":
        ray = pytest.importorskip("ray")
        from ray import serve

        from t2iroute.serving import ray as ray_serve

        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
        port = _free_port()
        try:
            ray_serve.start(
                str(tiny_artifact),
                router.backend_specs,
                ray_serve.RayServeOptions(),
                port=port,
                app_kwargs={"api_keys": ["sk-test"], "image_dir": image_dir},
            )
            yield f"http://127.0.0.1:{port}", router
        finally:
            serve.shutdown()
            ray.shutdown()
        return
    from t2iroute.serving import create_app

    srv, t, url = _start(create_app(router, api_keys=["sk-test"], image_dir=image_dir))
    assert isinstance(router, Router)
    yield url, router
    srv.should_exit = True
    t.join(10)


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)


@pytest.mark.parametrize(
    "model",
    ["router", "router:lam=0.05", "router:budget=0.5", "router:quality_floor=30", "router:max_cost=0.6", "fast"],
)
def test_openai_client_generates_with_each_model_form(server, model):
    url, router = server
    raw = _client(url).images.with_raw_response.generate(
        model=model, prompt="two birds on a wire", response_format="b64_json", n=2, size="64x64"
    )
    res = raw.parse()
    assert len(res.data) == 2
    img = Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json)))
    assert img.size == (64, 64)
    backend = raw.headers["x-t2iroute-backend"]
    assert backend in router.backend_names
    if model == "fast":
        assert backend == "fast"
    elif model.startswith("router:"):
        key = model.split(":")[1].split("=")[0]
        assert raw.headers["x-t2iroute-policy"] == {"lam": "lam"}.get(key, key)
    extra = raw.http_response.json()["t2iroute"]
    assert extra["backend"] == backend and len(extra["images"]) == 2


def test_url_format_route_models_health_and_metrics(server):
    url, router = server
    res = _client(url).images.generate(model="router", prompt="a cat", response_format="url")
    h = {"Authorization": "Bearer sk-test"}  # keys are on: fetching an image needs one too
    assert httpx.get(res.data[0].url, headers=h).content[:8] == b"\x89PNG\r\n\x1a\n"
    d = httpx.post(
        url + "/v1/route", json={"prompt": ["a cat", "three apples"], "model": "router:lam=0"}, headers=h
    ).json()
    assert [x["prompt"] for x in d["data"]] == ["a cat", "three apples"]
    models = {m["id"] for m in httpx.get(url + "/v1/models", headers=h).json()["data"]}
    assert {"router", "fast", "mid", "slow"} <= models
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["engine"] in ("process", "ray")
    text = httpx.get(url + "/metrics").text
    assert 't2iroute_images_total{backend="' in text and "t2iroute_routing_seconds_bucket" in text
    assert "t2iroute_queue_depth" in text and "t2iroute_fallbacks" in text
    assert 't2iroute_requests_total{endpoint="/v1/images/generations",status="200"}' in text


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "router"}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "a cat", "n": 0}, "n"),
        ({"prompt": "a cat", "n": 1000}, "n"),
        ({"prompt": "a cat", "model": "dall-e-9"}, "model"),
        ({"prompt": "a cat", "size": "1792x1024"}, "size"),
        ({"prompt": "a cat", "response_format": "jpeg"}, "response_format"),
    ],
)
def test_bad_requests_are_400_naming_the_field(server, body, param):
    url, _ = server
    r = httpx.post(url + "/v1/images/generations", json=body, headers={"Authorization": "Bearer sk-test"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"]


def test_malformed_json_huge_body_and_bad_key(server):
    url, _ = server
    h = {"Authorization": "Bearer sk-test", "content-type": "application/json"}
    r = httpx.post(url + "/v1/images/generations", content=b"{not json", headers=h)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/images/generations", content=b"x" * (1 << 20 + 1), headers=h)
    assert r.status_code == 400 and "body over" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/images/generations", json={"prompt": "a cat"}, headers={"Authorization": "Bearer no"})
    assert r.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).images.generate(prompt="a cat")
    assert httpx.get(url + "/health").status_code == 200  # still up


@pytest.mark.ray
@pytest.mark.parametrize("server", ["ray"], indirect=True)
def test_a_model_replica_killed_during_a_request_loop_loses_no_request(server):
    """SIGKILL the only replica of the model while four clients loop: the calls it held are sent
    again once Serve has replaced it, and every request gets its images."""
    import os
    import re
    import signal

    from ray import serve

    from t2iroute.serving import ray as ray_serve

    url, router = server
    handle = serve.get_deployment_handle(ray_serve.model_deployments()[0], app_name=ray_serve.APP_NAME)
    pid = handle.pid.remote().result()
    done, errors = [], []

    def loop(i):
        client = _client(url)
        for k in range(5):
            try:
                raw = client.images.with_raw_response.generate(
                    model="slow", prompt=f"kite {i} {k}", n=2, response_format="b64_json", size="64x64"
                )
                done.append((raw.http_response.status_code, raw.headers["x-t2iroute-backend"], len(raw.parse().data)))
            except Exception as e:  # noqa: BLE001 -- counted: the test fails on any
                errors.append(e)

    clients = [threading.Thread(target=loop, args=(i,)) for i in range(4)]
    for t in clients:
        t.start()
    time.sleep(1.5)  # the replica is busy with the loop's requests
    os.kill(pid, signal.SIGKILL)
    for t in clients:
        t.join(300)
    assert not errors, errors[:3]
    assert done == [(200, "slow", 2)] * 20
    assert handle.pid.remote().result() != pid  # Serve replaced the replica
    text = httpx.get(url + "/metrics").text
    retried = re.search(r't2iroute_backend_retries_total\{backend="slow"\} ([0-9.]+)', text)
    assert retried and float(retried.group(1)) >= 1, text[-1500:]


@pytest.mark.ray
@pytest.mark.parametrize("server", ["ray"], indirect=True)
def test_a_backend_raising_on_its_replica_falls_back_and_is_not_retried(server, tiny_artifact, tmp_path):
    """A second application on the same cluster whose cheapest backend cannot load its model."""
    from ray import serve

    from t2iroute import Router
    from t2iroute.serving import ray as ray_serve

    url, _ = server
    (tmp_path / "not-a-model").mkdir()
    router = Router.load(tiny_artifact)
    specs = {
        **router.backend_specs,
        "fast": {"model": str(tmp_path / "not-a-model"), "steps": 2, "height": 64, "width": 64},
    }
    opts = ray_serve.RayServeOptions(num_cpus_per_replica=0.5)  # the first app's replica holds 1 of the 2 CPUs
    ray_serve.start(
        str(tiny_artifact), specs, opts, port=int(url.rsplit(":", 1)[1]), name="fallback", route_prefix="/fb"
    )
    try:
        assert len(ray_serve.model_deployments("fallback")) == 2  # the broken model is a deployment of its own
        raw = _client(url + "/fb").images.with_raw_response.generate(
            model="router:lam=1000", prompt="a cat", size="64x64"
        )
        assert raw.http_response.status_code == 200 and len(raw.parse().data) == 1
        assert raw.headers["x-t2iroute-routed-backend"] == "fast" and raw.headers["x-t2iroute-backend"] != "fast"
        (fb,) = raw.http_response.json()["t2iroute"]["images"][0]["fallbacks"]
        assert fb["backend"] == "fast" and ("not-a-model" in fb["error"] or "model_index" in fb["error"])
        text = httpx.get(url + "/fb/metrics").text
        assert 't2iroute_fallbacks_total{backend="fast"} 1.0' in text
        assert 't2iroute_backend_retries_total{backend="fast"} 0.0' in text  # an error, not a dead replica
    finally:
        serve.delete("fallback")


@pytest.mark.ray
@pytest.mark.parametrize("server", ["ray"], indirect=True)
def test_replicas_the_cluster_can_never_hold_are_refused_before_deploying(server, tiny_artifact):
    from t2iroute import Router
    from t2iroute.serving import ray as ray_serve
    from t2iroute.errors import ConfigError

    url, _ = server
    with pytest.raises(ConfigError, match=r"3 replica\(s\) of 1 model\(s\): 3 CPUs .* has 2 CPUs"):
        ray_serve.start(
            str(tiny_artifact),
            Router.load(tiny_artifact).backend_specs,
            ray_serve.RayServeOptions(min_replicas=3, max_replicas=3),
            port=int(url.rsplit(":", 1)[1]),
            name="too-big",
            route_prefix="/big",
        )
    assert httpx.get(url + "/health").status_code == 200  # the running application is untouched


@pytest.mark.parametrize("engine", ["process", pytest.param("ray", marks=pytest.mark.ray)])
def test_t2iroute_serve_command_serves_the_openai_client_and_stops_on_sigterm(tiny_artifact, engine):
    import json
    import os
    import signal
    import subprocess
    import sys

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MY_KEYS": "sk-a,sk-b"}
    extra = (
        []
        if engine == "process"
        # its own local instance; autoscaling between 1 and 2 replicas
        else (pytest.importorskip("ray") and ["engine=ray", "ray.num_cpus=2", "ray.max_replicas=2"])
    )
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "t2iroute.cli",
            "serve",
            f"artifact={tiny_artifact}",
            f"port={port}",
            "api_keys_env=MY_KEYS",
            "max_route_prompts=2",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = json.loads(p.stdout.readline())
        assert first["serving"] == f"http://127.0.0.1:{port}/v1" and first["auth"] is True
        if engine == "ray":
            assert first["engine"] == "ray" and first["models"] == ["model-0-tiny"]
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        res = openai.OpenAI(base_url=url + "/v1", api_key="sk-b", max_retries=0).images.generate(
            model="router:lam=0.1", prompt="a red car"
        )
        assert Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json))).size == (64, 64)
        r = httpx.post(url + "/v1/route", json={"prompt": ["a", "b", "c"]}, headers={"Authorization": "Bearer sk-a"})
        assert r.status_code == 400 and "at most 2 (max_route_prompts)" in r.json()["error"]["message"]
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert "sk-a" not in err and "sk-b" not in err  # keys never reach the logs


def _start(app):
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    return srv, t, f"http://127.0.0.1:{port}"


def test_remote_backend_routes_across_a_second_server_and_falls_back_when_it_stops(tiny_artifact, monkeypatch):
    from t2iroute import Router
    from t2iroute.serving import create_app

    remote_srv, thread, url = _start(create_app(Router.load(tiny_artifact), api_keys=["sk-remote"]))
    monkeypatch.setenv("REMOTE_KEY", "sk-remote")
    spec = {
        "type": "openai_images",
        "base_url": url + "/v1",
        "model": "slow",
        "size": "64x64",
        "api_key_env": "REMOTE_KEY",
        "retries": 1,
        "deadline_s": 5,
        "timeout_s": 5,
    }
    router = Router.load(tiny_artifact, backends={"slow": spec})  # 'slow' now lives behind the second server
    prompts = ["two birds on a wire", "a sign saying 'hello'", "a cat", "three apples"]
    routed = router.route(prompts, lam=0.0)
    assert any(d.backend == "slow" for d in routed) and any(d.backend != "slow" for d in routed)
    res = router.generate(prompts, lam=0.0, seed=1)
    for r, d in zip(res, routed):
        assert r.backend == d.backend and not r.fallbacks
        assert r.image.size == (64, 64)
    remote = [r for r in res if r.backend == "slow"]
    assert remote[0].nfe is not None and remote[0].generation.config["type"] == "openai_images"
    # the remote server stops mid-run: its prompts fall back to their next choice
    remote_srv.should_exit = True
    thread.join(10)
    res = router.generate(prompts, lam=0.0, seed=1)
    for r, d in zip(res, routed):
        if d.backend == "slow":
            assert r.backend == d.ranking[1] and r.fallbacks[0]["backend"] == "slow"
            assert "ConnectError" in r.fallbacks[0]["error"]
        else:
            assert r.backend == d.backend
    # an artifact that stores this backend keeps no endpoint: the loader's own config must give it
    import tempfile

    art = tempfile.mkdtemp() + "/router"
    router.backend_specs["slow"] = dict(spec)
    router.save(art)
    again = Router.load(art)
    assert again.backends["slow"].base_url is None and again.backends["slow"].api_key_env is None
    with pytest.raises(Exception, match="no base_url; an endpoint comes from your own config"):
        again.backends["slow"].generate(["a cat"], seeds=[0])
    # a missing key is an error naming the variable, and the key never sits in the config
    monkeypatch.delenv("REMOTE_KEY")
    assert "sk-remote" not in str(router.backends["slow"].config())
    with pytest.raises(Exception, match="REMOTE_KEY holds no API key"):
        router.backends["slow"].generate(["a cat"], seeds=[0])


def test_concurrent_requests_with_one_model_share_a_batch(tiny_artifact):
    from concurrent.futures import ThreadPoolExecutor

    from t2iroute import Router
    from t2iroute.serving import create_app

    srv, t, url = _start(create_app(Router.load(tiny_artifact), batch_window_s=0.3))
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        prompts = ["a cat", "two dogs", "three apples", "a robot"]
        with ThreadPoolExecutor(4) as ex:
            raws = list(ex.map(lambda p: client.images.with_raw_response.generate(model="fast", prompt=p), prompts))
        for raw, p in zip(raws, prompts):
            assert raw.http_response.json()["t2iroute"]["decision"]["prompt"] == p
        text = httpx.get(url + "/metrics").text
        values = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}
        batched, calls = values["t2iroute_requests_batched_total"], values["t2iroute_generate_batches_total"]
        assert batched >= 2 and calls < 4
    finally:
        srv.should_exit = True
        t.join(10)


# -- issue 22, item 5: input never makes a 500, a 500 never drops the connection --------------------
H = {"Authorization": "Bearer sk-test"}


def _port_of(response):
    """The client-side port of the connection a response came on (the same port: the same connection)."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


@pytest.mark.parametrize(
    "path, body, param, words",
    [
        ("/v1/images/generations", {"prompt": "a cat", "size": ["64x64"]}, "size", "size"),
        ("/v1/images/generations", {"prompt": "a cat", "size": {"w": 64}}, "size", "size"),
        (
            "/v1/images/generations",
            {"prompt": "a cat", "response_format": ["url"]},
            "response_format",
            "response_format",
        ),
        ("/v1/images/generations", {"prompt": "a cat", "model": "router:budget=0.000001"}, "model", "budget 1e-06"),
        ("/v1/images/generations", {"prompt": "a cat", "model": "router:max_cost=0"}, "model", "max_cost 0"),
        ("/v1/route", {"prompt": "a cat", "model": "router:budget=0.000001"}, "model", "budget 1e-06"),
        ("/v1/route", {"prompt": "a cat", "model": "router:budget=0"}, "model", "budget 0"),
        ("/v1/route", {"prompt": "a cat", "model": "router:budget=-1"}, "model", "budget must be a finite number >= 0"),
        ("/v1/route", {"prompt": "a cat", "model": "router:max_cost=0"}, "model", "max_cost 0"),
        ("/v1/route", {"prompt": "a cat", "model": "router:max_cost=-2"}, "model", "max_cost must be"),
        ("/v1/route", b"[" * 200_000 + b"]" * 200_000, None, "nested too deeply"),
        ("/v1/images/generations", b'{"prompt": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", None, "nested too deeply"),
    ],
)
def test_input_that_made_a_500_is_a_400_naming_the_field_and_the_connection_survives(server, path, body, param, words):
    url, _ = server
    with httpx.Client(headers=H, timeout=60) as c:
        first = c.get(url + "/health")
        if isinstance(body, bytes):
            r = c.post(url + path, content=body, headers={"content-type": "application/json"})
        else:
            r = c.post(url + path, json=body)
        assert r.status_code == 400, r.text[:300]
        err = r.json()["error"]
        assert err["param"] == param and words in err["message"], err
        again = c.get(url + "/health")  # on the same keep-alive connection: it was reset after a 500
        assert again.status_code == 200
        assert _port_of(again) == _port_of(first)


def test_images_need_the_key_when_keys_are_on(server):
    url, _ = server
    res = _client(url).images.generate(model="fast", prompt="a cat", response_format="url")
    assert httpx.get(res.data[0].url).status_code == 401
    assert httpx.get(res.data[0].url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(res.data[0].url, headers=H).content[:4] == b"\x89PNG"
    # an unknown id answers the same 401 without the key (no telling which ids exist)
    assert httpx.get(url + "/images/" + "0" * 32 + ".png").status_code == 401
    assert httpx.get(url + "/images/" + "0" * 32 + ".png", headers=H).status_code == 404


def test_a_key_with_bytes_that_are_not_ascii_is_a_401(server):
    url, _ = server
    r = httpx.get(url + "/v1/models", headers={"Authorization": b"Bearer sk-t\xe9st"})
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]


def test_unknown_paths_and_methods_answer_an_openai_style_error(server):
    url, _ = server
    r = httpx.get(url + "/v2/nothing", headers=H)
    assert r.status_code == 404 and r.json()["error"]["message"] == "no route for GET /v2/nothing"
    r = httpx.delete(url + "/v1/route", headers=H)
    assert r.status_code == 405 and "DELETE /v1/route" in r.json()["error"]["message"]


def test_schemathesis_over_http_finds_no_5xx(server):
    """A few generated requests per operation against the live server (both engines)."""
    from tests.test_fuzz_server import fuzz

    schemathesis = pytest.importorskip("schemathesis")
    url, _ = server
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    tried, problems = fuzz(schema, max_examples=6, headers=H)
    assert tried >= 30 and not problems, "\n".join(problems[:20])


def _slow_router(tiny_artifact, per_prompt_s: float):
    """The tiny router, its routing made ``per_prompt_s`` slower per prompt (as an LLM featurizer
    is), under the router's own lock (routing is serialized)."""
    from t2iroute import Router

    router = Router.load(tiny_artifact)
    route = router.route

    def slow(prompts, **kw):
        with router._lock:
            time.sleep(per_prompt_s * (1 if isinstance(prompts, str) else len(prompts)))
            return route(prompts, **kw)

    router.route = slow
    return router


def test_a_big_route_request_does_not_hold_up_a_single_prompt_one(tiny_artifact):
    from t2iroute.serving import create_app

    srv, t, url = _start(create_app(_slow_router(tiny_artifact, 0.005)))
    try:
        big = [f"prompt number {i}" for i in range(256)]  # 1.3 s of routing
        done = {}

        def post(name, prompt):
            t0 = time.perf_counter()
            r = httpx.post(url + "/v1/route", json={"prompt": prompt, "model": "router:lam=0.1"}, timeout=60)
            done[name] = (r.status_code, time.perf_counter() - t0)

        tb = threading.Thread(target=post, args=("big", big))
        tb.start()
        time.sleep(0.2)
        post("small", "a cat")
        tb.join(60)
        assert done["big"][0] == 200 and done["small"][0] == 200
        assert done["small"][1] < 0.4 * done["big"][1], done  # served between the big one's pieces
    finally:
        srv.should_exit = True
        t.join(10)


def test_route_prompts_per_request_are_bounded_and_route_requests_count_in_the_queue(tiny_artifact):
    from concurrent.futures import ThreadPoolExecutor

    from t2iroute.serving import create_app

    srv, t, url = _start(create_app(_slow_router(tiny_artifact, 0.2), max_queue=2, max_route_prompts=8))
    try:
        r = httpx.post(url + "/v1/route", json={"prompt": ["a cat"] * 9})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "prompt" and "at most 8 (max_route_prompts)" in err["message"]
        with ThreadPoolExecutor(6) as ex:
            codes = list(
                ex.map(
                    lambda i: httpx.post(url + "/v1/route", json={"prompt": [f"a cat {i}"] * 4}, timeout=60), range(6)
                )
            )
        statuses = sorted(r.status_code for r in codes)
        assert statuses.count(429) >= 3 and 200 in statuses, statuses
        assert all(r.headers.get("retry-after") == "1" for r in codes if r.status_code == 429)
        assert httpx.get(url + "/health").json()["queue_depth"] == 0  # every slot given back
    finally:
        srv.should_exit = True
        t.join(10)


def test_an_unexpected_error_is_one_json_500_and_the_connection_survives(tiny_artifact, caplog):
    from t2iroute import Router
    from t2iroute.serving import create_app

    router = Router.load(tiny_artifact)

    def broken(*a, **kw):
        raise RuntimeError("disk on fire\nsecond line")

    router.route = broken
    srv, t, url = _start(create_app(router))
    try:
        with httpx.Client(timeout=30) as c, caplog.at_level("ERROR", logger="t2iroute.serving.app"):
            first = c.get(url + "/health")
            r = c.post(url + "/v1/route", json={"prompt": "a cat"})
            assert r.status_code == 500
            assert r.json()["error"] == {
                "message": "internal server error (logged on the server)",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            again = c.get(url + "/health")
            assert again.status_code == 200 and _port_of(again) == _port_of(first)
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "t2iroute.serving.app"]
        assert lines == ["POST /v1/route: 500: RuntimeError: disk on fire"]
        assert 't2iroute_requests_total{endpoint="/v1/route",status="500"} 1.0' in httpx.get(url + "/metrics").text
    finally:
        srv.should_exit = True
        t.join(10)


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1e9"])
def test_serve_refuses_a_max_route_prompts_that_is_not_a_count(tiny_artifact, capsys, value):
    from t2iroute.cli import main

    assert main(["serve", f"artifact={tiny_artifact}", f"max_route_prompts={value}"]) == 2
    assert "max_route_prompts" in capsys.readouterr().err


def test_parse_model_refuses_what_no_routing_can_meet():
    import numpy as np

    from t2iroute.serving.app import RequestError, parse_model

    costs, names = np.array([0.5, 2.0]), ["a", "b"]
    assert parse_model("router:budget=0.5", names, costs) == ({"budget": 0.5}, None)
    assert parse_model("router:max_cost=0.5", names, costs) == ({"max_cost": 0.5}, None)
    assert parse_model("router:lam=1e300", names, costs) == ({"lam": 1e300}, None)
    for model, words in [
        ("router:budget=0.000001", "budget 1e-06 is below"),
        ("router:max_cost=0", "max_cost 0"),
        ("router:budget=-1", ">= 0"),
        ("router:lam=1e308", "overflows"),
        ("router:quality_floor=nan", "finite"),
        ("router:max_cost=inf", "finite"),
    ]:
        with pytest.raises(RequestError, match=words) as e:
            parse_model(model, names, costs)
        assert e.value.param == "model" and e.value.status == 400


def test_warmup_loads_every_backend_before_ready_and_requests_meanwhile_wait(tiny_artifact):
    """warmup=True: /health is ok at once, /ready 503 (Retry-After) while the backends load, then
    200; a generation sent during the warm-up waits and succeeds; after it every backend's
    pipeline is loaded (the first request loads nothing)."""
    from t2iroute import Router
    from t2iroute.serving import create_app

    router = Router.load(tiny_artifact)
    gate, loading = threading.Event(), threading.Event()
    slow = router.backends["slow"]
    real_load = slow.load

    def gated_load():  # the warm-up is held here until the test has seen it not ready
        loading.set()
        gate.wait(30)
        real_load()

    slow.load = gated_load
    readies = []
    srv, t, url = _start(create_app(router, warmup=True, on_ready=readies.append))
    try:
        assert loading.wait(30)
        assert httpx.get(url + "/health").json()["status"] == "ok"
        r = httpx.get(url + "/ready")
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["status"] == "warming_up"
        early = {}
        th = threading.Thread(
            target=lambda: early.update(
                r=httpx.post(url + "/v1/images/generations", json={"prompt": "a cat", "model": "fast"}, timeout=60)
            )
        )
        th.start()
        time.sleep(0.3)
        assert "r" not in early  # waiting for the warm-up, not failed
        gate.set()
        th.join(60)
        assert early["r"].status_code == 200
        for _ in range(200):
            r = httpx.get(url + "/ready")
            if r.status_code == 200:
                break
            time.sleep(0.05)
        info = r.json()
        assert r.status_code == 200 and info["status"] == "ready" and info["warmup_s"] > 0 and "failed" not in info
        assert readies and readies[0]["status"] == "ready"
        assert all(b._shared is not None for b in router.backends.values())  # every pipeline loaded
        assert httpx.get(url + "/health").json()["ready"] is True
        assert "t2iroute_warmup_seconds" in httpx.get(url + "/metrics").text
    finally:
        gate.set()
        srv.should_exit = True
        t.join(10)


def test_without_warmup_the_server_is_ready_at_once_and_loads_on_first_use(tiny_artifact):
    from t2iroute import Router
    from t2iroute.serving import create_app

    router = Router.load(tiny_artifact)
    srv, t, url = _start(create_app(router))
    try:
        r = httpx.get(url + "/ready")
        assert r.status_code == 200 and r.json() == {"status": "ready", "warmup": False, "warmup_s": None}
        assert all(b._shared is None for b in router.backends.values())  # lazy, as before
    finally:
        srv.should_exit = True
        t.join(10)


def test_a_backend_that_cannot_load_is_listed_in_ready_and_the_server_still_serves(tiny_artifact):
    from t2iroute import Router
    from t2iroute.serving import create_app

    router = Router.load(tiny_artifact)

    def broken():
        raise RuntimeError("no weights here")

    router.backends["slow"].load = broken
    srv, t, url = _start(create_app(router, warmup=True))
    try:
        for _ in range(400):
            r = httpx.get(url + "/ready")
            if r.status_code == 200:
                break
            time.sleep(0.05)
        assert r.status_code == 200 and r.json()["failed"] == {"slow": "RuntimeError: no weights here"}
        assert (
            httpx.post(
                url + "/v1/images/generations", json={"prompt": "a cat", "model": "fast"}, timeout=60
            ).status_code
            == 200
        )
    finally:
        srv.should_exit = True
        t.join(10)


def test_serve_refuses_a_warmup_that_is_not_a_boolean(tiny_artifact, capsys):
    from t2iroute.cli import main

    assert main(["serve", f"artifact={tiny_artifact}", "warmup=maybe"]) == 2
    err = capsys.readouterr().err
    assert "warmup" in err and len(err.strip().splitlines()) == 1
