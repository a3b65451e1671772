"""A real planned sweep against a full one: the cells and seconds each spent, and the held-out
saving of the router trained on each (``predictor=auto``), judged on prompts neither saw.

    python scripts/bench_real_sweep.py --full outputs/testbed-500/quality.parquet \
        --planned outputs/testbed-active/quality.parquet --train-ids outputs/train-ids.txt \
        --metric testbed_check --out docs/measurements/testbed-active-sweep.json

``--full``: a complete sweep of every prompt (train and held-out); ``--planned``: what the plan
generated on the training prompts (``t2iroute sweep plan=active budget_share=0.5``);
``--train-ids``: the training prompt ids, one per line (the rest of ``--full`` is held out). The
full-sweep router trains on ``--full``'s training rows. Seconds are the tables' measured
``cost_s`` summed over the cells each sweep generated.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from t2iroute.features import build_featurizer
from t2iroute.paths import CONF_DIR
from t2iroute.training.evaluate import summarize
from t2iroute.training.table import pivot, read_table
from t2iroute.training.train import _anchor_of_rows, fit_predictor, routed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", required=True)
    ap.add_argument("--planned", required=True)
    ap.add_argument("--train-ids", required=True)
    ap.add_argument("--metric", default="testbed_check")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    full_t = read_table(a.full)
    planned_t = read_table(a.planned)
    M = pivot(full_t, a.metric)
    train_ids = set(Path(a.train_ids).read_text().split())
    ids = list(M.prompt_ids)
    tr = np.array([i for i, p in enumerate(ids) if p in train_ids])
    te = np.array([i for i, p in enumerate(ids) if p not in train_ids])
    if not M.complete[te].all() or not M.complete[tr].all():
        raise SystemExit(f"{a.full}: the full sweep must be complete")
    P = pivot(planned_t, a.metric)
    pos = {p: i for i, p in enumerate(ids)}
    missing = [p for p in P.prompt_ids if p not in pos or p not in train_ids]
    if missing:
        raise SystemExit(f"{a.planned}: prompt {missing[0]!r} is not a training prompt of {a.full}")
    if list(P.backends) != list(M.backends):
        raise SystemExit(f"{a.planned}: backends {P.backends} differ from {M.backends}")
    Yp = np.full((len(tr), len(M.backends)), np.nan)
    tpos = {ids[i]: j for j, i in enumerate(tr)}
    for i, p in enumerate(P.prompt_ids):
        Yp[tpos[p]] = P.scores[i]
    seen = np.isfinite(Yp)
    # the same cell generated twice gives the same image: the planned scores equal the full sweep's
    same = np.isclose(Yp[seen], M.scores[tr][seen]).mean() if seen.any() else None
    featurizer = build_featurizer([{"type": "embedding"}, {"type": "lexical"}])
    X = featurizer.transform(list(M.prompts))
    pcfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "predictor" / "auto.yaml"), resolve=True)
    cell_s = full_t[full_t.metric == a.metric].groupby(["prompt_id", "backend"]).cost_s.mean()
    planned_s = planned_t[planned_t.metric == a.metric].groupby(["prompt_id", "backend"]).cost_s.mean()
    out = {
        "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores",
        "n_train": len(tr),
        "n_test": len(te),
        "planned_scores_equal_full": None if same is None else float(same),
    }
    for name, Y, secs in (
        ("full", M.scores[tr], float(cell_s.loc[[ids[i] for i in tr]].sum())),
        ("planned", Yp, float(planned_s.sum())),
    ):
        keep = np.isfinite(Y).any(axis=1)
        r = tr[keep]
        pred = fit_predictor(pcfg, X[r], Y[keep], featurizer, M.prompts[r], costs=M.costs, anchor="auto")
        anchor = _anchor_of_rows({"anchor": "auto"}, M, Y[keep], pred)
        q = routed(pred.predict(X[te], texts=list(M.prompts[te])), M, anchor)
        s = summarize(q, M.scores[te], M.costs, M.backends)
        out[name] = {
            "cells": int(np.isfinite(Y).sum()),
            "cells_by_backend": {b: int(v) for b, v in zip(M.backends, np.isfinite(Y).sum(axis=0))},
            "seconds": secs,
            "held_out_cost_saved_pct": s["router"]["cost_saved_pct"],
            "held_out_quality_gain": s["router"]["quality_gain_at_equal_cost"],
            "best_single": s["best_single"]["name"],
            "oracle_cost_saved_pct": s["oracle"].get("cost_saved_pct"),
        }
    out["planned"]["share_of_full_seconds"] = out["planned"]["seconds"] / out["full"]["seconds"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
