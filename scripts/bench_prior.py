"""The prior router (no quality table) on the testbed, against each fixed step budget, and how many
swept prompts a learned router needs to beat it.

    python scripts/bench_prior.py --table outputs/testbed-500/quality.parquet \
        --out docs/measurements/testbed-prior.json

The table: a full testbed sweep (``t2iroute sweep 'backends=[testbed_big_4,testbed_big_8,
testbed_big_16,testbed_big_32_es,testbed_small_8]' prompts=testbed limit=500
scorer=testbed_check``). Held out: ``--test`` random prompts (split seed 0). The prior router is
what ``t2iroute train predictor=prior`` makes with no table: step budgets from the backend configs,
``testbed_small_8`` configured as a smaller model (ceiling ``--small-ceiling``, cost 8 steps x 1/4),
costs in steps; its decisions are judged with the table's measured scores and seconds. Learned
routers train on ``n`` random full rows of the other prompts (``--repeats`` draws each):
``predictor=auto`` (the default) and ``predictor=prior`` on the table (the prior plus a learned
correction weighted n / (n + 50)).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from t2iroute.features import build_featurizer
from t2iroute.paths import CONF_DIR
from t2iroute.predictors import build_predictor
from t2iroute.router.policy import build_policy
from t2iroute.training.evaluate import summarize
from t2iroute.training.prior import prior_costs, prior_spec
from t2iroute.training.train import _anchor_of_rows, fit_predictor, load_matrix, routed

BIG = ["testbed_big_4", "testbed_big_8", "testbed_big_16", "testbed_big_32_es"]


def conf(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "predictor" / f"{name}.yaml"), resolve=True)


def stats(v) -> dict:
    """mean/min/max over the runs that have the figure; ``n``: how many (cost saved at equal quality
    is None where the router never reaches the best single backend's test quality)."""
    v = [x for x in v if x is not None]
    if not v:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)), "n": len(v)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--sizes", default="10,20,50,100,200,300")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small-ceiling", type=float, default=0.8)
    ap.add_argument("--floors", default="0.8,0.9,0.95")
    ap.add_argument("--backends", default=None, help="only these backends of the table (comma-separated)")
    a = ap.parse_args()
    t_start = time.perf_counter()
    M = load_matrix({"path": a.table, "costs": None}, "testbed_check")
    if a.backends:
        keep = a.backends.split(",")
        M = load_matrix({"path": a.table, "costs": None, "backends": keep}, "testbed_check")
    if not M.complete.all():
        raise SystemExit(f"{a.table}: {int((~M.complete).sum())} prompts miss a backend; a full sweep is needed")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(M))
    te, pool = order[: a.test], order[a.test :]
    featurizer = build_featurizer([{"type": "embedding"}, {"type": "lexical"}])
    X = featurizer.transform(list(M.prompts))
    texts = list(M.prompts)

    # the prior router, as train predictor=prior makes it with no table
    pcfg = conf("prior")
    pcfg["backends"] = {b: {"cost": float(b.split("_")[-2] if b.endswith("_es") else b.split("_")[-1])} for b in BIG}
    pcfg["backends"]["testbed_small_8"] = {"cost": 8 * 0.25, "ceiling": a.small_ceiling}
    pcfg["backends"] = {b: v for b, v in pcfg["backends"].items() if b in M.backends}
    spec = prior_spec(pcfg, M.backends, None, featurizer)
    step_costs, _ = prior_costs(pcfg, M.backends, spec["steps"])
    prior = build_predictor(spec).fit_without_table(X.shape[1])
    q_prior = prior.predict(X[te])
    rows = np.arange(len(te))
    fixed = {
        b: {"quality": float(M.scores[te, j].mean()), "cost_s": float(M.costs[j])} for j, b in enumerate(M.backends)
    }
    at_floor = {}
    for f in [float(x) for x in a.floors.split(",")]:
        choice = build_policy({"type": "quality_floor", "quality_floor": f}).choose(q_prior, step_costs)
        at_floor[str(f)] = {
            "quality": float(M.scores[te][rows, choice].mean()),
            "cost_s": float(M.costs[choice].mean()),
            "share_by_backend": {b: float((choice == j).mean()) for j, b in enumerate(M.backends)},
        }
    s_prior = summarize(q_prior, M.scores[te], M.costs, M.backends)
    result = {
        "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores",
        "table": a.table,
        "n_prompts": len(M),
        "n_test": len(te),
        "backends": M.backends,
        "prior_spec": {k: spec[k] for k in ("steps", "ceiling", "tau")} | {"step_costs": step_costs.tolist()},
        "fixed": fixed,
        "prior_at_floor": at_floor,
        "prior_curve": {
            "cost_saved_pct": s_prior["router"]["cost_saved_pct"],
            "quality_gain_at_equal_cost": s_prior["router"]["quality_gain_at_equal_cost"],
            "best_single": s_prior["best_single"],
            "oracle_cost_saved_pct": s_prior["oracle"].get("cost_saved_pct"),
        },
        "learning_curve": [],
    }
    cfg = {"anchor": "auto"}
    for n in [int(x) for x in a.sizes.split(",")]:
        small = {"testbed_small_8": {"ceiling": a.small_ceiling}} if "testbed_small_8" in M.backends else {}
        learned = conf("prior") | {"backends": small}
        for name, pspec in (("auto", conf("auto")), ("prior+learned", learned)):
            saved, gain = [], []
            for rep in range(a.repeats):
                r = np.random.default_rng(1000 + rep).choice(pool, size=min(n, len(pool)), replace=False)
                pred = fit_predictor(
                    pspec,
                    X[r],
                    M.scores[r],
                    featurizer,
                    [texts[i] for i in r],
                    costs=M.costs,
                    anchor="auto",
                    backends=M.backends,
                )
                anchor = _anchor_of_rows(cfg, M, M.scores[r], pred)
                q = routed(pred.predict(X[te], texts=[texts[i] for i in te]), M, anchor)
                s = summarize(q, M.scores[te], M.costs, M.backends)["router"]
                saved.append(s["cost_saved_pct"])
                gain.append(s["quality_gain_at_equal_cost"])
            row = {"n_prompts": n, "predictor": name, "cost_saved_pct": stats(saved), "quality_gain": stats(gain)}
            result["learning_curve"].append(row)
            print(json.dumps(row), flush=True)
    result["seconds"] = time.perf_counter() - t_start
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("fixed", "prior_at_floor", "prior_curve")}, indent=1))


if __name__ == "__main__":
    main()
