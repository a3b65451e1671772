"""Incomplete quality tables are first-class: every observed (prompt, backend) cell trains, only
prompts scored on every backend are judged, and nothing is dropped."""

import json

import numpy as np
import pandas as pd
import pytest

from t2iroute.cli import main
from t2iroute.predictors import build_predictor
from t2iroute.predictors.base import backend_means, two_way
from t2iroute.training.table import pivot

from tests.conftest import make_table


def drop_cells(t: pd.DataFrame, share: float, seed: int = 0, backend: str | None = None) -> pd.DataFrame:
    """``t`` without a random ``share`` of its (prompt, backend) cells (of ``backend``'s only, if given),
    every prompt keeping at least one cell."""
    rng = np.random.default_rng(seed)
    cells = t[["prompt_id", "backend"]].drop_duplicates()
    if backend is not None:
        cells = cells[cells.backend == backend]
    gone = cells[rng.random(len(cells)) < share]
    keep = ~t.set_index(["prompt_id", "backend"]).index.isin(pd.MultiIndex.from_frame(gone))
    out = t[keep]
    lost = sorted(set(t.prompt_id) - set(out.prompt_id))  # a prompt that lost every cell keeps its first
    return pd.concat([out, t[t.prompt_id.isin(lost)].groupby("prompt_id").head(1)], ignore_index=True)


def test_pivot_keeps_prompts_that_miss_backends_and_counts_what_was_observed(caplog):
    t = drop_cells(make_table(), 0.5)
    with caplog.at_level("INFO"):
        M = pivot(t, "clip")
    assert len(M) == 120 and np.isnan(M.scores).any()
    assert M.observed.sum() == len(t) and M.complete.sum() == int((~np.isnan(M.scores)).all(axis=1).sum())
    cov = M.coverage()
    assert cov["observed_cells"] == len(t) and cov["cells"] == 360 and cov["prompts"] == 120
    assert cov["observed_cost"] == pytest.approx(sum(M.costs[M.backends.index(b)] for b in t.backend))
    assert cov["observed_cost"] < cov["full_sweep_cost"]
    assert "miss a backend" in caplog.text


def test_two_way_is_the_row_mean_on_a_complete_table_and_sees_through_selection():
    rng = np.random.default_rng(0)
    mu = rng.normal(0, 2, 400)
    off = np.array([-1.0, 0.0, 1.0])
    Y = mu[:, None] + off[None, :] + rng.normal(0, 0.05, (400, 3))
    m, o = two_way(Y)
    np.testing.assert_allclose(m, Y.mean(axis=1))
    # the best backend ran only on the hardest prompts: its plain mean says it is the worst
    Ym = Y.copy()
    Ym[mu > np.quantile(mu, 0.2), 2] = np.nan
    assert np.nanmean(Ym, axis=0).argmax() != 2
    m, o = two_way(Ym)
    np.testing.assert_allclose(o, off, atol=0.05)
    assert backend_means(Ym).argmax() == 2


def _relative(P):
    return P - P.mean(axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["ridge", "knn", "lgbm"])
def test_predictors_learn_from_the_observed_cells_of_a_half_missing_table(kind):
    rng = np.random.default_rng(1)
    n, d = 500, 6
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, 3))
    Y = X @ W + rng.normal(size=(n, 1)) + 0.1 * rng.normal(size=(n, 3))
    Ym = Y.copy()
    Ym[rng.random(Y.shape) < 0.5] = np.nan
    Ym[np.isnan(Ym).all(axis=1), 0] = Y[np.isnan(Ym).all(axis=1), 0]
    P = build_predictor({"type": kind}).fit(X[:400], Ym[:400]).predict(X[400:])
    assert np.isfinite(P).all() and P.shape == (100, 3)
    r = np.corrcoef(_relative(P).ravel(), _relative(Y[400:]).ravel())[0, 1]
    # a model of the backends' mean alone knows nothing of the prompt (r ~ 0)
    assert r > 0.8, r


