"""Static token embeddings vs MiniLM (ONNX int8) for routing: cost saved and routing speed.

    python scripts/bench_static.py --seeds 0 1 2 3 4 --out outputs/static-bench \
        --json docs/measurements/cems10k-clip-static-vs-minilm.json

Runs ``t2iroute bench data=cems10k metric=clip`` (the default predictor, auto) for each arm and
seed. The saving comes from every seed (run ``--jobs`` at a time, without the speed measurement);
the speed from seed ``--speed-seed`` only, its arms run one after another with nothing else
running (bench's own measurement: 1,000 held-out prompts routed in one batch with a cold
embedding cache, and 200 one at a time), so their ratio is taken on one machine in one command.
A run whose ``summary.json`` exists is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ARMS = {
    "minilm_onnx": ["features=[embedding,lexical]", "features.embedding.runtime=onnx"],
    "static": ["features=[static,lexical]"],
    "static_fast": ["features=[static,lexical]", "predictor.max_route_ms=0.2"],
}


def run(name: str, keys: list[str], args, speed: bool) -> dict:
    out = Path(args.out) / name
    if not (out / "summary.json").exists():
        cmd = [sys.executable, "-m", "t2iroute", "bench", f"data={args.data}", f"metric={args.metric}", *keys]
        cmd += [f"out_dir={out}", f"throughput.enabled={'true' if speed else 'false'}"]
        print("running:", " ".join(cmd[3:]), flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if not speed:  # parallel runs: one thread each
            env |= {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "T2IROUTE_THREADS": "1"}
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{name} failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cems10k")
    p.add_argument("--metric", default="clip")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--arms", nargs="+", default=["minilm_onnx", "static"], choices=sorted(ARMS))
    p.add_argument("--speed-arms", nargs="+", default=["minilm_onnx", "static", "static_fast"], choices=sorted(ARMS))
    p.add_argument("--speed-seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="outputs/static-bench")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    saving_runs = [(arm, s) for arm in a.arms for s in a.seeds if s != a.speed_seed]
    with ThreadPoolExecutor(a.jobs) as ex:
        res = dict(
            zip(
                saving_runs,
                ex.map(lambda r: run(f"{r[0]}-seed{r[1]}", [*ARMS[r[0]], f"seed={r[1]}"], a, False), saving_runs),
            )
        )
    for arm in a.speed_arms:  # one after another, alone: the speed figures
        res[(arm, a.speed_seed)] = run(f"{arm}-seed{a.speed_seed}", [*ARMS[arm], f"seed={a.speed_seed}"], a, True)

    def saved(s):
        v = s["router"]["cost_saved_pct"]
        return 0.0 if v is None else float(v)

    arms = list(dict.fromkeys([*a.arms, *a.speed_arms]))
    rows = {}
    for arm in arms:
        ss = {seed: s for (ar, seed), s in res.items() if ar == arm}
        sp = ss.get(a.speed_seed, {})
        rows[arm] = {
            "seeds": sorted(ss),
            "cost_saved_pct": {seed: saved(s) for seed, s in sorted(ss.items())},
            "cost_saved_pct_mean": float(np.mean([saved(s) for s in ss.values()])),
            "chosen": {seed: s["predictor_selection"].get("chosen") for seed, s in sorted(ss.items())},
            "route_prompts_per_s": sp.get("route_throughput_prompts_per_s"),
            "route_single_ms_p50": sp.get("route_single_ms_p50"),
            "featurize_all_s": sp.get("timings_s", {}).get("features_all"),
        }
    base = rows.get("minilm_onnx", {})
    lines = [
        "| features | seeds | cost saved at equal quality (mean; per seed) | predictor chosen | "
        f"route prompts/s (seed {a.speed_seed}) | vs MiniLM | single prompt p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, r in rows.items():
        ratio = (
            r["route_prompts_per_s"] / base["route_prompts_per_s"]
            if r["route_prompts_per_s"] and base.get("route_prompts_per_s")
            else None
        )
        per = ", ".join(f"{v:.1f}" for v in r["cost_saved_pct"].values())
        chosen = ", ".join(sorted(set(map(str, r["chosen"].values()))))
        lines.append(
            f"| {arm} | {len(r['seeds'])} | {r['cost_saved_pct_mean']:.1f}% ({per}) | {chosen} | "
            + (f"{r['route_prompts_per_s']:.0f}" if r["route_prompts_per_s"] else "-")
            + f" | {ratio:.1f}x |" * (ratio is not None)
            + " - |" * (ratio is None)
            + (f" {r['route_single_ms_p50']:.1f} ms |" if r["route_single_ms_p50"] else " - |")
        )
    table = "\n".join(lines)
    print(table)
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "command": "python scripts/bench_static.py " + " ".join(sys.argv[1:]),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "arms": {k: ARMS[k] for k in arms},
                    "table": table,
                    "rows": rows,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
