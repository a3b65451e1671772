"""Load test of ``t2iroute serve`` against tiny backends, with in-process Router.generate as baseline.

    python scripts/load_test.py --clients 8 --seconds 20 --out docs/measurements/serve-load-2core-cpu.json

Phases, in one run: (1) N threads calling ``Router.generate`` in process for T s (the baseline);
(2) N HTTP clients against ``t2iroute serve`` (a real subprocess on 127.0.0.1) for T s: requests/s,
p50/p99 latency, errors, the share of requests batched; (3) 4N clients against a server with
``max_queue`` N/2: 429s with Retry-After, and every other request answered; (4) SIGTERM while N
clients run: each accepted request is answered (no request is cut off mid-way).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
PROMPTS = [
    "a cat",
    "two birds on a wire",
    "three apples",
    "a robot",
    "a castle",
    "city at night",
    "a sign saying 'hello'",
    "portrait of a woman",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(artifact, **keys):
    port = free_port()
    argv = [sys.executable, "-m", "t2iroute.cli", "serve", f"artifact={artifact}", f"port={port}"]
    argv += [f"{k}={v}" for k, v in keys.items()]
    p = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    p.stdout.readline()
    import httpx

    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    return p, url


def hammer(n_clients: int, seconds: float, call) -> list[tuple[float, str]]:
    """n threads calling ``call(i)`` until the time is up; -> [(latency, outcome)]."""
    out, lock = [], threading.Lock()
    end = time.perf_counter() + seconds

    def worker(k):
        i = k
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                outcome = call(i)
            except Exception as e:  # noqa: BLE001
                outcome = type(e).__name__
            with lock:
                out.append((time.perf_counter() - t0, outcome))
            i += n_clients

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(n_clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def summary(rows, seconds) -> dict:
    ok = [lat for lat, o in rows if o == "200"]
    from collections import Counter

    return {
        "requests": len(rows),
        "ok": len(ok),
        "requests_per_s": len(ok) / seconds,
        "p50_s": float(np.percentile(ok, 50)) if ok else None,
        "p99_s": float(np.percentile(ok, 99)) if ok else None,
        "outcomes": dict(Counter(o for _, o in rows)),
    }


def http_call_factory(url):
    """A client's call: one generation request for prompt ``i``, its status as the outcome."""
    import httpx

    client = httpx.Client(timeout=120)

    def call(i):
        try:
            r = client.post(url + "/v1/images/generations", json={"prompt": PROMPTS[i % len(PROMPTS)], "seed": i})
        except httpx.ConnectError:
            time.sleep(0.1)  # the server is gone: a client would back off too
            raise
        if r.status_code == 429:  # as clients do: wait as told
            time.sleep(float(r.headers.get("retry-after", 1)))
        return str(r.status_code)

    return call


def metric(url, name) -> float:
    import httpx

    for ln in httpx.get(url + "/metrics").text.splitlines():
        if ln.startswith(name + " "):
            return float(ln.split()[1])
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--out", default="outputs/serve-load.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import httpx

    from t2iroute import Router
    from tests.conftest import make_tiny_router  # lexical + ridge over a synthetic table, tiny 64 px backends

    tmp = Path(tempfile.mkdtemp())
    make_tiny_router().save(tmp / "router")
    art = tmp / "router"
    n, T = args.clients, args.seconds
    res: dict = {"clients": n, "seconds": T, "cores": os.cpu_count()}

    router = Router.load(art)
    for b in router.backend_names:
        router.generate("a cat", backend=b)  # load every pipeline before the clock runs

    def inproc(i):
        router.generate(PROMPTS[i % len(PROMPTS)], seed=i)
        return "200"

    res["in_process"] = summary(hammer(n, T, inproc), T)

    def warm(url):
        for b in router.backend_names:  # load every pipeline before the clock runs
            httpx.post(url + "/v1/images/generations", json={"prompt": "a cat", "model": b}, timeout=120)

    p, url = serve(art)
    try:
        warm(url)
        rows = hammer(n, T, http_call_factory(url))
        res["served"] = summary(rows, T)
        res["served"]["share_batched"] = metric(url, "t2iroute_requests_batched_total") / max(1, len(rows))
        res["served"]["vs_in_process_rps"] = res["served"]["requests_per_s"] / res["in_process"]["requests_per_s"]
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
    limit = max(1, n // 2)
    p, url = serve(art, max_queue=limit)
    try:
        warm(url)
        rows = hammer(4 * n, T / 2, http_call_factory(url))
        res["above_limit"] = {**summary(rows, T / 2), "clients": 4 * n, "max_queue": limit}
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
    p, url = serve(art)
    warm(url)
    killer = threading.Timer(T / 2, lambda: p.send_signal(signal.SIGTERM))
    killer.start()
    rows = hammer(n, T, http_call_factory(url))
    p.communicate(timeout=120)
    out = summary(rows, T)
    cut = {k: v for k, v in out["outcomes"].items() if k not in ("200", "ConnectError")}
    res["sigterm_during_load"] = {
        **out,
        "exit_code": p.returncode,
        "cut_off_mid_request": sum(cut.values()),
        "note": "ConnectError: after the server closed",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
