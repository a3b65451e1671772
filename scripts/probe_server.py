"""Probe the HTTP server (issue 22, item 5): thousands of varied and malformed requests against a
live server on 127.0.0.1, over keep-alive connections. Prints one JSON line
``{"area": "server", "tried": N, "held": M, "not_held": [...]}``; exits 0 when every case held.

A case holds when the answer is not a 5xx, the connection was not reset, a 4xx body is one
OpenAI-style error naming the field or the limit (``tests/test_fuzz_server.error_problem``), and
what the case promises on top holds (400 naming max_route_prompts past it, 429 for a flood, 401 for an
image without the key, a single-prompt route not stuck behind a big one).

    python scripts/probe_server.py [--examples 300] [--seed 22]

Bounded: about two minutes on one core (``--budget-s`` caps the schemathesis part).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Tally:
    def __init__(self):
        self.tried, self.held, self.not_held = 0, 0, []

    def add(self, label: str, problem: str | None):
        self.tried += 1
        if problem:
            self.not_held.append(f"{label}: {problem}"[:300])
        else:
            self.held += 1


def start(app):
    """``app`` under uvicorn on a free loopback port, in a daemon thread: (server, thread, url)."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(400):
        if srv.started:
            break
        time.sleep(0.05)
    return srv, t, f"http://127.0.0.1:{port}"


def stop(srv, t):
    srv.should_exit = True
    t.join(15)


def crafted_cases():
    """(label, path, body: dict | bytes) for the generation and route endpoints."""
    odd = [
        None,
        True,
        False,
        0,
        -1,
        1.5,
        2**64,
        10**30,
        "",
        " ",
        "x" * 5000,
        [],
        ["a"],
        {},
        {"a": 1},
        [[["deep"]]],
        float("nan"),
        "\u0000",
        "\ufffd",
        "\u202e\u200b",
    ]
    cases = []
    for field in ("prompt", "n", "size", "response_format", "seed", "model"):
        for v in odd:
            body = {"prompt": "a cat", field: v}
            cases.append((f"gen {field}={str(v)[:20]!r}", "/v1/images/generations", body))
    for field in ("prompt", "model"):
        for v in odd:
            cases.append((f"route {field}={str(v)[:20]!r}", "/v1/route", {"prompt": "a cat", field: v}))
    models = [
        "router:budget=0.000001",
        "router:budget=0",
        "router:budget=-1",
        "router:budget=nan",
        "router:budget=inf",
        "router:budget=1e309",
        "router:budget=",
        "router:budget=0x10",
        "router:max_cost=0",
        "router:max_cost=-0.0",
        "router:max_cost=1e-300",
        "router:lam=-1",
        "router:lam=1e308",
        "router:quality_floor=-1e308",
        "router:quality_floor=nan",
        "router:",
        "router:foo=1",
        "router:lam=1=2",
        "ROUTER",
        "fast ",
        "router:budget=0.5",
        "router:max_cost=100",
        "x" * 10000,
    ]
    for m in models:
        for path in ("/v1/images/generations", "/v1/route"):
            cases.append((f"{path} model={m[:30]!r}", path, {"prompt": "a cat", "model": m}))
    deep = [
        b"[" * 200_000 + b"]" * 200_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"prompt": "a cat", "n": 1e999}',
        b'{"prompt": "a cat", "seed": ' + b"9" * 5000 + b"}",
        b'{"prompt": "\xff\xfe"}',
        b"\xef\xbb\xbf{}",
        b'{"prompt": NaN}',
        b'{"prompt": "a cat"} trailing',
        b"",
        b"null",
        b"[]",
        b'"a cat"',
        b"{" * 10,
        b'{"prompt": "a cat", "prompt": ["x"]}',
        b'{"prompt": "a\\ud800cat"}',
        b"x" * (1 << 20 | 1),
    ]
    for i, raw in enumerate(deep):
        for path in ("/v1/images/generations", "/v1/route"):
            cases.append((f"{path} raw #{i} ({raw[:20]!r})", path, raw))
    for k in (1, 255, 256, 257, 5000):
        cases.append((f"route {k} prompts", "/v1/route", {"prompt": [f"p {i}" for i in range(k)]}))
    return cases


def probe_crafted(url, tally, auth, error_problem):
    import httpx

    with httpx.Client(headers=auth, timeout=120) as c:
        for label, path, body in crafted_cases():
            try:
                if isinstance(body, bytes):
                    r = c.post(url + path, content=body, headers={"content-type": "application/json"})
                else:
                    r = c.post(
                        url + path,
                        content=json.dumps(body, allow_nan=True),
                        headers={"content-type": "application/json"},
                    )
                problem = f"{r.status_code}" if r.status_code >= 500 else None
                if problem is None:
                    try:
                        problem = error_problem(r.status_code, r.json())
                    except ValueError:
                        problem = f"{r.status_code} not JSON" if r.status_code >= 400 else None
                if problem is None and "prompts" in label:
                    k = int(label.split()[1])
                    want = 200 if k <= 256 else 400
                    if r.status_code != want:
                        problem = f"{r.status_code}, not {want}"
                    elif want == 400 and "max_route_prompts" not in r.json()["error"]["message"]:
                        problem = "400 does not name max_route_prompts"
                # the next request on this connection is answered (it was reset after a 500)
                if problem is None and c.get(url + "/health").status_code != 200:
                    problem = "the next request on the connection failed"
            except Exception as e:  # noqa: BLE001 -- a reset connection, a timeout
                problem = f"{type(e).__name__}: {str(e)[:120]}"
            tally.add(label, problem)
        # headers: keys and content types
        for label, headers in [
            ("no key", {"Authorization": ""}),
            ("wrong key", {"Authorization": "Bearer x"}),
            ("latin-1 key", {"Authorization": b"Bearer sk-\xe9"}),
            ("basic auth", {"Authorization": "Basic YTpi"}),
            ("bearer only", {"Authorization": "Bearer"}),
            ("bad content-length", {"content-length": "abc"}),
        ]:
            for path in ("/v1/models", "/v1/route"):
                try:
                    req = c.build_request(
                        "GET" if path == "/v1/models" else "POST",
                        url + path,
                        content=b'{"prompt": "a cat"}' if path == "/v1/route" else None,
                        headers=headers,
                    )
                    r = c.send(req)
                    problem = None if r.status_code in (400, 401) else f"{r.status_code}, not 400/401"
                    problem = problem or error_problem(r.status_code, r.json())
                except Exception as e:  # noqa: BLE001 -- the client may refuse to send it
                    problem = (
                        None
                        if "content-length" in label.lower() or isinstance(e, (UnicodeError,))
                        else f"{type(e).__name__}: {str(e)[:120]}"
                    )
                tally.add(f"{path} {label}", problem)


