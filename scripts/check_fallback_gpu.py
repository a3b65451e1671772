"""Router.generate under a real out-of-memory error, on a GPU (or any torch device).

    python scripts/check_fallback_gpu.py --device cuda --huge 16384 --out DIR

Builds a router over three tiny in-process pipelines on ``--device`` whose best predicted backend
renders at ``--huge`` x ``--huge`` pixels (it cannot fit), routes a prompt to it, and checks that
generate() falls back to the next best backend, records the error, and gives the failed
allocation's memory back. Then 8 threads generate at once across the backends (one pipeline
shared by all budgets). Writes DIR/fallback.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd


def _table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """A synthetic table: 'huge' is best on prompts naming counts or text, 'mid' a little better than 'fast'."""
    rng = np.random.default_rng(seed)
    words = ["cat", "two birds", "red car", "three apples", "a sign saying 'hi'", "forest", "robot"]
    rows = []
    for i in range(n):
        p = f"{words[i % len(words)]} number {i}"
        hard = any(t in p for t in ("two", "three", "sign"))
        for b, c, bonus in (("fast", 0.1, 0.0), ("mid", 0.5, 0.5), ("huge", 1.0, 2.0 if hard else 0.2)):
            rows.append(
                dict(
                    prompt_id=f"p{i}",
                    prompt=p,
                    backend=b,
                    metric="clip",
                    score=30 + bonus + rng.normal(0, 0.3),
                    cost_s=c,
                    source="synthetic",
                )
            )
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--huge", type=int, default=16384, help="pixel size of the backend that must fail")
    ap.add_argument("--out", default="outputs/check-fallback")
    a = ap.parse_args()

    import torch

    from t2iroute import Router
    from t2iroute.backends.diffusers_backend import loaded_pipelines
    from t2iroute.features import build_featurizer
    from t2iroute.predictors import RidgePredictor
    from t2iroute.training.table import pivot

    tiny = dict(type="diffusers", model="tiny", scheduler="ddim", guidance_scale=5.0, device=a.device)
    specs = {
        "fast": {**tiny, "steps": 4, "height": 64, "width": 64},
        "mid": {**tiny, "steps": 8, "height": 64, "width": 64},
        "huge": {**tiny, "steps": 8, "height": a.huge, "width": a.huge},
    }
    M = pivot(_table(), "clip")
    f = build_featurizer({"lexical": {}})
    pred = RidgePredictor().fit(f.transform(list(M.prompts)), M.scores)
    out = Path(a.out)
    Router(f, pred, M.backends, M.costs, metric="clip", backend_specs=specs).save(out / "router")
    router = Router.load(out / "router")

    cuda = a.device.startswith("cuda")
    router.generate("a cat", backend="fast")  # load the shared pipeline first
    mem = lambda: (torch.cuda.memory_allocated() / 2**20, torch.cuda.memory_reserved() / 2**20) if cuda else (0.0, 0.0)  # noqa: E731
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = mem()
    t0 = time.perf_counter()
    res = router.generate("two birds on a wire", seed=0)
    wall = time.perf_counter() - t0
    after = mem()
    report = {
        "device": torch.cuda.get_device_name() if cuda else a.device,
        "torch": torch.__version__,
        "routed_backend": res.decision.backend,
        "backend_used": res.backend,
        "fallbacks": [{"backend": x["backend"], "error": x["error"][:300]} for x in res.fallbacks],
        "image_size": list(res.image.size),
        "steps_run": res.steps_run,
        "latency_s_of_image": res.latency_s,
        "generate_wall_s_incl_failed_try": wall,
        "mem_allocated_mib_before_after": [before[0], after[0]],
        "mem_reserved_mib_before_after": [before[1], after[1]],
        "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }

    jobs = [(p, b) for p in ("a cat", "two birds on a wire", "a red car", "three apples") for b in ("fast", "mid")]
    serial = {j: np.asarray(router.generate(j[0], seed=1, backend=j[1]).image) for j in jobs}
    with ThreadPoolExecutor(8) as ex:
        par = list(ex.map(lambda j: (j, np.asarray(router.generate(j[0], seed=1, backend=j[1]).image)), jobs))
    report["threads"] = {
        "jobs": len(jobs),
        "max_abs_pixel_diff_vs_serial": int(
            max(np.abs(serial[j].astype(int) - img.astype(int)).max() for j, img in par)
        ),
        "loaded_pipelines": loaded_pipelines(),
    }
    (out / "fallback.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
