"""Images per second of tiny 64 px generations at 1, 2 and 4 concurrent generations, for several
intra-op thread settings, on an idle machine and beside CPU load (one busy process per core).

Each configuration runs in a fresh process (OpenMP reads its settings at start). Concurrent
generations are threads of one process, each on its own pipeline (as a server with several
models runs them). Ratios are against torch's default thread count, one generation, idle,
measured in the same run.

    python scripts/bench_threads.py --out outputs/threads.json [--images 12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

SETTINGS = ("torch", "1", "2", "auto")  # torch: torch's own default; auto: t2iroute's default


def worker(threads: str, k: int, n: int) -> dict:
    os.environ["T2IROUTE_THREADS"] = {"torch": "0", "auto": ""}.get(threads, threads)
    from t2iroute.backends import build_backends

    specs = {
        f"g{i}": {
            "type": "diffusers",
            "model": f"tiny:{i}",
            "steps": 10,
            "scheduler": "ddim",
            "guidance_scale": 5.0,
            "height": 64,
            "width": 64,
        }
        for i in range(k)
    }
    backends = build_backends(specs)
    for b in backends.values():
        b.generate(["warm up"], seeds=[0])
    import torch

    def run(b):
        for j in range(n):
            b.generate([f"a photo of thing {j}"], seeds=[j])

    ts = [threading.Thread(target=run, args=(b,)) for b in backends.values()]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "concurrent": k,
        "images": k * n,
        "wall_s": wall,
        "images_per_s": k * n / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/threads.json")
    ap.add_argument("--images", type=int, default=12, help="images per concurrent generation")
    ap.add_argument("--worker", nargs=3, metavar=("THREADS", "K", "N"))
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), int(a.worker[2]))))
        return
    cores = os.cpu_count() or 1
    rows = []
    for load in (False, True):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores if load else 0)]
        try:
            for k in (1, 2, 4):
                for s in SETTINGS:
                    out = subprocess.run(
                        [sys.executable, __file__, "--worker", s, str(k), str(a.images)],
                        capture_output=True,
                        text=True,
                        timeout=1800,
                    )
                    if out.returncode:
                        raise SystemExit(out.stderr[-3000:])
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    r["load"] = f"{cores} busy processes" if load else "idle"
                    rows.append(r)
                    print(json.dumps(r), file=sys.stderr)
        finally:
            for h in hogs:
                h.kill()
    base = next(r for r in rows if r["threads"] == "torch" and r["concurrent"] == 1 and r["load"] == "idle")
    for r in rows:
        r["ratio_vs_torch_default_1_idle"] = r["images_per_s"] / base["images_per_s"]
    res = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {cores} cores",
        "note": "ratios against torch's default threads, one generation, idle, same run",
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"{'load':18s} {'k':>2s} " + " ".join(f"{s:>8s}" for s in SETTINGS))
    for load in ("idle", f"{cores} busy processes"):
        for k in (1, 2, 4):
            cells = [
                next(r for r in rows if r["load"] == load and r["concurrent"] == k and r["threads"] == s)
                for s in SETTINGS
            ]
            print(f"{load:18s} {k:2d} " + " ".join(f"{c['ratio_vs_torch_default_1_idle']:8.2f}" for c in cells))


if __name__ == "__main__":
    main()