def probe_images(url, tally, auth):
    import httpx

    r = httpx.post(
        url + "/v1/images/generations",
        json={"prompt": "a cat", "response_format": "url", "model": "fast"},
        headers=auth,
        timeout=120,
    )
    img = r.json()["data"][0]["url"]
    for label, headers, want in [
        ("image without key", {}, 401),
        ("image wrong key", {"Authorization": "Bearer x"}, 401),
        ("image with key", auth, 200),
    ]:
        got = httpx.get(img, headers=headers).status_code
        tally.add(label, None if got == want else f"{got}, not {want}")
    for name in ["x.png", "../../etc/passwd", "%2e%2e%2fetc", "0" * 32 + ".png", "." + "0" * 31 + ".png"]:
        got = httpx.get(url + "/images/" + name).status_code
        tally.add(f"image {name!r} without key", None if got in (401, 404) else f"{got}")
        got = httpx.get(url + "/images/" + name, headers=auth).status_code
        tally.add(f"image {name!r} with key", None if got == 404 else f"{got}")


def probe_availability(artifact, tally):
    """A flood of route requests gets 429; a single-prompt route is served between a big one's pieces."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from t2iroute import Router
    from t2iroute.serving import create_app

    router = Router.load(artifact)
    route = router.route

    def slow(prompts, **kw):  # 5 ms of routing per prompt, as an LLM featurizer takes
        with router._lock:
            time.sleep(0.005 * (1 if isinstance(prompts, str) else len(prompts)))
            return route(prompts, **kw)

    router.route = slow
    srv, t, url = start(create_app(router, max_queue=4))
    try:
        with ThreadPoolExecutor(16) as ex:
            rs = list(
                ex.map(
                    lambda i: httpx.post(url + "/v1/route", json={"prompt": [f"p {i}"] * 64}, timeout=120), range(16)
                )
            )
        codes = sorted(r.status_code for r in rs)
        tally.add(
            "16 route requests over a queue of 4",
            None if codes.count(429) >= 8 and 200 in codes and max(codes) < 500 else f"statuses {codes}",
        )
        done = {}

        def post(name, prompt):
            t0 = time.perf_counter()
            r = httpx.post(url + "/v1/route", json={"prompt": prompt, "model": "router:lam=0.1"}, timeout=120)
            done[name] = (r.status_code, time.perf_counter() - t0)

        tb = threading.Thread(target=post, args=("big", [f"p {i}" for i in range(256)]))
        tb.start()
        time.sleep(0.2)
        post("small", "a cat")
        tb.join(120)
        ok = done["big"][0] == done["small"][0] == 200 and done["small"][1] < 0.4 * done["big"][1]
        tally.add("a single-prompt route behind a 256-prompt one", None if ok else f"{done}")
    finally:
        stop(srv, t)


def probe_schemathesis(url, tally, auth, examples, seed, budget_s):
    import requests
    import schemathesis

    from tests.test_fuzz_server import fuzz

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    session = requests.Session()  # one keep-alive connection: a reset would show as an error
    tried, problems = fuzz(
        schema,
        max_examples=examples,
        headers=auth,
        derandomize=False,
        seed=seed,
        call=lambda case: case.call(session=session, headers=auth),
        budget_s=budget_s,
    )
    for p in problems:
        tally.add("schemathesis", p)
    for _ in range(tried - len(problems)):
        tally.add("schemathesis", None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=300, help="schemathesis examples per operation and mode")
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--budget-s", type=float, default=90.0, help="wall-time cap of the schemathesis part")
    args = ap.parse_args(argv)

    import logging

    logging.disable(logging.CRITICAL)  # the server's own log lines are not the probe's output
    from tests.conftest import make_tiny_router
    from tests.test_fuzz_server import AUTH, error_problem, process_app

    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "router"
        make_tiny_router().save(artifact)
        srv, t, url = start(process_app(artifact, Path(tmp) / "images"))
        try:
            probe_crafted(url, tally, AUTH, error_problem)
            probe_images(url, tally, AUTH)
            probe_schemathesis(url, tally, AUTH, args.examples, args.seed, args.budget_s)
        finally:
            stop(srv, t)
        probe_availability(artifact, tally)
    print(json.dumps({"area": "server", "tried": tally.tried, "held": tally.held, "not_held": tally.not_held[:50]}))
    return 0 if tally.held == tally.tried else 1


if __name__ == "__main__":
    sys.exit(main())
