"""A router with no quality table: the prior (quality rises with steps, saturates sooner for simple
prompts), trained with no data=, every policy on it, and a learned correction that grows with cells."""

import json

import numpy as np
import pytest

from t2iroute.cli import main
from t2iroute.complexity import COUNTS
from t2iroute.errors import ConfigError
from t2iroute.features.lexical import FEATURE_NAMES, LexicalFeaturizer
from t2iroute.predictors import build_predictor
from t2iroute.router import Router

SIMPLE, COMPLEX = "a red circle", "two striped blue squares left of three dotted green triangles, and a sign"
LEX = [FEATURE_NAMES.index(c) for c in COUNTS]


def prior(**kw):
    spec = {"type": "prior", "steps": [4, 8, 16, 32], "lexical_columns": LEX, **kw}
    return build_predictor(spec).fit_without_table(len(FEATURE_NAMES))


def test_quality_rises_with_steps_and_saturates_sooner_for_simple_prompts():
    X = LexicalFeaturizer().transform([SIMPLE, COMPLEX])
    p = prior()
    Q = p.predict(X)
    assert (np.diff(Q, axis=1) > 0).all() and (Q > 0).all() and (Q < 1).all()
    assert p.complexity(X)[0] < p.complexity(X)[1]
    assert Q[0, 1] > Q[1, 1] + 0.2  # at 8 steps the simple prompt is near its ceiling, the complex one is not
    # a ceiling caps a backend; the LLM's complexity column wins over the lexical counts when given
    assert prior(ceiling=[1, 1, 1, 0.5]).predict(X)[:, 3].max() <= 0.5
    Xl = np.hstack([X, [[5.0], [1.0]]])
    pl = build_predictor({"type": "prior", "steps": [4, 8, 16, 32], "complexity_column": X.shape[1]})
    Ql = pl.fit_without_table(Xl.shape[1]).predict(Xl)
    assert Ql[0, 1] < Ql[1, 1]  # the column says the first prompt is the complex one


def _cli(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_with_no_table_routes_and_generates_under_every_policy(tmp_path, capsys):
    out = tmp_path / "prior"
    rc, o, e = _cli(["train", "predictor=prior", "backends=[tiny_10,tiny_20,tiny_50]", f"out_dir={out}"], capsys)
    assert rc == 0, e
    info = json.loads(o)
    assert info["cost_unit"] == "steps" and info["metrics"]["prior"]["steps"] == [10.0, 20.0, 50.0]
    r = Router.load(out / "router")
    d_simple, d_complex = r.route([SIMPLE, COMPLEX])
    assert d_simple.backend == "tiny_10" and d_complex.backend in ("tiny_20", "tiny_50")  # floor 0.9 of converged
    for kw, check in [
        ({"lam": 0.0}, lambda d: d.backend == "tiny_50"),
        ({"lam": 1.0}, lambda d: d.backend == "tiny_10"),
        ({"budget": 10.0}, lambda d: d.backend == "tiny_10"),
        ({"max_cost": 20.0}, lambda d: d.backend in ("tiny_10", "tiny_20")),
        ({"quality_floor": 0.999}, lambda d: d.backend == "tiny_50"),
        ({"policy": {"type": "fixed", "backend": "tiny_20"}}, lambda d: d.backend == "tiny_20"),
    ]:
        for d in r.route([SIMPLE, COMPLEX], **kw):
            assert check(d), (kw, d.backend)
    res = r.generate(SIMPLE, seed=0)
    assert res.image.size[0] > 0 and res.backend == res.decision.backend == "tiny_10"
    rc, o, e = _cli(["route", SIMPLE, f"artifact={out / 'router'}", "lam=1.0"], capsys)
    assert rc == 0 and json.loads(o)["backend"] == "tiny_10"


@pytest.mark.parametrize(
    "args, says",
    [
        (["predictor=prior", "backends=[]"], "backends=[]"),
        (
            ["predictor=prior", "backends=[tiny_10]", "+predictor.backends={nope: {steps: 3}}"],
            "predictor.backends.nope",
        ),
        (["predictor=prior", "backends=[tiny_10,tiny_20]", "+predictor.backends={tiny_10: {cost: 1}}"], ".cost"),
        (["predictor=prior", "backends=[tiny_10]", "router.mean_quality_floor=0.5"], "mean_quality_floor"),
        (["predictor=prior", "backends=[tiny_10]", "features=[embedding]"], "add lexical"),
        (["predictor=knn", "data=none", "backends=[tiny_10]"], "predictor=prior"),
    ],
)
def test_bad_prior_settings_name_the_key(tmp_path, capsys, args, says):
    rc, _, e = _cli(["train", *args, f"out_dir={tmp_path / 'x'}"], capsys)
    assert rc == 2 and says in e, e
    assert not (tmp_path / "x" / "router").exists()


def test_a_backend_with_no_steps_needs_them_configured():
    from t2iroute.training.prior import prior_spec

    class F:
        feature_names_ = [f"lexical:{n}" for n in FEATURE_NAMES]

    with pytest.raises(ConfigError, match=r"predictor.backends.api.steps"):
        prior_spec({"type": "prior"}, ["api"], {"api": {"type": "remote"}}, F())
    spec = prior_spec({"type": "prior", "backends": {"api": {"steps": 30, "ceiling": 0.8}}}, ["api"], {}, F())
    assert spec["steps"] == [30.0] and spec["ceiling"] == [0.8] and spec["lexical_columns"] == LEX


def test_cells_shrink_towards_the_prior_first_and_replace_it_with_many():
    """Truth: the 32-step budget is worst (the prior says best). With few prompts the fit stays
    near the (rescaled) prior; with many, the learned correction takes over."""
    rng = np.random.default_rng(0)
    words = ["red", "two", "striped", "circle", "left of", "three", "dotted", "blue", "and", "sign"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 8))) for _ in range(600)]
    X = LexicalFeaturizer().transform(texts)
    truth = np.tile([0.5, 0.6, 0.7, 0.3], (len(X), 1)) + rng.normal(0, 0.02, (len(X), 4))

    def fitted(n):
        spec = {"type": "prior", "steps": [4, 8, 16, 32], "lexical_columns": LEX, "strength": 50.0}
        spec["learned"] = {"type": "ridge", "alpha": 1.0}
        return build_predictor(spec).fit(X[:n], truth[:n])

    few, many = fitted(5), fitted(500)
    assert few.weight_ == pytest.approx(5 / 55) and many.weight_ == pytest.approx(500 / 550)
    test = slice(500, 600)
    own = prior(strength=50.0).predict(X[test]).argmax(axis=1)
    assert (few.predict(X[test]).argmax(axis=1) == own).mean() > 0.5  # still mostly the prior's choices
    assert (many.predict(X[test]).argmax(axis=1) == 2).mean() > 0.9  # learned: the 16-step budget
    err = [np.abs(fitted(n).predict(X[test]) - truth[test]).mean() for n in (5, 50, 500)]
    assert err[0] > err[1] > err[2]
    # missing cells train too, and the state round-trips through an artifact's arrays
    Y = truth[:200].copy()
    Y[rng.random(Y.shape) < 0.5] = np.nan
    Y[np.isnan(Y).all(axis=1), 0] = 0.5
    p = build_predictor({"type": "prior", "steps": [4, 8, 16, 32], "lexical_columns": LEX}).fit(X[:200], Y)
    meta, arrays, texts = p.get_state()
    q = type(p).from_state(meta, arrays, texts)
    np.testing.assert_allclose(q.predict(X[test]), p.predict(X[test]))