def test_ridge_on_missing_cells_converges_to_per_backend_ridge_on_the_observed_rows():
    """The imputation rounds are EM: for ridge they reach the fit on each backend's observed rows."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 4))
    Y = X @ rng.normal(size=(4, 2)) + rng.normal(0, 0.3, (300, 2))
    Ym = Y.copy()
    Ym[rng.random(300) < 0.4, 1] = np.nan
    p = build_predictor({"type": "ridge", "alpha": 1.0, "relative": False})
    p.missing_rounds = 200
    P = p.fit(X, Ym).predict(X)
    obs = ~np.isnan(Ym[:, 1])
    q = build_predictor({"type": "ridge", "alpha": 1.0, "relative": False})
    Q = q.fit(X[obs], Y[obs]).predict(X)
    np.testing.assert_allclose(P[:, 1], Q[:, 1], atol=0.02)


def test_a_prompt_or_backend_with_no_cell_is_refused_naming_it():
    X = np.random.default_rng(0).normal(size=(5, 2))
    Y = np.ones((5, 2))
    Y[3] = np.nan
    with pytest.raises(ValueError, match="row 3 of y has no observed cell"):
        build_predictor({"type": "ridge"}).fit(X, Y)
    Y = np.ones((5, 2))
    Y[:, 1] = np.nan
    with pytest.raises(ValueError, match="column 1 of y"):
        build_predictor({"type": "knn"}).fit(X, Y)


def _bench(path, out, capsys, *extra):
    args = ["bench", "data=custom", f"data.path={path}", "features=lexical", "throughput.enabled=false"]
    assert main([*args, f"out_dir={out}", *extra]) == 0
    capsys.readouterr()
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(dict(share=0.5), id="half-the-cells-at-random"),
        pytest.param(dict(share=0.9, backend="slow"), id="slow-on-a-tenth-of-prompts"),
    ],
)
def test_bench_and_train_drop_no_prompt_and_judge_complete_rows(how, tmp_path, capsys):
    t = drop_cells(make_table(n_prompts=300, seed=3), seed=4, **how)
    path = tmp_path / "partial.parquet"
    t.to_parquet(path)
    M = pivot(t, "clip")
    s = _bench(path, tmp_path / "bench", capsys)
    cov = s["coverage"]
    # every prompt is used: the incomplete ones train, the test part is complete rows
    assert s["n_train"] + s["n_test"] == 300
    assert s["n_test"] <= int(M.complete.sum())
    assert cov["observed_cells"] == len(t) - s["n_test"] * 3
    assert cov["complete_prompts"] < cov["prompts"] == s["n_train"]
    assert s["router"]["cost_saved_pct"] is not None
    out = tmp_path / "train"
    args = ["train", "data=custom", f"data.path={path}", "features=lexical", f"out_dir={out}"]
    assert main(args) == 0
    capsys.readouterr()
    manifest = json.loads((out / "router" / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 300
    assert metrics["coverage"]["observed_cells"] == int(M.observed.sum()) - 3 * (metrics["n_val"] + metrics["n_test"])
    from t2iroute import Router

    d = Router.load(out / "router").route(["two red signs", "a plain wall"])
    assert all(x.backend in M.backends for x in d)


# -- sweep plans --------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", ["prompts", "cells", "active"])
def test_a_plan_spends_at_most_its_share_and_sees_only_its_cells(plan):
    from t2iroute.training.plans import plan_cells

    rng = np.random.default_rng(0)
    n, costs = 300, np.array([0.1, 0.5, 1.0])
    X = rng.normal(size=(n, 5))
    scores = X @ rng.normal(size=(5, 3)) + rng.normal(0, 0.1, (n, 3))
    asked = []

    def observe(mask):
        asked.append(mask.copy())
        return np.where(mask, scores, np.nan)

    mask = plan_cells(plan, 0.4, costs, n, seed=1, observe=observe, X=X)
    spent = (mask * costs).sum() / (n * costs.sum())
    assert 0.35 <= spent <= 0.4 + 1e-9, spent
    if plan == "prompts":
        assert set(mask.sum(axis=1)) == {0, 3}
    if plan == "active":
        assert asked and all((a <= mask).all() for a in asked)  # every round saw a subset of the final cells
        # the cheap backend is run most: cells are bought per unit of their cost
        assert mask[:, 0].sum() > mask[:, 2].sum()
    have = mask.copy()
    more = plan_cells(plan, 0.6, costs, n, seed=2, observe=observe, X=X, have=have)
    assert (more >= have).all() and (more * costs).sum() / (n * costs.sum()) <= 0.6 + 1e-9


def test_bench_simulates_sweep_plans_beside_the_full_table(tmp_path, capsys):
    path = tmp_path / "full.parquet"
    make_table(n_prompts=300, seed=1).to_parquet(path)
    s = _bench(path, tmp_path / "b", capsys, "sweep.plan=[prompts,active]", "sweep.share=[0.25,0.5]")
    sw = s["sweep"]
    assert sw["full_table"]["cost_saved_pct"] == s["router"]["cost_saved_pct"]
    assert [(r["plan"], r["share"]) for r in sw["runs"]] == [
        ("prompts", 0.25),
        ("prompts", 0.5),
        ("active", 0.25),
        ("active", 0.5),
    ]
    for r in sw["runs"]:
        assert r["spent_share"] <= r["share"] + 1e-9 and r["observed_cells"] > 0
    assert (tmp_path / "b" / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, words",
    [(["sweep.plan=greedy"], "sweep.plan='greedy'"), (["sweep.plan=prompts", "sweep.share=1.5"], "sweep.share=1.5")],
)
def test_a_bad_plan_or_share_is_one_line_naming_the_key(args, words, tmp_path, capsys):
    path = tmp_path / "full.parquet"
    make_table(n_prompts=60).to_parquet(path)
    base = ["bench", "data=custom", f"data.path={path}", "features=lexical", "throughput.enabled=false"]
    rc = main([*base, f"out_dir={tmp_path / 'b'}", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and words in err, err
