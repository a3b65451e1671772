"""Routing policies: semantics, per-request keywords in the API and on the command line."""

import json

import numpy as np
import pytest

from t2iroute.cli import main
from t2iroute.router.policy import (
    BudgetPolicy,
    FixedPolicy,
    LambdaPolicy,
    MaxCostPolicy,
    QualityFloorPolicy,
    calibrate_lambda,
    policy_from_keywords,
    route_scores,
)
from tests.conftest import make_tiny_router

COSTS = np.array([0.1, 0.5, 1.0])
Q = np.array(
    [
        [30.0, 31.0, 33.0],  # slow is much better
        [30.0, 30.2, 30.3],  # nearly equal
        [32.0, 31.0, 30.0],
    ]
)  # fast is best


def test_lambda_rule_and_ties():
    assert LambdaPolicy(0).choose(Q, COSTS).tolist() == [2, 2, 0]
    assert LambdaPolicy(1.0).choose(Q, COSTS).tolist() == [2, 0, 0]
    assert (LambdaPolicy(0.5).choose(Q, COSTS) == route_scores(Q, COSTS, 0.5)).all()
    with pytest.raises(ValueError, match="lam"):
        LambdaPolicy(-1)
    with pytest.raises(ValueError, match="lam"):
        LambdaPolicy(float("nan"))


def test_quality_floor_is_per_prompt():
    p = QualityFloorPolicy(30.25)
    # row 0: mid (31) is the cheapest reaching 30.25; row 1: only slow (30.3); row 2: fast
    assert p.choose(Q, COSTS).tolist() == [1, 2, 0]
    # nobody reaches the floor: the best predicted
    assert QualityFloorPolicy(99).choose(Q, COSTS).tolist() == [2, 2, 0]
    # fallback order: meeting the floor cheapest first, then the rest best first
    assert QualityFloorPolicy(31).order(Q, COSTS)[0].tolist() == [1, 2, 0]


def test_quality_floor_lower_is_better():
    # an error metric (lower is better): the router hands the policy negated quality
    err = np.array([[0.5, 0.3, 0.1]])
    p = QualityFloorPolicy(0.35).oriented(-1.0)
    assert p.choose(-err, COSTS).tolist() == [1]  # mid is the cheapest with error <= 0.35


def test_max_cost_is_per_prompt():
    p = MaxCostPolicy(0.6)
    assert p.choose(Q, COSTS).tolist() == [1, 1, 0]
    assert p.order(Q, COSTS)[0].tolist() == [1, 0, 2]  # over-cap backends only as last fallbacks
    assert MaxCostPolicy(5).choose(Q, COSTS).tolist() == [2, 2, 0]
    with pytest.raises(ValueError, match="below the cheapest"):
        MaxCostPolicy(0.05).choose(Q, COSTS)


def test_budget_calibrates_on_the_prompts_routed():
    rng = np.random.default_rng(0)
    q = 30 + rng.normal(size=(400, 3)) + np.array([0, 0.5, 1.0])
    p = BudgetPolicy(0.5)
    choice = p.choose(q, COSTS)
    assert COSTS[choice].mean() <= 0.5 + 1e-9
    resolved = p.resolve(q, COSTS)
    assert resolved.lam > 0 and resolved.lambda_() == resolved.lam
    assert resolved.describe() == {"type": "budget", "budget": 0.5, "lam": resolved.lam}
    assert resolved.lam == calibrate_lambda(q, COSTS, target_mean_cost=0.5)
    assert (resolved.order(q, COSTS) == p.order(q, COSTS)).all()
    # the policy itself keeps nothing of the call: it can decide for several at once
    assert p.describe() == p.spec() == {"type": "budget", "budget": 0.5} and p.lambda_() is None
    assert not hasattr(p, "lam_")


def _threads(n_threads, fn):
    import threading

    errors, barrier = [], threading.Barrier(n_threads)

    def run(i):
        try:
            barrier.wait(10)
            fn(i)
        except Exception as e:  # noqa: BLE001 -- the test fails on any
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:3]


