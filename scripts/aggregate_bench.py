"""Mean and spread of bench figures over several output folders (one per seed).

python scripts/aggregate_bench.py outputs/bench/cems10k-clip-seed*  [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

FIGURES = ("cost_saved_pct", "quality_gain_at_equal_cost", "aiq")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--json", help="write the aggregate here")
    args = ap.parse_args()
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for d in args.dirs:
        f = Path(d) / "summary.json"
        if not f.exists():
            print(f"skip {d}: no summary.json")
            continue
        s = json.loads(f.read_text())
        groups[(s["data"], s["metric"])].append(s)
    out = {}
    for (data, metric), runs in sorted(groups.items()):
        row = {"n_runs": len(runs), "seeds": [r["seed"] for r in runs]}
        for who in ("router", "oracle"):
            for k in FIGURES:
                v = np.array([np.nan if r[who][k] is None else r[who][k] for r in runs], float)
                row[f"{who}.{k}"] = {
                    "mean": float(np.nanmean(v)),
                    "min": float(np.nanmin(v)),
                    "max": float(np.nanmax(v)),
                    "std": float(np.nanstd(v)),
                    "n_undefined": int(np.isnan(v).sum()),
                }
        for k in ("route_throughput_prompts_per_s", "route_single_ms_p50"):
            v = [r[k] for r in runs if r.get(k) is not None]
            if v:
                row[k] = {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
        out[f"{data}/{metric}"] = row
        print(f"== {data} / {metric}: {len(runs)} runs (seeds {row['seeds']})")
        for k, v in row.items():
            if isinstance(v, dict):
                undef = v.get("n_undefined", 0)
                note = f"  (undefined in {undef} runs: never reached the best single backend)" if undef else ""
                print(f"  {k:42s} mean {v['mean']:9.3f}  min {v['min']:9.3f}  max {v['max']:9.3f}{note}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
