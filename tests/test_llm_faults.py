"""LLM featurizer faults never stop routing: fake servers on 127.0.0.1 in each failure mode (the
transform returns within its deadline, rows imputed, one warning), damaged / foreign / locked /
read-only caches and bad cached values (one warning, go on without the cache), the timing
settings in spec(), and a warm-up that does not contact the server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from t2iroute.features.llm import FIELDS, LLMCache, LLMComplexityFeaturizer

PROMPTS = ["a white wall", "three red kites over a crowded park at dusk", "two cats left of a blue car"]
ANSWER = {
    "complexity": 3,
    "objects": 2,
    "attribute_bindings": 1,
    "spatial_relations": 1,
    "counting": 1,
    "text_to_render": 0,
    "detail_style": 2,
}
DEADLINE = 1.5
SLACK = 1.5
FAST = dict(timeout=0.5, deadline_s=DEADLINE, retries=2, backoff_s=0.5, concurrency=2, progress=False)


# -- a fake LLM server ---------------------------------------------------------------------------
def _completion(path: str, content: str) -> bytes:
    if path.startswith("/api/"):  # ollama
        return json.dumps(
            {
                "model": "m",
                "created_at": "2026-01-01T00:00:00Z",
                "done": True,
                "message": {"role": "assistant", "content": content},
            }
        ).encode()
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes, length: int | None = None):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        srv.requests.append(body)
        srv.headers.append(dict(self.headers))
        user = (body.get("messages") or [{}])[-1].get("content", "")
        mode = srv.mode(user) if callable(srv.mode) else srv.mode
        if mode == "hang":  # accepts the request, never answers
            srv.release.wait(120)
            self.close_connection = True
        elif mode == "slow":  # answers, but after the client's timeout
            srv.release.wait(2.0)
            self._send(200, _completion(self.path, json.dumps(ANSWER)))
        elif mode in ("500", "404"):
            self._send(int(mode), b'{"error": "boom"}')
        elif mode == "garbage":
            self._send(200, b"<html>Bad gateway, have a nice day</html>")
        elif mode == "wrong_shape":
            self._send(200, b'{"id": "x", "result": [1, 2, 3]}')
        elif mode == "out_of_range":
            self._send(200, _completion(self.path, json.dumps({**ANSWER, "complexity": 9})))
        elif mode == "prose":
            self._send(200, _completion(self.path, "I think this prompt is fairly hard."))
        elif mode == "truncated":  # promises 1000 bytes, sends 30, hangs up
            self._send(200, _completion(self.path, json.dumps(ANSWER))[:30], length=1000)
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif mode == "reset":  # TCP reset instead of an answer
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif mode == "trickle":  # a byte every 0.2 s: no single read ever times out
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            with contextlib.suppress(OSError):
                while not srv.release.wait(0.2):
                    self.wfile.write(b" ")
                    self.wfile.flush()
            self.close_connection = True
        elif mode == "trickle_headers":  # the status line and headers, a byte every 0.1 s
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Pad: " + b"a" * 1000
            with contextlib.suppress(OSError):
                for i in range(len(head)):
                    if srv.release.wait(0.1):
                        break
                    self.wfile.write(head[i : i + 1])
                    self.wfile.flush()
            self.close_connection = True
        elif mode in ("huge", "huge_chunked"):  # 64 MiB of JSON-looking bytes, as fast as they go
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if mode == "huge":
                self.send_header("Content-Length", str(64 * 2**20))
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b'{"choices": [' + b" " * (2**16 - 13)
            with contextlib.suppress(OSError):
                for _ in range(1024):
                    if srv.release.is_set():
                        break
                    self.wfile.write(block if mode == "huge" else b"%x\r\n%s\r\n" % (len(block), block))
                    srv.sent += len(block)
            self.close_connection = True
        elif mode == "redirect":  # to another host (127.0.0.2): the key must not follow
            self.send_response(307)
            self.send_header("Location", f"{srv.redirect_to}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode.startswith("echo"):  # the request's headers back: in the answer, an error body, garbage
            auth = self.headers.get("Authorization", "")
            if mode == "echo_500":
                self._send(500, json.dumps({"error": f"bad auth {auth}", "headers": dict(self.headers)}).encode())
            elif mode == "echo_garbage":
                self._send(200, f"{auth} <- your header".encode())
            elif mode == "echo_field":
                self._send(200, _completion(self.path, json.dumps({**ANSWER, "complexity": auth})))
            elif mode == "echo_404":
                self._send(404, json.dumps({"error": f"model not found for {auth}"}).encode())
            else:
                self._send(200, _completion(self.path, f"{auth} {dict(self.headers)}"))
        else:  # ok
            self._send(200, _completion(self.path, json.dumps(ANSWER)))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # resets and hang-ups are the point here
        pass


@contextlib.contextmanager
def fake_llm(mode, redirect_to: str = "http://127.0.0.2:9"):
    """An OpenAI-compatible (and Ollama /api/chat) server in ``mode`` (a name, or prompt -> name);
    yields the server (``.base``: its /v1 URL, ``.root``, ``.requests``, ``.headers``: each
    request's, ``.sent``: body bytes a huge reply got out). ``redirect_to``: where ``redirect``
    points (another host)."""
    if mode == "refused":  # nothing listens on the port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = type(
            "Closed",
            (),
            {
                "requests": [],
                "headers": [],
                "sent": 0,
                "release": threading.Event(),
                "root": f"http://127.0.0.1:{port}",
            },
        )()
        srv.base = srv.root + "/v1"
        yield srv
        return
    if mode == "blackhole":  # the kernel accepts the connection; nobody ever reads it
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        srv = type(
            "Blackhole",
            (),
            {
                "requests": [],
                "headers": [],
                "sent": 0,
                "release": threading.Event(),
                "root": f"http://127.0.0.1:{s.getsockname()[1]}",
            },
        )()
        srv.base = srv.root + "/v1"
        try:
            yield srv
        finally:
            s.close()
        return
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.mode, srv.requests, srv.release, srv.sent = mode, [], threading.Event(), 0
    srv.headers = []  # each request's headers
    srv.redirect_to = redirect_to
    srv.root = f"http://127.0.0.1:{srv.server_address[1]}"
    srv.base = srv.root + "/v1"
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def _llm_warnings(caplog):
    return [r for r in caplog.records if r.name == "t2iroute.features.llm" and r.levelno >= logging.WARNING]


def _featurizer(srv, provider="openai", **kw):
    where = {"host": srv.root} if provider == "ollama" else {"base_url": srv.base}
    return LLMComplexityFeaturizer(provider=provider, model="m", **where, **{"cache": False, **FAST, **kw})


# -- server failure modes ------------------------------------------------------------------------
MODES = {  # mode: what imputed_reason says
    "refused": "unreachable",
    "blackhole": "timeout",
    "hang": "timeout",
    "slow": "timeout",
    "500": "HTTP 500",
    "404": "404",
    "garbage": "bad reply",
    "wrong_shape": "bad reply",
    "out_of_range": "outside [1, 5]",
    "prose": "no JSON object",
    "truncated": "RemoteProtocolError",
    "reset": "Error",
    "trickle": "timeout",  # each request is bounded in total: cut at its timeout
}
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_times():
    yield
    if TIMES:  # shown with -s: the seconds each failure mode took
        print("\nLLM fault modes, seconds per transform of 3 prompts (deadline %.1f s):" % DEADLINE)
        for k, v in sorted(TIMES.items(), key=lambda kv: -kv[1]):
            print(f"  {k:24s} {v:5.2f}")


@pytest.mark.parametrize("provider", ["openai", "ollama"])
@pytest.mark.parametrize("mode", list(MODES))
def test_server_fault_imputes_within_deadline_with_one_warning(mode, provider, caplog):
    with fake_llm(mode) as srv:
        f = _featurizer(srv, provider)
        t0 = time.perf_counter()
        with caplog.at_level(logging.WARNING):
            X = f.transform(PROMPTS)
        dt = time.perf_counter() - t0
    TIMES[f"{provider}/{mode}"] = dt
    assert dt <= DEADLINE + SLACK, f"{mode}: {dt:.2f} s"
    assert X.shape == (3, len(f.feature_names_)) and np.isfinite(X).all()
    assert (X[:, f.feature_names_.index("imputed")] == 1).all()
    st = f.last_stats_
    assert st["imputed"] == 3 and isinstance(st["imputed_reason"], str) and st["cache"] == "disabled"
    assert MODES[mode] in st["imputed_reason"], st["imputed_reason"]
    warnings = _llm_warnings(caplog)
    assert len(warnings) == 1 and "3 of 3 prompts imputed" in warnings[0].getMessage()


def test_deadline_bounds_the_call_when_the_timeout_is_longer(caplog):
    """timeout 30 s, deadline 1.5 s: the request itself is cut at the deadline, threads end soon."""
    with fake_llm("hang") as srv:
        f = _featurizer(srv, timeout=30.0, retries=3, concurrency=3)
        t0 = time.perf_counter()
        with caplog.at_level(logging.WARNING):
            X = f.transform(PROMPTS + ["four green boats"])
        dt = time.perf_counter() - t0
        assert dt <= DEADLINE + 1.0 and (X[:, -1] == 1).all()
        assert any(s in f.last_stats_["imputed_reason"] for s in ("deadline", "timeout"))
        t1 = time.time()  # the abandoned worker threads do not outlive the deadline by much
        while any(t.name.startswith("t2iroute-llm") for t in threading.enumerate()) and time.time() - t1 < 3:
            time.sleep(0.05)
        assert not any(t.name.startswith("t2iroute-llm") for t in threading.enumerate())
    assert len(_llm_warnings(caplog)) == 1


def test_trickling_reply_is_abandoned_at_the_deadline():
    with fake_llm("trickle") as srv:
        f = _featurizer(srv, concurrency=1)
        t0 = time.perf_counter()
        f.transform(PROMPTS[:1])
        assert time.perf_counter() - t0 <= DEADLINE + 1.0
        time.sleep(0.5)
        assert not any(t.name.startswith("t2iroute-llm") for t in threading.enumerate())


def test_first_hard_failure_stops_asking_and_no_sleep_after_last_try():
    with fake_llm("500") as srv:
        f = _featurizer(srv, retries=1, backoff_s=1.0, deadline_s=None, concurrency=1)
        t0 = time.perf_counter()
        X = f.transform([f"prompt {i}" for i in range(10)])
        dt = time.perf_counter() - t0
    assert len(srv.requests) == 2  # one prompt, two tries; the other nine are not asked
    assert 1.0 <= dt < 2.5  # one backoff pause (1 s), none after the last try (it was 2 s more)
    assert (X[:, -1] == 1).all() and f.last_stats_["imputed_reason"] == "HTTP 500 (2 tries)"


def test_connection_refused_asks_once():
    with fake_llm("refused") as srv:
        f = _featurizer(srv, concurrency=1, retries=3)
        t0 = time.perf_counter()
        X = f.transform([f"prompt {i}" for i in range(30)])
        assert time.perf_counter() - t0 < 1.5 and (X[:, -1] == 1).all()
        assert f.last_stats_["imputed_reason"].startswith("unreachable: ConnectError")


def test_invalid_answer_for_one_prompt_does_not_stop_the_others(caplog):
    with fake_llm(lambda user: "prose" if "weird" in user else "ok") as srv:
        f = _featurizer(srv, backoff_s=5.0, deadline_s=10.0)
        t0 = time.perf_counter()
        with caplog.at_level(logging.WARNING):
            X = f.transform(PROMPTS + ["a weird one"])
        assert time.perf_counter() - t0 < 3.0  # invalid answers are asked again at once, no backoff
    assert X[:, -1].tolist() == [0, 0, 0, 1]
    assert len(srv.requests) == 3 + 3  # the bad one: three tries
    st = f.last_stats_
    assert st["imputed"] == 1 and st["imputed_reason"].startswith("no valid answer after 3 tries")
    assert len(_llm_warnings(caplog)) == 1


def test_healthy_server_no_imputation_and_stats():
    with fake_llm("ok") as srv:
        f = _featurizer(srv, deadline_s=5.0)
        X = f.transform(PROMPTS)
    assert (X[:, -1] == 0).all() and X[0, 0] == 3.0
    assert f.last_stats_["imputed"] == 0 and f.last_stats_["imputed_reason"] is None


def test_warmup_does_not_contact_the_server(tmp_path):
    with fake_llm("hang") as srv:
        f = _featurizer(srv, cache=True, cache_path=str(tmp_path / "c.sqlite"))
        t0 = time.perf_counter()
        assert f.warmup() is None
        assert time.perf_counter() - t0 < 2.0 and srv.requests == []
    with fake_llm("refused") as srv:
        _featurizer(srv).warmup()


# -- spec, local keys ----------------------------------------------------------------------------
def test_spec_keeps_timing_and_never_local_settings(monkeypatch):
    from t2iroute.features.base import build_one

    f = LLMComplexityFeaturizer(
        base_url="http://10.0.0.1:1/v1",
        host="http://10.0.0.1:2",
        api_key="sk-secret",
        cache_path="/tmp/x.sqlite",
        progress=False,
        timeout=0.5,
        retries=1,
        concurrency=3,
        deadline_s=1.5,
        backoff_s=0.1,
        rubric="score",
    )
    spec = f.spec()
    assert not set(spec) & LLMComplexityFeaturizer.LOCAL_KEYS
    assert LLMComplexityFeaturizer.LOCAL_KEYS == {
        "base_url",
        "host",
        "api_key",
        "api_key_env",
        "cache",
        "cache_path",
        "transport",
        "progress",
    }
    assert "secret" not in json.dumps(spec) and "10.0.0.1" not in json.dumps(spec)
    assert {k: spec[k] for k in ("timeout", "retries", "concurrency", "deadline_s", "backoff_s")} == {
        "timeout": 0.5,
        "retries": 1,
        "concurrency": 3,
        "deadline_s": 1.5,
        "backoff_s": 0.1,
    }
    g = build_one("llm", spec)
    assert (g.timeout, g.retries, g.concurrency, g.deadline_s, g.rubric) == (0.5, 1, 3, 1.5, "score")
    # an old artifact's spec (no timing keys, base_url and host stored) still builds, with defaults
    old = build_one(
        "llm",
        {
            "provider": "openai",
            "model": "smollm2",
            "base_url": "http://127.0.0.1:8090/v1",
            "host": None,
            "rubric": "full",
            "template_version": "rubric-v1",
        },
    )
    assert (old.timeout, old.retries, old.deadline_s) == (30.0, 2, 20.0)


def test_a_loaded_router_honours_the_stored_timing():
    """The timing a router was trained with reaches the featurizer an artifact spec builds: the
    short deadline holds against a hung server (a loaded router used to wait 30 s x 3 tries)."""
    from t2iroute.features.base import build_featurizer

    f = build_featurizer({"llm": {"cache": False, "progress": False, **FAST, "timeout": 10.0}})
    spec = json.loads(json.dumps(f.spec()))
    with fake_llm("hang") as srv:
        part = spec["featurizers"][0]
        assert part["deadline_s"] == DEADLINE and part["timeout"] == 10.0
        g = build_featurizer({"featurizers": [{**part, "base_url": srv.base, "cache": False, "progress": False}]})
        t0 = time.perf_counter()
        X = g.transform(PROMPTS)
        assert time.perf_counter() - t0 <= DEADLINE + 1.0 and (X[:, -1] == 1).all()


@pytest.mark.parametrize("var", ["T2IROUTE_LLM_BASE_URL", "OPENAI_BASE_URL"])
def test_endpoint_from_the_users_environment(var, monkeypatch):
    monkeypatch.delenv("T2IROUTE_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with fake_llm("ok") as srv:
        monkeypatch.setenv(var, srv.base)
        f = LLMComplexityFeaturizer(model="m", cache=False, progress=False, deadline_s=5.0)
        X = f.transform(PROMPTS[:1])
        assert X[0, -1] == 0 and len(srv.requests) == 1


# -- cache faults --------------------------------------------------------------------------------
def _filled_cache(path, prompts=PROMPTS, n_extra=2000):
    """A real cache with the answers of ``prompts`` and ``n_extra`` other users' entries."""
    f = LLMComplexityFeaturizer(model="m", cache_path=str(path), progress=False)
    c = LLMCache(path)
    entries = {f._key(p): {**{k: float(v) for k, v in ANSWER.items()}, "expected_complexity": 3.0} for p in prompts}
    entries.update({f"other-{i}": {"x": "y" * 100} for i in range(n_extra)})
    assert c.put_many(entries)
    c.close()
    return f


def _route(srv, path, caplog, **kw):
    f = LLMComplexityFeaturizer(
        model="m", base_url=srv.base, cache_path=str(path), progress=False, timeout=2.0, deadline_s=5.0, **kw
    )
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        X = f.transform(PROMPTS)
    return f, X, time.perf_counter() - t0


def _set_aside_files(path):
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name + ".corrupt-"))


