"""Which cells teach a stack router: CEMS clip, seed 0, the replay's split and pool.

    R=outputs/replay-grid/table0.05-explore0-seed0/config.yaml   # any seed-0 CEMS replay run's config
    python scripts/replay_fill_experiment.py $R start stack            # 400 complete rows only
    python scripts/replay_fill_experiment.py $R single stack plain     # + 4,000 prompts, one uniform random cell each
    python scripts/replay_fill_experiment.py $R skew stack plain,oof   # + 4,000 prompts, one cell, 75% on SD-Turbo
    python scripts/replay_fill_experiment.py $R pair4000 stack         # + 4,000 prompts, two random cells each
    python scripts/replay_fill_experiment.py $R complete1400 stack     # 1,400 complete rows (5,600 cells)

The fourth argument refits after filling the missing cells from the predictor fitted on the
complete rows: ``plain`` (its predictions), ``oof`` (plus the part of the observed cells' surprise
that is the prompt's level, shrunk by s_l / (s_l + s_e) read off the complete rows with an
out-of-fold ridge of the level), ``full`` (plus all of it). Prints cost saved at equal quality
(-1: none) and quality gain at equal cost on the test split. Needs ../shared/data (CEMS).
"""

import sys
import time

import numpy as np
import yaml

from omegaconf import OmegaConf

from t2iroute.features import build_featurizer
from t2iroute.paths import CONF_DIR
from t2iroute.training.evaluate import summarize
from t2iroute.training.train import _plain, _split, fit_predictor, load_matrix, routed


def main() -> None:
    config, which, predictor = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = OmegaConf.load(config)
    M = load_matrix(cfg["data"], "clip")
    tr, va, te = _split(M, cfg)
    rng = np.random.default_rng(0)
    pool = rng.permutation(np.concatenate([tr, va]))
    head, stream = pool[:400], pool[400:4400]
    f = build_featurizer(_plain(cfg["features"]))
    with f.without_deadline():
        X = f.transform(list(M.prompts))
    k = len(M.backends)
    pspec = yaml.safe_load(open(CONF_DIR / "predictor" / f"{predictor}.yaml"))

    def fit(rows, Y):
        return fit_predictor(
            pspec,
            X[rows],
            Y,
            f,
            M.prompts[rows],
            costs=M.costs,
            higher_is_better=True,
            anchor=False,
            backends=M.backends,
        )

    def judge(pred):
        q = routed(pred.predict(X[te], texts=list(M.prompts[te])), M, None)
        s = summarize(q, M.scores[te], M.costs, M.backends, higher_is_better=True)["router"]
        return round(s["cost_saved_pct"] or -1, 1), round(s["quality_gain_at_equal_cost"], 3)

    Y = np.full((len(M), k), np.nan)
    Y[head] = M.scores[head]
    if which == "single":
        c = rng.integers(0, k, len(stream))
        Y[stream, c] = M.scores[stream, c]
        rows = np.concatenate([head, stream])
    elif which == "skew":
        c = np.where(rng.random(len(stream)) < 0.75, 0, rng.integers(1, k, len(stream)))
        Y[stream, c] = M.scores[stream, c]
        rows = np.concatenate([head, stream])
    elif which.startswith("pair"):
        st = stream[: int(which[4:] or 2000)]
        for i in st:
            c = rng.choice(k, 2, replace=False)
            Y[i, c] = M.scores[i, c]
        rows = np.concatenate([head, st])
    elif which == "start":
        rows = head
    elif which == "complete1400":
        rows = pool[:1400]
        Y[rows] = M.scores[rows]
    else:
        raise SystemExit(f"unknown data {which!r}")
    t0 = time.time()
    print(
        which, predictor, "fill mf: saved/gain", judge(fit(rows, Y[rows])), f"fit {time.time() - t0:.0f}s", flush=True
    )
    if len(sys.argv) > 4:
        obs = np.isfinite(Y[rows])
        comp = rows[obs.all(1)]
        P = fit(comp, Y[comp]).predict(X[rows], texts=list(M.prompts[rows]))
        Yr = Y[rows]
        R = np.where(obs, Yr - P, 0.0)
        m = obs.sum(1)
        mean_r = R.sum(1) / np.maximum(m, 1)
        for mode in sys.argv[4].split(","):
            if mode == "oof":
                from sklearn.linear_model import RidgeCV
                from sklearn.model_selection import cross_val_predict

                Yc = Y[comp]
                lvl = Yc.mean(1)
                s_l = np.var(lvl - cross_val_predict(RidgeCV(alphas=[1, 10, 100]), X[comp], lvl, cv=5))
                D = Yc - lvl[:, None]
                D = D - D.mean(0)
                s_e = (D**2).sum() / (len(Yc) * (k - 1))
                shift = m * s_l / (m * s_l + s_e) * mean_r
            elif mode == "full":
                shift = mean_r
            else:
                shift = np.zeros(len(rows))
            Yf = np.where(obs, Yr, P + shift[:, None])
            print(
                which, predictor, f"fill from the complete rows ({mode}): saved/gain", judge(fit(rows, Yf)), flush=True
            )


if __name__ == "__main__":
    main()
