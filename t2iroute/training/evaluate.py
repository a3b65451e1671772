"""Evaluation of routers on a held-out quality matrix.

Vocabulary (docs/design.md): the router's quality-cost curve over lambda; every single backend as a
point; the oracle (true best backend per prompt, also swept over lambda); the random mix of
backends (their upper convex hull: a coin flip between two backends lands anywhere on the line
between them). Headline figures:

* ``cost_to_match_best_single``: the lowest mean cost at which the router reaches the quality of
  the best single backend, reading the router's curve as its non-decreasing upper convex hull
  (a per-prompt coin flip between two lambdas realizes every point on the line between them, so
  the hull is what the router family achieves; RouterBench reads curves the same way);
* ``cost_saved_pct`` = 100 * (1 - cost_to_match / best_single.cost);
* ``quality_at_best_single_cost`` and ``quality_gain_at_equal_cost`` (minus best single quality);
* ``aiq``: area under the non-decreasing upper convex hull of quality vs cost, divided by the cost
  range of the single backends (RouterBench's AIQ).

Any metric direction: for a lower-is-better metric everything is computed on the negated scores
(so "upper hull" means the better side) and reported in the metric's own direction; gains
(``quality_gain_at_equal_cost``) are always positive when the router is better.
"""

from __future__ import annotations

import numpy as np

from t2iroute.curves import (  # noqa: F401  (re-exported: the benchmark's vocabulary)
    cost_to_reach,
    lambda_grid,
    pareto_frontier,
    quality_at_cost,
    router_curve,
    upper_hull,
)
from t2iroute.router.policy import route_scores


def better_hull(cost, quality, higher_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`upper_hull` on the better side, in the metric's own direction (plots)."""
    sign = 1.0 if higher_is_better else -1.0
    c, q = upper_hull(np.asarray(cost, float), sign * np.asarray(quality, float))
    return c, sign * q


def aiq(cost, quality, c_min: float, c_max: float) -> float:
    """Area under the non-decreasing upper convex hull over [c_min, c_max] / (c_max - c_min).

    Below the hull's cheapest point the curve counts as 0 contribution is avoided by starting the
    range at the cheapest single backend (which every router can reach); above its last point the
    hull stays flat.
    """
    hc, hq = upper_hull(cost, quality)
    if c_max <= c_min:
        return float(hq.max())
    xs = np.linspace(c_min, c_max, 2001)
    ys = np.interp(xs, hc, hq, left=np.nan, right=hq[-1])
    # cheaper than anything the policy can do: count the cheapest reachable quality (flat)
    ys = np.where(np.isnan(ys), hq[0], ys)
    return float(np.trapezoid(ys, xs) / (c_max - c_min))


def summarize(
    q_hat: np.ndarray,
    scores: np.ndarray,
    costs: np.ndarray,
    backends: list[str],
    *,
    lams: np.ndarray | None = None,
    higher_is_better: bool = True,
) -> dict:
    """All headline figures of one routed test set (see module docstring).

    ``q_hat`` and ``scores`` are in the metric's own direction; the figures too, except gains.
    """
    sign = 1.0 if higher_is_better else -1.0
    s = _summarize(sign * np.asarray(q_hat, float), sign * np.asarray(scores, float), costs, backends, lams=lams)
    if sign > 0:
        s["higher_is_better"] = True
        return s
    # back to the metric's own direction: qualities flip, gains stay "positive is better"
    for v in s["backends"].values():
        v["quality"] = -v["quality"]
    s["best_single"]["quality"] = -s["best_single"]["quality"]
    s["oracle"]["quality"] = -s["oracle"]["quality"]
    for part in (s["oracle"], s["router"]):
        for key in ("quality_at_best_single_cost", "aiq", "max_quality"):
            if part.get(key) is not None:
                part[key] = -part[key]
    s["random_mix"]["aiq"] = -s["random_mix"]["aiq"]
    for c in s["curves"].values():
        c["quality"] = [-q for q in c["quality"]]
    s["higher_is_better"] = False
    return s


def _summarize(q_hat, scores, costs, backends, *, lams=None) -> dict:
    """:func:`summarize` on oriented quality (higher is better)."""
    scores = np.asarray(scores, float)
    costs = np.asarray(costs, float)
    n, k = scores.shape
    means = scores.mean(axis=0)
    per_backend = {b: {"quality": float(means[j]), "cost": float(costs[j])} for j, b in enumerate(backends)}
    best = int(np.argmax(means))
    best_q, best_c = float(means[best]), float(costs[best])

    if lams is None:
        lams = lambda_grid(q_hat, costs)
    rc, rq = router_curve(q_hat, scores, costs, lams)
    oc, oq = router_curve(scores, scores, costs, lambda_grid(scores, costs, 400))
    c_min, c_max = float(costs.min()), float(costs.max())

    def figures(cc, qq):
        ctm = cost_to_reach(cc, qq, best_q)
        qab = quality_at_cost(cc, qq, best_c)
        return {
            "quality_at_best_single_cost": qab,
            "quality_gain_at_equal_cost": None if qab is None else qab - best_q,
            "cost_to_match_best_single": ctm,
            "cost_saved_pct": None if ctm is None else 100.0 * (1.0 - ctm / best_c),
            "aiq": aiq(cc, qq, c_min, c_max),
            "max_quality": float(qq.max()),  # the best quality on the curve (own direction in output)
        }

    rows = np.arange(n)
    oracle_choice = route_scores(scores, costs, 0.0)
    return {
        "n_test": int(n),
        "backends": per_backend,
        "best_single": {"name": backends[best], "quality": best_q, "cost": best_c},
        "oracle": {
            "quality": float(scores[rows, oracle_choice].mean()),
            "cost": float(costs[oracle_choice].mean()),
            **figures(oc, oq),
        },
        "random_mix": {"aiq": aiq(costs, means, c_min, c_max)},
        "router": figures(rc, rq),
        "curves": {
            "router": {"lambda": lams.tolist(), "cost": rc.tolist(), "quality": rq.tolist()},
            "oracle": {"cost": oc.tolist(), "quality": oq.tolist()},
        },
    }