@pytest.mark.parametrize("damage", ["random", "truncated_half", "truncated_50", "zeroed_header"])
def test_damaged_cache_is_set_aside_and_replaced(damage, tmp_path, caplog):
    path = tmp_path / "llm.sqlite"
    if damage == "random":
        path.write_bytes(os.urandom(8192))
    else:
        _filled_cache(path)
        data = path.read_bytes()
        if damage == "truncated_half":
            data = data[: len(data) // 2]
        elif damage == "truncated_50":
            data = data[:50]
        else:
            data = b"\0" * 100 + data[100:]
        path.write_bytes(data)
    before = path.read_bytes()
    with fake_llm("ok") as srv:
        f, X, dt = _route(srv, path, caplog)
        assert (X[:, -1] == 0).all() and dt < 3.0 and len(srv.requests) == 3
        aside = _set_aside_files(path)
        assert len(aside) == 1 and aside[0].read_bytes() == before  # kept, not deleted
        assert len(_llm_warnings(caplog)) == 1 and "set aside" in caplog.text
        assert f.last_stats_["cache"] == "ok"
        g, Y, _ = _route(srv, path, caplog)  # the fresh cache holds the new answers
        assert g.last_stats_["cache_hits"] == 3 and len(srv.requests) == 3
        np.testing.assert_array_equal(X, Y)


@pytest.mark.parametrize("schema", ["other_columns", "other_table"])
def test_foreign_schema_is_left_untouched_and_bypassed(schema, tmp_path, caplog):
    path = tmp_path / "llm.sqlite"
    c = sqlite3.connect(path)
    if schema == "other_columns":
        c.execute("CREATE TABLE answers (id INTEGER PRIMARY KEY, prompt TEXT, score REAL)")
        c.execute("INSERT INTO answers (prompt, score) VALUES ('a cat', 0.5)")
    else:
        c.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
    c.commit()
    c.close()
    before = path.read_bytes()
    with fake_llm("ok") as srv:
        for _ in range(2):
            f, X, dt = _route(srv, path, caplog)
            assert (X[:, -1] == 0).all() and dt < 3.0
            assert f.last_stats_["cache"].startswith("bypassed:")
    assert path.read_bytes() == before and not _set_aside_files(path)
    assert len(_llm_warnings(caplog)) == 2  # one per featurizer (each is a fresh object here)


def test_locked_cache_short_wait_then_bypass(tmp_path, caplog):
    path = tmp_path / "llm.sqlite"
    _filled_cache(path, prompts=[], n_extra=10)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with fake_llm("ok") as srv:
            f, X, dt = _route(srv, path, caplog)
            assert (X[:, -1] == 0).all() and dt < 3.0  # ~1 s busy timeout, not 30 s
            assert f.last_stats_["cache"].startswith("bypassed: locked")
            assert len(_llm_warnings(caplog)) == 1
            holder.execute("ROLLBACK")
            X2 = f.transform(PROMPTS)  # unlocked: the cache is used again
            assert f.last_stats_["cache"] == "ok" and (X2[:, -1] == 0).all()
            assert f.transform(PROMPTS) is not None and f.last_stats_["cache_hits"] == 3
    finally:
        holder.close()


@contextlib.contextmanager
def read_only(path):
    """``path`` (a file or a folder) read-only, also for root (chattr +i)."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("root, and chattr +i is not available here")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)


@pytest.mark.parametrize("what", ["file", "folder", "folder_no_file", "directory"])
def test_unwritable_cache_routes(what, tmp_path, caplog):
    folder = tmp_path / "cache"
    folder.mkdir()
    path = folder / "llm.sqlite"
    if what == "directory":
        path.mkdir()
    elif what != "folder_no_file":
        _filled_cache(path, prompts=PROMPTS[:1], n_extra=5)
    target = path if what == "file" else folder
    with fake_llm("ok") as srv, read_only(target):
        f, X, dt = _route(srv, path, caplog)
        assert (X[:, -1] == 0).all() and dt < 3.0
        st = f.last_stats_
        assert st["cache"].startswith("bypassed:")
        if what in ("file", "folder"):  # still read: the first prompt came from it
            assert st["cache_hits"] == 1 and len(srv.requests) == 2
        f.transform(PROMPTS)
        assert len(_llm_warnings(caplog)) == 1
    assert not _set_aside_files(path)


def test_bad_cached_values_are_asked_again(tmp_path, caplog):
    path = tmp_path / "llm.sqlite"
    f = _filled_cache(path, prompts=[], n_extra=3)
    good = {k: float(v) for k, v in ANSWER.items()}
    prompts = [f"prompt {i}" for i in range(7)]
    bad = [
        "{not json",
        json.dumps([1, 2, 3]),
        json.dumps({"complexity": 3}),
        json.dumps({**good, "complexity": 9}),
        json.dumps({**good, "objects": "many"}),
        json.dumps({**good, "expected_complexity": float("nan")}),
        json.dumps("3"),
    ]
    c = sqlite3.connect(path)
    c.executemany("INSERT INTO answers VALUES (?, ?)", [(f._key(p), v) for p, v in zip(prompts, bad)])
    c.commit()
    c.close()
    with fake_llm("ok") as srv:
        g = LLMComplexityFeaturizer(model="m", base_url=srv.base, cache_path=str(path), progress=False, deadline_s=5.0)
        with caplog.at_level(logging.WARNING):
            X = g.transform(prompts)
        assert (X[:, -1] == 0).all() and len(srv.requests) == 7
        assert g.last_stats_["cache_bad"] == 7 and g.last_stats_["cache"] == "ok"
        assert len(_llm_warnings(caplog)) == 1 and "not valid" in caplog.text
        g.transform(prompts)  # overwritten with valid answers
        assert g.last_stats_["cache_hits"] == 7 and len(srv.requests) == 7
    assert (X[:, list(FIELDS).index("complexity")] == 3).all()


def test_cache_object_never_raises(tmp_path):
    path = tmp_path / "x.sqlite"
    path.write_bytes(b"definitely not sqlite" * 100)
    c = LLMCache(path)
    assert c.get_many(["a"]) == {} and c.put("a", {"v": 1}) and c.get_many(["a"]) == {"a": {"v": 1}}
    d = LLMCache(tmp_path)  # a directory
    assert d.get_many(["a"]) == {} and d.put("a", {}) is False and "directory" in d.problem


def test_training_tables_are_featurized_without_the_routing_deadline():
    from t2iroute.features import build_featurizer

    f = build_featurizer({"lexical": {}, "llm": {"deadline_s": 1.5, "cache": False}})
    llm = f.parts[1]
    with f.without_deadline():
        assert llm.deadline_s is None
    assert llm.deadline_s == 1.5 and llm.spec()["deadline_s"] == 1.5
    assert "cache" in type(llm).LOCAL_KEYS and "base_url" not in llm.spec()


def test_router_warmup_never_asks_the_llm(tmp_path, monkeypatch):
    """route = warm-up + one featurization: the LLM is asked once, not twice."""
    from t2iroute import Router
    from t2iroute.features import build_featurizer
    from t2iroute.predictors import RidgePredictor

    from .test_artifact_security import Listener

    listener = Listener()
    try:
        f = build_featurizer(
            {
                "lexical": {},
                "llm": {
                    "rubric": "score",
                    "cache": False,
                    "progress": False,
                    "base_url": f"http://127.0.0.1:{listener.port}/v1",
                    "timeout": 0.3,
                    "retries": 0,
                    "deadline_s": 1.0,
                },
            }
        )
        X = np.random.default_rng(0).random((20, len(f.feature_names_)))
        r = Router(f, RidgePredictor().fit(X, np.random.default_rng(1).random((20, 2))), ["a", "b"], [0.1, 1.0])
        r.warmup()
        time.sleep(0.3)
        assert listener.connections == 0
        d = r.route("a red car")
        time.sleep(0.3)
        assert listener.connections == 1 and "llm" in d.imputed
    finally:
        listener.close()
