import numpy as np
import pytest

from t2iroute.router.policy import route_scores
from t2iroute.training.evaluate import (
    aiq,
    cost_to_reach,
    pareto_frontier,
    quality_at_cost,
    summarize,
    upper_hull,
)


def test_pareto_and_hull_by_hand():
    c = np.array([1.0, 2.0, 3.0, 2.0, 4.0])
    q = np.array([1.0, 1.2, 3.0, 0.5, 2.0])
    pc, pq = pareto_frontier(c, q)
    assert pc.tolist() == [1.0, 2.0, 3.0] and pq.tolist() == [1.0, 1.2, 3.0]
    hc, hq = upper_hull(c, q)  # (2, 1.2) lies below the chord (1,1)-(3,3)
    assert hc.tolist() == [1.0, 3.0] and hq.tolist() == [1.0, 3.0]


def test_cost_to_reach_and_quality_at_cost_interpolate_on_hull():
    c, q = np.array([1.0, 3.0]), np.array([1.0, 3.0])
    assert cost_to_reach(c, q, 2.0) == pytest.approx(2.0)
    assert cost_to_reach(c, q, 0.5) == pytest.approx(1.0)
    assert cost_to_reach(c, q, 3.5) is None
    assert quality_at_cost(c, q, 2.5) == pytest.approx(2.5)
    assert quality_at_cost(c, q, 10) == pytest.approx(3.0)
    assert quality_at_cost(c, q, 0.5) is None


def test_aiq_by_hand():
    # hull from (0,0) to (1,1) then flat to 2: area = 0.5 + 1 = 1.5 over range 2 -> 0.75
    assert aiq(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.0, 2.0) == pytest.approx(0.75, abs=1e-6)
    # a single point: flat line
    assert aiq(np.array([1.0]), np.array([5.0]), 1.0, 3.0) == pytest.approx(5.0)


def test_route_scores_ties_go_cheaper():
    q = np.array([[1.0, 1.0], [0.0, 2.0]])
    assert route_scores(q, np.array([2.0, 1.0]), 0.0).tolist() == [1, 1]
    assert route_scores(q, np.array([1.0, 2.0]), 0.0).tolist() == [0, 1]
    assert route_scores(q, np.array([1.0, 2.0]), 5.0).tolist() == [0, 0]


def test_summarize_two_backend_case_by_hand():
    # cheap backend (cost 1) and expensive (cost 3). Expensive is better by 2 on half the prompts.
    scores = np.array([[10.0, 12.0], [10.0, 12.0], [10.0, 10.0], [10.0, 10.0]])
    costs = np.array([1.0, 3.0])
    s = summarize(scores.copy(), scores, costs, ["cheap", "exp"])  # perfect predictions
    assert s["best_single"] == {"name": "exp", "quality": 11.0, "cost": 3.0}
    # oracle with ties to the cheaper: prompts 3,4 go cheap -> quality 11 at cost 2
    assert s["oracle"]["quality"] == pytest.approx(11.0) and s["oracle"]["cost"] == pytest.approx(2.0)
    r = s["router"]
    assert r["cost_to_match_best_single"] == pytest.approx(2.0)
    assert r["cost_saved_pct"] == pytest.approx(100 / 3)
    assert r["quality_at_best_single_cost"] == pytest.approx(11.0)
    assert r["quality_gain_at_equal_cost"] == pytest.approx(0.0)
    # hull (1,10)->(2,11)->flat: area over [1,3] = 10.5 + 11 = 21.5, /2
    assert r["aiq"] == pytest.approx(10.75, abs=1e-3)
    # random mix of backends: the straight line (1,10)-(3,11): mean 10.5
    assert s["random_mix"]["aiq"] == pytest.approx(10.5, abs=1e-3)


def test_summarize_uninformative_router_saves_nothing():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(500, 2)) + [0.0, 0.5]
    costs = np.array([1.0, 2.0])
    q_hat = np.tile([0.0, 0.5], (500, 1))  # knows only the means
    s = summarize(q_hat, scores, costs, ["a", "b"])
    # it can only mix the two backends, which is the straight line: no saving at equal quality
    assert s["router"]["cost_saved_pct"] == pytest.approx(0.0, abs=1e-6)