def test_one_budget_policy_shared_by_threads_reports_each_calls_own_lambda():
    """Issue 22, item 7: a shared BudgetPolicy reported another call's lambda (10 of 600 calls)."""
    import sys

    rng = np.random.default_rng(3)
    # two kinds of batches whose calibrated lambdas differ: they must never be mixed up
    batches = [30 + rng.normal(size=(40, 3)) + np.array([0, 0.5, k]) for k in (1.0, 6.0)]
    lams = [calibrate_lambda(b, COSTS, target_mean_cost=0.4) for b in batches]
    assert lams[0] != lams[1]
    shared = BudgetPolicy(0.4)
    wrong = []

    def call(i):
        for k in range(150):
            which = (i + k) % 2
            r = shared.resolve(batches[which], COSTS)
            if r.lambda_() != lams[which] or r.describe()["lam"] != lams[which]:
                wrong.append((i, k))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show at once
    try:
        _threads(4, call)
    finally:
        sys.setswitchinterval(old)
    assert not wrong, f"{len(wrong)} of 600 calls reported another call's lambda"


def test_a_router_whose_default_policy_is_a_budget_reports_each_calls_lambda_across_threads(monkeypatch):
    import sys
    import time

    # a thread switch while the calibrated lambda rule orders the backends (1 ms), as a loaded
    # server has: a lambda kept on the shared policy is then overwritten before the decision reads it
    order = LambdaPolicy.order

    def slow_order(self, q_hat, costs):
        out = order(self, q_hat, costs)
        time.sleep(0.001)
        return out

    monkeypatch.setattr(LambdaPolicy, "order", slow_order)
    router = make_tiny_router()
    router.policy = BudgetPolicy(0.4)
    groups = [[f"a cat number {i}" for i in range(6)], [f"two birds and three apples {i}" for i in range(6)]]
    expected = []
    for g in groups:
        d = router.route(g)
        expected.append((d[0].lam, d[0].policy))
    assert expected[0][0] != expected[1][0]
    wrong = []

    def call(i):
        for k in range(40):
            which = (i + k) % 2
            d = router.route(groups[which])
            if any((x.lam, x.policy) != expected[which] for x in d):
                wrong.append((i, k))
            if any(x.utility[x.backend] != max(x.utility.values()) for x in d):
                wrong.append(("utility", i, k))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        _threads(4, call)
    finally:
        sys.setswitchinterval(old)
    assert not wrong, f"{len(wrong)} of 160 calls reported another call's lambda: {wrong[:5]}"


@pytest.mark.parametrize(
    "kw, value, msg",
    [
        ("budget", 0.000001, r"budget 1e-06 is below the cheapest backend's cost"),
        ("budget", 0.0, r"budget 0 is below the cheapest backend's cost"),
        ("budget", -1.0, r"budget must be a finite number >= 0, got -1"),
        ("budget", float("nan"), r"budget must be a finite number"),
        ("max_cost", 0.0, r"max_cost 0 is below the cheapest backend's cost"),
        ("max_cost", 1e-9, r"max_cost 1e-09 is below the cheapest backend's cost"),
        ("max_cost", -0.5, r"max_cost must be a finite number >= 0, got -0.5"),
    ],
)
def test_a_budget_or_cost_cap_no_backend_meets_is_a_value_error_naming_the_keyword(kw, value, msg):
    router = make_tiny_router()
    with pytest.raises(ValueError, match=msg):
        router.route("a cat", **{kw: value})
    with pytest.raises(ValueError, match=msg):
        router.route(["a cat", "two dogs"], **{kw: value})
    if value >= 0:  # the check alone, before any prompt is featurized (the server asks it first)
        with pytest.raises(ValueError, match=msg):
            policy_from_keywords(**{kw: value}).check(router.costs)
    # the cheapest backend's own cost is a budget / cap that routes (everything to it)
    cheapest = router.backend_names[int(np.argmin(router.costs))]
    d = router.route(["a cat", "two dogs"], **{kw: float(router.costs.min())})
    assert [x.backend for x in d] == [cheapest, cheapest]


