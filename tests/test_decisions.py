"""The decision log, feedback and exploration: Router.generate logs every image it makes with an id,
feedback scores it, exploration sends a share elsewhere with its propensity, and the log survives
its writer's SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from t2iroute.router.decisions import DecisionLog, UnknownId, prompt_hash, read_log

from t2iroute import Router

from tests.conftest import make_tiny_router

pytest.importorskip("fastapi")


def test_generate_logs_each_image_with_an_id_and_feedback_scores_it(tmp_path, tiny_artifact):
    router = Router.load(tiny_artifact)
    router.log_decisions(tmp_path / "log")
    res = router.generate(["a red circle", "two dogs"], seed=[0, 1])
    ids = [r.id for r in res]
    assert len(set(ids)) == 2 and all(i.startswith("img-") for i in ids)
    df = read_log(tmp_path / "log")
    assert list(df["id"]) == ids and list(df["prompt"]) == ["a red circle", "two dogs"]
    assert list(df["backend"]) == [r.backend for r in res] and list(df["seed"]) == [0, 1]
    assert df["prompt_sha256"][0] == prompt_hash("a red circle")
    assert set(df["predicted"][0]) == set(router.backend_names) and df["propensity"][0] == 1.0
    assert len(df["features"][0]) == len(router.featurizer.feature_names_)
    assert router.feedback(ids[0], 31.5) is False  # new
    assert router.feedback(ids[0], 31.5) is True  # the same again: replaced by itself, idempotent
    router.feedback(ids[1], 0.25, source="autoscore")
    df = read_log(tmp_path / "log")
    assert df["score_user"][0] == 31.5 and np.isnan(df["score_user"][1]) and df["score_autoscore"][1] == 0.25
    with pytest.raises(UnknownId):
        router.feedback("img-" + "0" * 32, 1.0)
    with pytest.raises(ValueError, match="score"):
        router.feedback(ids[0], float("nan"))


def test_a_log_without_prompts_keeps_only_the_hash_and_features(tmp_path, tiny_artifact):
    router = Router.load(tiny_artifact)
    router.log_decisions(tmp_path / "log", prompts=False)
    router.generate("a secret prompt", seed=0)
    df = read_log(tmp_path / "log")
    assert df["prompt"][0] is None and df["prompt_sha256"][0] == prompt_hash("a secret prompt")
    assert df["features"][0] is not None
    raw = b"".join(p.read_bytes() for p in (tmp_path / "log").iterdir())
    assert b"a secret prompt" not in raw


def test_the_log_rotates_past_its_size_and_keeps_max_files(tmp_path):
    log = DecisionLog(tmp_path / "log", max_bytes=2**16, max_files=2)
    rec = lambda i: {"id": f"img-{i}", "prompt": "x" * 2000, "backend": "fast", "features": np.zeros(64)}  # noqa: E731
    for i in range(200):
        log.record([rec(i)])
    rotated = sorted((tmp_path / "log").glob("decisions-*.sqlite"))
    assert len(rotated) == 2
    df = read_log(tmp_path / "log")
    assert 0 < len(df) < 200 and "img-199" in set(df["id"])  # the newest kept, the oldest gone
    log.score("img-199", 1.0)
    with pytest.raises(UnknownId):
        log.score("img-0", 1.0)  # rotated out


def test_exploration_sends_a_share_elsewhere_within_max_cost_with_its_propensity():
    router = make_tiny_router()
    prompts = [f"a red circle number {i}" for i in range(400)]
    greedy = [d.backend for d in router.route(prompts)]
    router.explore = 0.2
    ds = router.route(prompts)
    k = len(router.backend_names)
    explored = [d for d in ds if d.explored]
    assert 50 <= len(explored) <= 110  # ~80 of 400
    for d, g in zip(ds, greedy):
        if d.explored:
            assert d.backend != g and d.propensity == pytest.approx(0.2 / (k - 1))
            assert d.ranking[0] == d.backend and sorted(d.ranking) == sorted(router.backend_names)
        else:
            assert d.backend == g and d.propensity == pytest.approx(0.8)
    assert "propensity" in ds[0].to_dict()
    # never above the request's max_cost
    cap = sorted(router.costs)[1]
    for d in router.route(prompts, max_cost=cap):
        assert d.cost[d.backend] <= cap
    with pytest.raises(Exception, match="explore"):
        router.route("x", explore=1.0)


def _start_server(tmp_path, artifact, extra: str = ""):
    """A server in its own process (the tiny router, a decision log) and its URL."""
    from tests.test_serve import _free_port

    port = _free_port()
    script = tmp_path / "server.py"
    script.write_text(
        "import uvicorn\n"
        "from t2iroute import Router\n"
        "from t2iroute.serving import create_app\n"
        f"router = Router.load({str(artifact)!r})\n"
        f"router.log_decisions({str(tmp_path / 'log')!r})\n"
        f"{extra}\n"
        f"uvicorn.run(create_app(router), host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start")


def test_the_server_returns_ids_takes_feedback_and_its_log_survives_sigkill(tmp_path, tiny_artifact):
    proc, url = _start_server(tmp_path, tiny_artifact)
    try:
        ids = []
        for i in range(6):
            r = httpx.post(
                url + "/v1/images/generations", json={"prompt": f"a blue square {i}", "n": 2, "seed": i}, timeout=60
            )
            assert r.status_code == 200, r.text
            body = r.json()["t2iroute"]
            assert r.headers["x-t2iroute-id"] == body["id"] == body["images"][0]["id"]
            ids += [im["id"] for im in body["images"]]
        assert len(set(ids)) == 12
        ok = httpx.post(url + "/v1/feedback", json={"id": ids[0], "score": 30.5}, timeout=10)
        assert ok.status_code == 200 and ok.json() == {"id": ids[0], "recorded": True, "replaced": False}
        again = httpx.post(url + "/v1/feedback", json={"id": ids[0], "score": 30.5}, timeout=10)
        assert again.status_code == 200 and again.json()["replaced"] is True
        assert httpx.post(url + "/v1/feedback", json={"id": "img-nope", "score": 1}, timeout=10).status_code == 404
        bad = httpx.post(url + "/v1/feedback", json={"id": ids[1], "score": "good"}, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "score"
        # SIGKILL while requests are in flight: what was answered is in the log, nothing is corrupt
        threads_out = []

        def fire():
            try:
                threads_out.append(
                    httpx.post(url + "/v1/images/generations", json={"prompt": "a green circle"}, timeout=30)
                )
            except httpx.HTTPError:
                pass

        import threading

        ts = [threading.Thread(target=fire) for _ in range(8)]
        for t in ts:
            t.start()
        time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for t in ts:
        t.join(40)
    answered = [r.json()["t2iroute"]["id"] for r in threads_out if r.status_code == 200]
    df = read_log(tmp_path / "log")
    got = set(df["id"])
    assert set(ids) <= got and set(answered) <= got  # every answered image was logged before it left
    assert df.loc[df["id"] == ids[0], "score_user"].item() == 30.5
    import sqlite3

    for p in (tmp_path / "log").glob("decisions*.sqlite"):
        assert sqlite3.connect(p).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert json.dumps(df.drop(columns=["features"]).to_dict("records"), default=str)  # reads back whole


def _log_with_scores(dir, table):
    log = DecisionLog(dir)
    recs = [
        {"id": f"img-n{i}", "prompt": f"a novel prompt {i}", "backend": "slow", "metric": "clip", "seed": 0}
        for i in range(30)
    ]
    recs.append({"id": "img-known", "prompt": table["prompt"].iloc[0], "backend": "fast", "metric": "clip"})
    recs.append({"id": "img-unscored", "prompt": "never scored", "backend": "mid", "metric": "clip"})
    log.record(recs)
    for i in range(30):
        log.score(f"img-n{i}", 33.0 if i % 2 else 31.0, source="user" if i % 3 else "autoscore")
    log.score("img-known", 29.0)
    hidden = DecisionLog(dir, prompts=False)  # a record logged without its text
    hidden.record([{"id": "img-hidden", "prompt": "private", "backend": "slow", "metric": "clip"}])
    hidden.score("img-hidden", 30.0)
    return 30 + 1  # cells with text and a score


def test_train_learns_from_the_scored_cells_of_a_decision_log(tmp_path, capsys):
    from t2iroute.cli import main

    from tests.conftest import make_table

    table = make_table()
    path = tmp_path / "t.parquet"
    table.to_parquet(path)
    n_cells = _log_with_scores(tmp_path / "log", table)
    base = ["train", "data=custom", f"data.path={path}", "features=lexical", "predictor=ridge"]
    assert main([*base, f"out_dir={tmp_path / 'a'}"]) == 0
    before = json.loads(capsys.readouterr().out)["metrics"]
    assert main([*base, f"feedback={tmp_path / 'log'}", f"out_dir={tmp_path / 'b'}"]) == 0
    after = json.loads(capsys.readouterr().out)["metrics"]
    fb = after["feedback"]
    assert fb["logged"] == 33 and fb["scored"] == 32 and fb["without_prompt_text"] == 1
    assert fb["cells"] == n_cells and fb["joined_table_prompts"] == 1
    # 30 new prompts (train only) and one cell averaged into a table prompt's existing cell
    assert after["coverage"]["prompts"] == before["coverage"]["prompts"] + 30
    assert after["coverage"]["observed_cells"] == before["coverage"]["observed_cells"] + 30
    assert after["n_test"] == before["n_test"]
    rc = main([*base, "metric=clip", f"feedback={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'c'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "feedback=" in err, err


def test_a_reload_under_a_request_loop_fails_no_request_and_shows_the_new_checksum(tmp_path):
    """The official openai client generating in a loop while the artifact folder is replaced
    (Router.save's atomic swap, as train does) and reloaded three times."""
    import threading

    import openai

    from t2iroute.serving import create_app
    from tests.conftest import TINY_SPECS
    from tests.test_serve import _start

    path = tmp_path / "router"
    make_tiny_router(specs=TINY_SPECS).save(path)
    router = Router.load(path)
    router.log_decisions(tmp_path / "log")
    app = create_app(router, api_keys=["sk-test"], artifact_path=str(path))
    srv, t, url = _start(app)
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=60)
    H = {"Authorization": "Bearer sk-test"}
    stop, answers, errors = threading.Event(), [], []

    def loop():
        while not stop.is_set():
            try:
                answers.append(client.images.generate(model="router", prompt="two birds on a wire", n=1))
            except Exception as e:  # noqa: BLE001 -- counted: the test wants none
                errors.append(e)

    workers = [threading.Thread(target=loop) for _ in range(3)]
    try:
        for w in workers:
            w.start()
        seen = [httpx.get(url + "/health").json()["artifact"]["sha256"]]
        for lam in (0.5, 1.0, 2.0):
            n = len(answers)
            deadline = time.time() + 60
            while len(answers) <= n and time.time() < deadline:  # the loop is serving
                time.sleep(0.05)
            make_tiny_router(specs=TINY_SPECS, lam=lam).save(path)
            r = httpx.post(url + "/admin/reload", headers=H, timeout=60)
            assert r.status_code == 200, r.text
            info = r.json()
            assert info["previous_sha256"] == seen[-1] and info["sha256"] != seen[-1]
            seen.append(info["sha256"])
            health = httpx.get(url + "/health").json()["artifact"]
            assert health["sha256"] == info["sha256"] and health["loaded_at"] == info["loaded_at"]
        n = len(answers)
        deadline = time.time() + 60
        while len(answers) <= n + 1 and time.time() < deadline:
            time.sleep(0.05)
        prom = httpx.get(url + "/metrics").text
        assert f'sha256="{seen[-1]}"' in prom and "t2iroute_artifact_loaded_timestamp_seconds" in prom
    finally:
        stop.set()
        for w in workers:
            w.join(60)
        srv.should_exit = True
        t.join(10)
    assert not errors and len(answers) >= 5
    assert len(set(seen)) == 4
    assert app.state.t2iroute.router.decision_log is router.decision_log
    df = read_log(tmp_path / "log")
    assert len(df) == len(answers) and df["artifact"].nunique() >= 2  # the log carries on across reloads


