"""``t2iroute replay``: the serving loop simulated on a complete table (bandit feedback only)."""

import json

import numpy as np

import pytest

from t2iroute.cli import main

from tests.conftest import make_table


def _replay(tmp_path, capsys, *extra, n_prompts=500, seed=1):
    path = tmp_path / "t.parquet"
    if not path.exists():
        make_table(n_prompts=n_prompts, seed=seed).to_parquet(path)
    out = tmp_path / "r"
    args = ["replay", "data=custom", f"data.path={path}", "features=lexical", f"out_dir={out}", *extra]
    rc = main(args)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return json.loads((out / "summary.json").read_text()), json.loads(cap.out)


@pytest.mark.heavy  # ~30-45 s on 2 cores: in `make test-heavy` (.ci/run), keeping `make test` under 10 min
def test_only_the_served_cell_is_revealed_and_the_router_learns_from_it(tmp_path, capsys):
    s, brief = _replay(tmp_path, capsys, "start=table:0.05", "stream=300", "retrain_every=100", "explore=0.1")
    n0, k = s["start_prompts"], len(s["backends"])
    assert n0 == round(0.05 * s["n_pool"]) and k == 3
    cps = s["checkpoints"]
    assert [c["streamed"] for c in cps] == [0, 100, 200, 300]
    # every served image reveals exactly one cell (autoscore=1): nothing else of the table is seen
    assert [c["cells"] for c in cps] == [n0 * k + c["streamed"] for c in cps]
    served = s["served"]
    assert sum(served["by_backend"].values()) == 300
    assert 10 <= served["explored"] <= 55  # ~30 of 300 at explore=0.1
    assert served["min_propensity"] == pytest.approx(0.1 / (k - 1))
    # learning from bandit feedback: the saving grows from the 5% start and reaches the full table's
    full = s["full_table"]["cost_saved_pct"]
    assert full is not None and full > 20
    first = cps[0]["cost_saved_pct"] or 0.0
    assert s["final"]["cost_saved_pct"] is not None and s["final"]["cost_saved_pct"] > first
    assert s["final"]["cost_saved_pct"] >= 0.5 * full
    assert brief["final"]["cost_saved_pct"] == s["final"]["cost_saved_pct"]
    assert brief["share_of_full_saving"] == pytest.approx(s["final"]["cost_saved_pct"] / full)
    assert (tmp_path / "r" / "replay.png").stat().st_size > 0


@pytest.mark.heavy  # ~30-45 s on 2 cores: in `make test-heavy` (.ci/run), keeping `make test` under 10 min
def test_autoscore_reveals_a_share_and_the_same_seed_replays_the_same(tmp_path, capsys):
    a, _ = _replay(tmp_path, capsys, "start=table:0.05", "stream=200", "retrain_every=100", "autoscore=0.5")
    n0k = a["start_prompts"] * len(a["backends"])
    revealed = a["final"]["cells"] - n0k
    assert 70 <= revealed <= 130  # ~100 of 200
    b, _ = _replay(tmp_path, capsys, "start=table:0.05", "stream=200", "retrain_every=100", "autoscore=0.5")
    strip = lambda s: [{k: v for k, v in c.items() if k != "fit_s"} for c in s["checkpoints"]]  # noqa: E731
    assert strip(a) == strip(b) and a["served"] == b["served"]


def test_a_replay_can_start_from_the_prior_with_no_table(tmp_path, capsys):
    s, _ = _replay(tmp_path, capsys, "start=prior", "stream=200", "retrain_every=100", "explore=0.1")
    assert s["start_prompts"] == 0 and s["prior_flat"] is True  # the custom backends have no step budgets
    assert s["checkpoints"][0]["cells"] == 0 and s["final"]["cells"] == 200
    assert s["predictor"]["type"] == "prior"


def test_a_prior_start_without_exploration_keeps_serving_what_it_cannot_refit(tmp_path, capsys):
    """explore=0 from a flat prior serves one backend: the others never get a cell, so the router
    is not refitted (and says why) rather than the replay failing."""
    s, _ = _replay(tmp_path, capsys, "start=prior", "stream=200", "retrain_every=100", "explore=0")
    assert len([b for b, n in s["served"]["by_backend"].items() if n]) == 1
    assert all("not_refitted" in c and c["fit_s"] is None for c in s["checkpoints"][1:])
    assert "no cell of" in s["checkpoints"][1]["not_refitted"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["start=table:2"], "start='table:2'"),
        (["start=half"], "start='half'"),
        (["stream=100000"], "stream=100000"),
        (["explore=1"], "explore=1"),
        (["autoscore=1.5"], "autoscore=1.5"),
    ],
)
def test_bad_replay_settings_are_one_line_naming_the_key(args, words, tmp_path, capsys):
    path = tmp_path / "t.parquet"
    make_table(n_prompts=60).to_parquet(path)
    rc = main(["replay", "data=custom", f"data.path={path}", "features=lexical", f"out_dir={tmp_path / 'r'}", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and words in err, err


def test_complete_rows_fill_starts_the_em_from_the_complete_rows():
    from t2iroute.errors import ConfigError
    from t2iroute.predictors import RidgePredictor
    from t2iroute.training.train import complete_rows_fill, fit_predictor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 5))
    Y = X[:, :3] @ rng.normal(size=(3, 3)) + rng.normal(scale=0.1, size=(500, 3))
    B = Y.copy()
    one = np.arange(200, 500)
    keep = rng.integers(0, 3, len(one))
    for i, j in zip(one, keep):  # rows 200-499: one served cell each
        B[i, [c for c in range(3) if c != j]] = np.nan
    assert complete_rows_fill(lambda: RidgePredictor(relative=False), X, Y) is None  # nothing missing
    assert complete_rows_fill(lambda: RidgePredictor(relative=False), X, B, min_rows=201) is None  # 200 complete
    fill = complete_rows_fill(lambda: RidgePredictor(relative=False), X, B)
    want = RidgePredictor(relative=False).fit(X[:200], Y[:200]).predict(X)
    assert np.allclose(fill, want)
    spec = {"type": "ridge", "relative": False, "alpha": 1.0}
    a = fit_predictor(spec, X, B, fill="complete").predict(X)
    b = fit_predictor(spec, X, B, fill="mf").predict(X)
    assert not np.allclose(a, b)
    with pytest.raises(ConfigError, match="fill='em'"):
        fit_predictor(spec, X, B, fill="em")