def test_per_prompt_policies_route_a_list_in_pieces_alike():
    rng = np.random.default_rng(5)
    q = 30 + rng.normal(size=(30, 3))
    for p in (
        LambdaPolicy(0.7),
        QualityFloorPolicy(30.2),
        MaxCostPolicy(0.6),
        FixedPolicy("mid").with_backends(["fast", "mid", "slow"]),
    ):
        assert p.per_prompt
        whole = p.order(q, COSTS)
        assert (np.concatenate([p.order(q[:7], COSTS), p.order(q[7:], COSTS)]) == whole).all()
    assert not BudgetPolicy(0.4).per_prompt


def test_fixed():
    p = FixedPolicy("mid").with_backends(["fast", "mid", "slow"])
    assert p.choose(Q, COSTS).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="not one of"):
        FixedPolicy("nope").with_backends(["fast", "mid", "slow"])


def test_keywords_exactly_one():
    assert policy_from_keywords() is None
    assert isinstance(policy_from_keywords(max_cost=1), MaxCostPolicy)
    with pytest.raises(ValueError, match="at most one"):
        policy_from_keywords(lam=1, quality_floor=2)
    with pytest.raises(ValueError, match="at most one"):
        policy_from_keywords(lam=1, policy={"type": "lam", "lam": 2})
    with pytest.raises(Exception, match="did you mean 'max_cost'"):
        policy_from_keywords(policy={"type": "max_costs", "max_cost": 1})


def test_router_api_every_policy_and_its_json():
    r = make_tiny_router()
    p = "two birds on a wire"  # the synthetic table: slow is much better on 'two ...'
    assert r.route(p).backend == "slow" and r.route(p).policy == {"type": "lam", "lam": 0.0}
    assert r.route(p, lam=1000).backend == "fast"
    d = r.route(p, max_cost=0.6)
    assert d.backend == "mid" and d.policy == {"type": "max_cost", "max_cost": 0.6}
    assert d.lam is None and "lambda" not in d.to_dict() and d.to_dict()["policy"]["type"] == "max_cost"
    q = d.predicted_quality
    assert r.route(p, quality_floor=min(q.values()) - 1).backend == "fast"
    assert r.route(p, quality_floor=max(q.values()) + 1).backend == "slow"
    many = r.route(["a cat", p, "three apples"], budget=0.3)
    assert {d.policy["type"] for d in many} == {"budget"} and many[0].lam is not None
    assert np.mean([d.cost[d.backend] for d in many]) <= 0.3
    assert r.route(p, policy=FixedPolicy("mid")).backend == "mid"
    with pytest.raises(ValueError, match="at most one"):
        r.route(p, lam=0.1, max_cost=1)


def test_generate_falls_back_along_the_policy_ranking(tiny_artifact):
    from t2iroute import Router

    r = Router.load(tiny_artifact)

    class Boom:
        name = "mid"

        def generate(self, prompts, *, seeds, **opts):
            raise RuntimeError("out of memory")

    r.backends["mid"] = Boom()
    res = r.generate("two birds on a wire", seed=0, max_cost=0.6)
    assert res.decision.backend == "mid" and res.backend == "fast"  # next in max_cost's ranking
    assert res.fallbacks[0]["backend"] == "mid" and res.diffusion is not None


def test_policy_saved_as_default_and_loaded(tmp_path):
    r = make_tiny_router()
    r.policy = MaxCostPolicy(0.6)
    r.save(tmp_path / "router")
    m = json.loads((tmp_path / "router" / "manifest.json").read_text())
    assert m["format_version"] == 3 and m["policy"] == {"type": "max_cost", "max_cost": 0.6}
    from t2iroute import Router

    again = Router.load(tmp_path / "router")
    assert again.route("two birds on a wire").backend == "mid" and again.lam is None


