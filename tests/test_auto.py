"""predictor=auto: picks by cross-validation on the routing objective, and admits when nothing
beats the best single backend. Anchored routing never loses to the anchor on its own data."""

import json

import numpy as np
import pandas as pd

from t2iroute import Router
from t2iroute.cli import main
from t2iroute.router.policy import anchor_quality, route_scores
from tests.conftest import make_table

FAST_CANDIDATES = (
    "predictor.candidates=[{name: knn10, spec: {type: knn, n_neighbors: 10}},{name: ridge, spec: {type: ridge}}]"
)


def _noise_table(n=150, seed=0):
    """Three backends whose per-prompt scores are pure noise: nothing to learn from the prompt."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for b, c, mu in (("fast", 0.1, 29.0), ("mid", 0.5, 29.5), ("slow", 1.0, 30.0)):
            rows.append(
                dict(
                    prompt_id=f"p{i}",
                    prompt=f"prompt number {i} {'cat' if i % 2 else 'dog'}",
                    backend=b,
                    metric="clip",
                    score=mu + rng.normal(0, 1.0),
                    cost_s=c,
                    source="A",
                )
            )
    return pd.DataFrame(rows)


def test_anchor_quality():
    q = np.array([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    a = anchor_quality(q, 2)
    assert (route_scores(a, np.array([0.1, 0.5, 1.0]), 0.0) == 2).all()  # lambda 0: the anchor
    assert (a[:, :2] == q[:, :2]).all() and (q == [[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]]).all()  # a copy


def test_auto_picks_a_learnable_predictor(tmp_path, capsys):
    path = tmp_path / "t.csv"
    make_table(n_prompts=200).to_csv(path, index=False)
    out = tmp_path / "train"
    assert (
        main(["train", "data=custom", f"data.path={path}", "features=[lexical]", FAST_CANDIDATES, f"out_dir={out}"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["predictor"]["beats_best_single_cv"] is True
    m = json.loads((out / "router" / "manifest.json").read_text())
    sel = m["metrics"]["predictor_selection"]
    assert sel["chosen"] in ("knn10", "ridge") and sel["beats_best_single_cv"] is True and sel["anchored"]
    assert {c["name"] for c in sel["candidates"]} == {"knn10", "ridge"}
    assert m["anchor"] == "slow" and m["policy"]["type"] == "lam"
    # the default policy: the cheapest routing at the best single backend's validation quality
    assert m["policy"]["calibrated_from"]["mean_quality_floor"] > 0
    r = Router.load(out / "router")
    assert r.route("two birds on a wire", lam=0).backend == "slow"  # anchored: lambda 0 is the best single
    assert r.route("a cat").backend != "slow"  # the default policy saves on easy prompts


def test_auto_admits_when_nothing_beats_the_best_single(tmp_path, capsys):
    path = tmp_path / "noise.csv"
    _noise_table().to_csv(path, index=False)
    out = tmp_path / "train"
    assert (
        main(["train", "data=custom", f"data.path={path}", "features=[lexical]", FAST_CANDIDATES, f"out_dir={out}"])
        == 0
    )
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["predictor"]["beats_best_single_cv"] is False
    assert captured.err.count("no candidate beats the best single backend") == 1
    m = json.loads((out / "router" / "manifest.json").read_text())
    assert m["metrics"]["beats_best_single_cv"] is False
    assert m["policy"] == {"type": "fixed", "backend": "slow"}
    r = Router.load(out / "router")
    assert {d.backend for d in r.route(["a cat", "a dog", "prompt number 3 cat"])} == {"slow"}


def test_bench_with_auto_never_loses_on_noise(tmp_path):
    path = tmp_path / "noise.csv"
    _noise_table(n=200, seed=0).to_csv(path, index=False)
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "data=custom",
                f"data.path={path}",
                "features=[lexical]",
                FAST_CANDIDATES,
                "throughput.enabled=false",
                f"out_dir={out}",
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert s["predictor_selection"]["beats_best_single_cv"] is False
    assert s["router"]["quality_gain_at_equal_cost"] >= -1e-9 and s["router"]["cost_saved_pct"] >= -1e-9


def test_anchor_auto_lets_cross_validation_unanchor_on_big_tables():
    """2,100 prompts where the dearest backend wins big on hard prompts but loses on average:
    only an unanchored router can use it, and cross-validation says so."""
    from t2iroute.features import build_featurizer
    from t2iroute.predictors import build_predictor
    from t2iroute.training.table import pivot, validate_table

    rng = np.random.default_rng(0)
    rows = []
    for i in range(2100):
        hard = i % 10 < 3
        prompt = f"{'two birds and three apples' if hard else 'a cat'} number {i}"
        for b, c, bonus in (("fast", 0.1, 0.0), ("mid", 0.5, 0.5), ("slow", 1.0, 2.0 if hard else -1.0)):
            rows.append(
                dict(
                    prompt_id=f"p{i}",
                    prompt=prompt,
                    backend=b,
                    metric="clip",
                    score=30 + bonus + rng.normal(0, 0.1),
                    cost_s=c,
                    source="A",
                )
            )
    M = pivot(validate_table(pd.DataFrame(rows)), "clip")
    X = build_featurizer({"lexical": {}}).transform(list(M.prompts))
    spec = {"type": "auto", "candidates": [{"name": "ridge", "spec": {"type": "ridge", "alpha": 1.0}}]}
    p = build_predictor(spec).fit(X, M.scores, costs=M.costs, anchor="auto")
    assert p.selection_["anchor_modes_tried"] == [True, False]
    assert p.anchored_ is False and p.beats_best_single_cv_
    small = build_predictor(spec).fit(X[:500], M.scores[:500], costs=M.costs, anchor="auto")
    assert small.selection_["anchor_modes_tried"] == [True] and small.anchored_ is True