class _SlowScorer:
    metric, higher_is_better = "clip", True

    def __init__(self, delay=0.0):
        self.delay, self.calls = delay, 0

    def score(self, images, prompts):
        self.calls += 1
        time.sleep(self.delay)
        return [30.0 + len(p) / 100 for p in prompts]


def test_autoscore_scores_a_share_in_the_background_and_drops_rather_than_waits(tmp_path, tiny_artifact):
    from starlette.testclient import TestClient

    from t2iroute.serving import create_app
    from t2iroute.serving.autoscore import AutoScorer

    router = Router.load(tiny_artifact)
    router.log_decisions(tmp_path / "log")
    auto = AutoScorer(router, _SlowScorer(), share=1.0)
    with TestClient(create_app(router, autoscorer=auto)) as c:
        ids = [
            c.post("/v1/images/generations", json={"prompt": f"a red circle {i}"}).json()["t2iroute"]["id"]
            for i in range(4)
        ]
        assert auto.join(30)
        prom = c.get("/metrics").text
    df = read_log(tmp_path / "log").set_index("id")
    assert [df.loc[i, "score_autoscore"] for i in ids] == [30.0 + len(f"a red circle {i}") / 100 for i in range(4)]
    assert 't2iroute_autoscore_total{outcome="scored"} 4.0' in prom
    # a scorer slower than the traffic, a queue of one: images are dropped and counted, requests never wait
    router2 = Router.load(tiny_artifact)
    router2.log_decisions(tmp_path / "log2")
    slow = AutoScorer(router2, _SlowScorer(delay=2.0), share=1.0, max_queue=1)
    with TestClient(create_app(router2, autoscorer=slow)) as c:
        t0 = time.perf_counter()
        for i in range(6):
            assert c.post("/v1/images/generations", json={"prompt": f"a blue square {i}"}).status_code == 200
        took = time.perf_counter() - t0
    assert slow.dropped >= 3 and took < 6 * 2.0  # never waited for the 2 s scorer per image
    with pytest.raises(ValueError, match="metric"):
        wrong = _SlowScorer()
        wrong.metric = "aesthetic"
        AutoScorer(router, wrong, share=0.5)