@pytest.mark.parametrize(
    "args, backend, ptype",
    [
        (["lam=1000"], "fast", "lam"),
        (["max_cost=0.6"], "mid", "max_cost"),
        (["quality_floor=-1000"], "fast", "quality_floor"),
        (["budget=0.2"], "fast", "budget"),
        (["policy={type: fixed, backend: mid}"], "mid", "fixed"),
    ],
)
def test_cli_policies(tiny_artifact, capsys, args, backend, ptype):
    rc = main(["route", "two birds on a wire", f"artifact={tiny_artifact}"] + args)
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backend"] == backend and d["policy"]["type"] == ptype


@pytest.mark.parametrize(
    "args, msg",
    [
        (["lam=1", "max_cost=2"], "at most one"),
        (["max_cost=0.01"], "below the cheapest"),
        (["lam=-1"], "lam"),
        (["policy={type: nope}"], "unknown policy type 'nope'"),
    ],
)
def test_cli_policy_errors(tiny_artifact, capsys, args, msg):
    rc = main(["route", "a cat", f"artifact={tiny_artifact}"] + args)
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_train_default_policies(tmp_path):
    from t2iroute import Router
    from tests.conftest import make_table

    path = tmp_path / "t.csv"
    make_table(n_prompts=150).to_csv(path, index=False)
    base = ["train", "data=custom", f"data.path={path}", "features=[lexical]", "predictor=ridge"]
    assert main(base + ["router.max_cost=0.6", f"out_dir={tmp_path / 'a'}"]) == 0
    assert Router.load(tmp_path / "a" / "router").policy.spec() == {"type": "max_cost", "max_cost": 0.6}
    assert main(base + ["router.mean_quality_floor=30.2", f"out_dir={tmp_path / 'b'}"]) == 0
    pol = Router.load(tmp_path / "b" / "router").policy.spec()
    assert pol["type"] == "lam" and pol["calibrated_from"]["mean_quality_floor"] == 30.2
    assert main(base + ["router.budget=0.3", "router.lam=1", f"out_dir={tmp_path / 'c'}"]) == 2


@pytest.mark.parametrize(
    "override,match",
    [
        ("router.lam=-1", "router.lam=-1"),
        ("router.budget=nan", "router.budget"),
        ("'router.policy={type: nope}'", "unknown policy type 'nope'"),
    ],
)
def test_bad_router_settings_are_refused_before_training(tmp_path, capsys, override, match):
    from t2iroute.cli import main

    from .conftest import make_table

    make_table(n_prompts=60).to_parquet(tmp_path / "t.parquet")
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            "data=custom",
            f"data.path={tmp_path / 't.parquet'}",
            "features=[lexical]",
            "predictor=ridge",
            f"out_dir={out}",
            override.strip("'"),
        ]
    )
    assert rc == 2 and match in capsys.readouterr().err
    assert not (out / "router").exists()


def test_quality_floor_range_check():
    """Issue 23: a floor outside the metric's observed range is refused, naming the range; other
    policies (and an unknown range) accept anything."""
    from t2iroute.router.policy import LambdaPolicy, QualityFloorPolicy, check_quality_floor

    with pytest.raises(ValueError, match=r"quality_floor=5 is outside the metric's observed range \[0, 0.62\]"):
        QualityFloorPolicy(5).check_quality_range((0.0, 0.62))
    with pytest.raises(ValueError, match="observed range"):
        check_quality_floor(-0.01, (0.0, 0.62))
    for ok in (0.0, 0.3, 0.62):
        QualityFloorPolicy(ok).check_quality_range((0.0, 0.62))
    QualityFloorPolicy(5).check_quality_range(None)
    LambdaPolicy(1.0).check_quality_range((0.0, 0.62))
