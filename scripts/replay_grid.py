"""The serving loop's replay figures: ``t2iroute replay`` over seeds x starts x exploration rates.

    python scripts/replay_grid.py --data cems10k --metric clip --seeds 0 1 2 \
        --out outputs/replay-grid --json docs/measurements/cems10k-clip-replay-grid.json

Each run is one ``t2iroute replay`` subprocess (``--jobs`` at a time, one thread each); a run whose
``summary.json`` exists is not run again. Besides the grid, one ``equal_cells`` run per seed trains
on complete rows holding as many cells as the replay has seen after ``--stream`` prompts from the
table start (its checkpoint 0): what the same number of cells buys when they come as full rows.
Prints a markdown table of the seed means and writes every run's checkpoints to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def runs(args) -> list[tuple[str, list[str]]]:
    out = []
    for seed in args.seeds:
        for start in args.starts:
            for explore in args.explore:
                name = f"{start.replace(':', '')}-explore{explore:g}-seed{seed}"
                keys = [f"start={start}", f"stream={args.stream}", f"retrain_every={args.retrain_every}"]
                keys += [f"explore={explore:g}", f"seed={seed}"]
                if start != "prior":
                    keys.append(f"predictor={args.predictor}")
                out.append((name, keys))
        # complete rows with the cells the table start has seen after the stream (k cells a prompt
        # at the start, one a streamed prompt)
        if args.equal_cells:
            share = args.start_share + args.stream / args.n_pool / args.k
            keys = [f"start=table:{share:.4f}", "stream=1", "retrain_every=1", "explore=0", f"seed={seed}"]
            out.append((f"equal_cells-seed{seed}", [*keys, f"predictor={args.predictor}"]))
    return out


def run_one(name: str, keys: list[str], args) -> dict:
    out = Path(args.out) / name
    summary = out / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "t2iroute", "replay", f"data={args.data}", f"metric={args.metric}"]
        cmd += [*keys, f"out_dir={out}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        print("running:", " ".join(cmd[3:]), flush=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{name} failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    s = json.loads(summary.read_text())
    s["name"] = name
    return s


def at(s: dict, n: int):
    for c in s["checkpoints"]:
        if c["streamed"] == n:
            return c
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cems10k")
    p.add_argument("--metric", default="clip")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--starts", nargs="*", default=["table:0.05", "prior"], help="none: only equal_cells runs")
    p.add_argument("--explore", type=float, nargs="+", default=[0.0, 0.05, 0.1])
    p.add_argument("--stream", type=int, default=4000)
    p.add_argument("--retrain-every", type=int, default=1000)
    p.add_argument("--predictor", default="stack", help="the table start's predictor (the prior start learns mf)")
    p.add_argument("--checkpoints", type=int, nargs="+", default=[1000, 2000, 4000])
    p.add_argument("--equal-cells", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--start-share", type=float, default=0.05, help="the table start's share (for equal_cells)")
    p.add_argument("--n-pool", type=int, default=7998, help="prompts in the pool (train + validation)")
    p.add_argument("--k", type=int, default=4, help="backends in the table")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="outputs/replay-grid")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--existing-only", action="store_true", help="run nothing: aggregate the runs of the grid that have finished"
    )
    args = p.parse_args()
    todo = runs(args)
    if args.existing_only:
        todo = [(n, k) for n, k in todo if (Path(args.out) / n / "summary.json").exists()]
    with ThreadPoolExecutor(args.jobs) as ex:
        done = list(ex.map(lambda nk: run_one(*nk, args), todo))
    rows, keep = [], []
    for s in done:
        keep.append(
            {
                k: s.get(k)
                for k in ("name", "seed", "start", "explore", "predictor", "stream", "retrain_every", "start_prompts")
            }
            | {"full_table": s["full_table"], "checkpoints": s["checkpoints"], "served": s["served"]}
        )
    groups: dict[tuple, list[dict]] = {}
    for s in done:
        key = ("equal_cells", None) if s["name"].startswith("equal_cells") else (s["start"], s["explore"])
        groups.setdefault(key, []).append(s)

    def mean(vals):
        v = [0.0 if x is None else float(x) for x in vals]  # None: no saving at equal quality
        return float(np.mean(v)) if v else float("nan")

    head = "| start | explore | seeds | " + " | ".join(f"after {n}" for n in [0, *args.checkpoints]) + " | full table |"
    rows.append(head)
    rows.append("|" + "---|" * (len(args.checkpoints) + 5))
    for (start, explore), ss in groups.items():
        full = mean(s["full_table"]["cost_saved_pct"] for s in ss)
        if start == "equal_cells":
            c0 = mean(at(s, 0)["cost_saved_pct"] for s in ss)
            cells = ss[0]["checkpoints"][0]["cells"]
            seeds = ",".join(str(s["seed"]) for s in ss)
            rows.append(f"| complete rows, {cells} cells | - | {seeds} | {c0:.1f}% | | | | {full:.1f}% |")
            continue
        cells = [mean((at(s, n) or {}).get("cost_saved_pct") for s in ss) for n in [0, *args.checkpoints]]
        seeds = ",".join(str(s["seed"]) for s in ss)
        rows.append(
            f"| {start} | {explore:g} | {seeds} | " + " | ".join(f"{c:.1f}%" for c in cells) + f" | {full:.1f}% |"
        )
    table = "\n".join(rows)
    print(f"\n{args.data} {args.metric}, cost saved at equal quality on the test split, mean of seeds {args.seeds}")
    print("(no saving at equal quality counts as 0%)\n")
    print(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": "python scripts/replay_grid.py " + " ".join(sys.argv[1:]),
                    "data": args.data,
                    "metric": args.metric,
                    "table": table,
                    "runs": keep,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