@pytest.mark.parametrize(
    "args, words",
    [
        (["autoscore.share=0.1"], "autoscore.share=0.1"),
        (["log_dir=LOG", "autoscore.share=0.1", "autoscore.scorer=testbed_check"], "autoscore.scorer=testbed_check"),
        (["explore=1.5"], "explore"),
    ],
)
def test_serve_refuses_a_learning_loop_it_cannot_run_in_one_line(args, words, tmp_path, tiny_artifact, capsys):
    from t2iroute.cli import main

    args = [a.replace("LOG", str(tmp_path / "log")) for a in args]
    rc = main(["serve", f"artifact={tiny_artifact}", "port=1", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and words in err, err


@pytest.mark.ray
def test_the_ray_engine_logs_takes_feedback_and_reloads_under_a_request_loop(tmp_path):
    """engine=ray: the router replica applies the same loop settings (decision log, feedback) and
    reloads the artifact folder on POST /admin/reload while the openai client keeps generating:
    no request fails."""
    import threading

    import openai

    ray = pytest.importorskip("ray")
    from ray import serve

    from t2iroute.serving import ray as ray_serve
    from t2iroute.serving.loop import loop_settings
    from tests.conftest import TINY_SPECS
    from tests.test_serve import _free_port

    path = tmp_path / "router"
    make_tiny_router(specs=TINY_SPECS).save(path)
    loop = loop_settings({"log_dir": str(tmp_path / "log")})
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        ray_serve.start(str(path), TINY_SPECS, ray_serve.RayServeOptions(), port=port, app_kwargs={"loop": loop})
        r = httpx.post(url + "/v1/images/generations", json={"prompt": "a red circle", "n": 2}, timeout=120)
        assert r.status_code == 200, r.text
        ids = [im["id"] for im in r.json()["t2iroute"]["images"]]
        fb = httpx.post(url + "/v1/feedback", json={"id": ids[1], "score": 30.0}, timeout=30)
        assert fb.status_code == 200 and fb.json()["replaced"] is False
        before = httpx.get(url + "/health").json()["artifact"]["sha256"]
        # the official openai client generates in a loop while the artifact is replaced and reloaded
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        stop, answers, errors = threading.Event(), [], []

        def loop():
            while not stop.is_set():
                try:
                    answers.append(client.images.generate(model="router", prompt="two birds on a wire"))
                except Exception as e:  # noqa: BLE001 -- counted: the test wants none
                    errors.append(e)

        workers = [threading.Thread(target=loop) for _ in range(2)]
        for w in workers:
            w.start()
        try:
            deadline = time.time() + 120
            while len(answers) < 2 and not errors and time.time() < deadline:  # the loop is serving
                time.sleep(0.05)
            make_tiny_router(specs=TINY_SPECS, lam=1.0).save(path)
            rl = httpx.post(url + "/admin/reload", timeout=120)
            assert rl.status_code == 200 and rl.json()["previous_sha256"] == before != rl.json()["sha256"]
            assert httpx.get(url + "/health").json()["artifact"]["sha256"] == rl.json()["sha256"]
            n = len(answers)
            while len(answers) < n + 2 and not errors and time.time() < deadline:  # served after the reload
                time.sleep(0.05)
        finally:
            stop.set()
            for w in workers:
                w.join(120)
        assert not errors, errors[:3]
        assert len(answers) >= 4
        n_loop = len(answers)
        # the logging replica killed (SIGKILL: ray.kill) while requests are in flight: every
        # answered image is in the log, and nothing in it is corrupt
        replicas = [
            a
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "SERVE_REPLICA" in a["name"] and "#router#" in a["name"]
        ]
        assert len(replicas) == 1, replicas
        fired: list = []

        def fire():
            try:
                fired.append(httpx.post(url + "/v1/images/generations", json={"prompt": "a green circle"}, timeout=60))
            except httpx.HTTPError:
                pass

        ts = [threading.Thread(target=fire) for _ in range(6)]
        for th in ts:
            th.start()
        time.sleep(0.3)
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=False)
        for th in ts:
            th.join(90)
        answered = [r.json()["t2iroute"]["id"] for r in fired if r.status_code == 200]
    finally:
        serve.shutdown()
        ray.shutdown()
    import sqlite3

    for p in (tmp_path / "log").glob("decisions*.sqlite"):
        assert sqlite3.connect(p).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    df = read_log(tmp_path / "log").set_index("id")
    ids_loop = [a.model_extra["t2iroute"]["id"] for a in answers[:n_loop]]
    assert set(ids) | set(ids_loop) | set(answered) <= set(df.index) and df.loc[ids[1], "score_user"] == 30.0
    assert df["artifact"].nunique() == 2


def test_reload_poll_picks_up_a_replaced_artifact_by_itself(tmp_path):
    from starlette.testclient import TestClient

    from t2iroute.serving import create_app
    from tests.conftest import TINY_SPECS

    path = tmp_path / "router"
    make_tiny_router(specs=TINY_SPECS).save(path)
    app = create_app(Router.load(path), artifact_path=str(path), reload_poll_s=0.1)
    with TestClient(app) as c:
        before = c.get("/health").json()["artifact"]["sha256"]
        make_tiny_router(specs=TINY_SPECS, lam=1.0).save(path)
        deadline = time.time() + 30
        while c.get("/health").json()["artifact"]["sha256"] == before and time.time() < deadline:
            time.sleep(0.1)
        after = c.get("/health").json()["artifact"]["sha256"]
    assert after != before and after == json.loads((path / "manifest.json").read_text())["manifest_sha256"]
