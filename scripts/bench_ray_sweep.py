"""Sweep throughput: the sequential sweep vs launcher=ray with 1 and 2 workers, in one run.

    python scripts/bench_ray_sweep.py --backends testbed_big_8,testbed_big_16 --prompts 48 \
        --out docs/measurements/ray-sweep-2core-cpu.json

Every phase sweeps the same prompts x backends x seeds into a fresh folder with the offline
scorer (clip_tiny) and reports images per second end to end (loading included; Ray: also starting
the local instance and the actors) and in steady state (from the first finished unit to the last),
each as a ratio to the sequential one-thread sweep (the default on a 2-core machine) of this run.
Phases run one after another on an otherwise idle machine; every phase must write every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
CONF = Path(__file__).resolve().parents[1] / "t2iroute" / "conf"


def _spec(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF / "backends" / f"{name}.yaml"), resolve=True)


def _steady(stamps):
    """Images per second from the first finished unit to the last (load and startup excluded)."""
    if len(stamps) < 2:
        return None
    return sum(n for _, n in stamps[1:]) / (stamps[-1][0] - stamps[0][0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="testbed_big_8,testbed_big_16")
    ap.add_argument("--prompts", type=int, default=48, help="the first N PartiPrompts")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="ray.workers_per_model values to measure")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from t2iroute._compat import ensure_torchvision

    ensure_torchvision()
    from omegaconf import OmegaConf

    from t2iroute import threads
    from t2iroute.backends import build_backends
    from t2iroute.sweeps.ray import run_sweep_ray
    from t2iroute.scoring import build_scorer
    from t2iroute.training.prompts import read_prompts
    from t2iroute.sweeps.local import read_sweep, run_sweep

    specs = {n: _spec(n) for n in a.backends.split(",")}
    scorer_spec = OmegaConf.to_container(OmegaConf.load(CONF / "scorer" / "clip_tiny.yaml"), resolve=True)
    prompts = read_prompts("partiprompts", limit=a.prompts)
    seeds = [int(s) for s in a.seeds.split(",")]
    n_images = len(specs) * len(prompts) * len(seeds)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-sweep-"))
    phases = []

    def record(name, wall, steady, rows, **extra):
        phases.append(
            {
                "phase": name,
                "wall_s": round(wall, 2),
                "images_per_s": round(n_images / wall, 3),
                "steady_images_per_s": None if steady is None else round(steady, 3),
                "rows": rows,
                **extra,
            }
        )
        print(json.dumps(phases[-1]), flush=True)

    for n_threads in (1, 2):
        threads.configure(n_threads, force=True)
        stamps = []
        t0 = time.perf_counter()
        run_sweep(
            build_backends(specs),
            prompts,
            seeds,
            build_scorer(scorer_spec),
            tmp / f"seq{n_threads}",
            chunk_size=a.chunk_size,
            progress=False,
            on_result=lambda ev: stamps.append((time.perf_counter(), ev["n"])),
        )
        wall = time.perf_counter() - t0
        record(
            f"sequential, {n_threads} torch thread{'s' * (n_threads > 1)}",
            wall,
            _steady(stamps),
            len(read_sweep(tmp / f"seq{n_threads}")),
            startup_s=round(stamps[0][0] - t0, 2),
        )
    for w in [int(x) for x in a.workers.split(",")]:
        stamps = []
        t0 = time.perf_counter()
        run_sweep_ray(
            specs,
            prompts,
            seeds,
            scorer_spec,
            tmp / f"ray{w}",
            chunk_size=a.chunk_size,
            progress=False,
            ray_options={"address": "local", "num_cpus": os.cpu_count(), "workers_per_model": w},
            on_result=lambda ev: stamps.append((time.perf_counter(), ev["n"])),
        )
        wall = time.perf_counter() - t0
        record(
            f"ray, {w} worker{'s' * (w > 1)} (1 CPU each)",
            wall,
            _steady(stamps),
            len(read_sweep(tmp / f"ray{w}")),
            startup_s=round(stamps[0][0] - t0, 2) if stamps else None,
        )
    base = phases[0]
    for p in phases:
        p["ratio_vs_sequential"] = round(p["images_per_s"] / base["images_per_s"], 2)
        if p["steady_images_per_s"] is not None:
            p["steady_ratio_vs_sequential"] = round(p["steady_images_per_s"] / base["steady_images_per_s"], 2)
        assert p["rows"] == base["rows"] == n_images, p
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "backends": list(specs),
        "prompts": len(prompts),
        "seeds": seeds,
        "images": n_images,
        "chunk_size": a.chunk_size,
        "scorer": "clip_tiny",
        "phases": phases,
    }
    print(json.dumps(out, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
