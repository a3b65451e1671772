"""The serving loop's price under load: t2iroute serve with the decision log and autoscore on vs off,
and hot reloads while clients generate, in one run (tiny 64 px backends on the CPU).

    python scripts/bench_loop.py --clients 8 --seconds 20 --out docs/measurements/serve-loop-2core-cpu.json

Phases: (1) a plain server and (2) one with ``log_dir`` and ``autoscore.share=0.1 autoscore.scorer=clip_tiny``
(a random-weight CLIP: the scoring work, offline), each under N clients for T s, alternating
off/on/off/on to spread the machine's drift over both: requests/s and p50/p99, the ratio on/off;
(3) the logged server under N clients while the artifact folder is replaced and reloaded
(``POST /admin/reload``) every T/4 s: requests failed (target 0) and the longest request during
the run vs the p99 of phase (2).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import hammer, http_call_factory, serve, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--out", default="outputs/serve-loop.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import httpx

    from t2iroute.router.decisions import read_log
    from tests.conftest import make_tiny_router

    tmp = Path(tempfile.mkdtemp())
    art = tmp / "router"
    make_tiny_router().save(art)
    n, T = args.clients, args.seconds
    res: dict = {"clients": n, "seconds": T, "cores": os.cpu_count(), "machine": "see docs/results.md"}

    def warm(url, names):
        for b in names:
            httpx.post(url + "/v1/images/generations", json={"prompt": "a cat", "model": b}, timeout=120)

    names = ["fast", "mid", "slow"]
    loop_keys = {
        "log_dir": str(tmp / "log"),
        "autoscore.share": 0.1,
        "autoscore.scorer": "clip_tiny",
    }
    runs = {"off": [], "on": []}
    for phase in ("off", "on", "off", "on"):
        p, url = serve(art, **(loop_keys if phase == "on" else {}))
        try:
            warm(url, names)
            runs[phase] += hammer(n, T / 2, http_call_factory(url))
        finally:
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=120)
    res["loop_off"] = summary(runs["off"], T)
    res["loop_on"] = summary(runs["on"], T)
    res["on_vs_off"] = {
        "requests_per_s": res["loop_on"]["requests_per_s"] / res["loop_off"]["requests_per_s"],
        "p99": res["loop_on"]["p99_s"] / res["loop_off"]["p99_s"],
    }
    log = read_log(tmp / "log")
    res["loop_on"]["logged"] = int(len(log))
    res["loop_on"]["autoscored"] = int(log["score_autoscore"].notna().sum())

    # reloads under load
    p, url = serve(art, log_dir=str(tmp / "log2"))
    reloads = []
    try:
        warm(url, names)
        stop = threading.Event()

        def reloader():
            k = 0
            while not stop.wait(T / 4):
                k += 1
                make_tiny_router(lam=0.5 * k).save(art)  # train's atomic replace
                t0 = time.perf_counter()
                r = httpx.post(url + "/admin/reload", timeout=120)
                reloads.append(
                    {
                        "status": r.status_code,
                        "s": time.perf_counter() - t0,
                        **(r.json() if r.status_code == 200 else {}),
                    }
                )

        th = threading.Thread(target=reloader)
        th.start()
        rows = hammer(n, T, http_call_factory(url))
        stop.set()
        th.join()
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
    out = summary(rows, T)
    failed = sum(v for k, v in out["outcomes"].items() if k != "200")
    res["reload_under_load"] = {
        **out,
        "reloads": len(reloads),
        "reloads_ok": sum(r["status"] == 200 for r in reloads),
        "reload_s": [round(r["s"], 3) for r in reloads],
        "requests_failed": failed,
        "longest_request_s": float(max(lat for lat, _ in rows)),
        "longest_vs_loop_on_p99": float(max(lat for lat, _ in rows)) / res["loop_on"]["p99_s"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
