"""Evaluation of routers on a held-out quality matrix.

Vocabulary (DESIGN.md): the router's quality-cost curve over lambda; every single backend as a
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

from t2iroute.router.policy import route_scores


def lambda_grid(q_hat: np.ndarray, costs: np.ndarray, n: int = 200) -> np.ndarray:
    """Dense grid of lambdas from 0 to the value where the cheapest backend always wins.

    Includes every breakpoint lambda at which a prompt's choice can change is not needed for a
    smooth curve; a log-spaced grid plus 0 spans quality-max to cost-min.
    """
    dq = np.ptp(q_hat, axis=1).max() if q_hat.size else 1.0
    dc = np.min(np.diff(np.unique(costs))) if len(np.unique(costs)) > 1 else 1.0
    lam_max = max(dq / max(dc, 1e-12), 1e-9) * 1.01
    lam_min = lam_max * 1e-5
    return np.concatenate([[0.0], np.geomspace(lam_min, lam_max, n - 1)])


def router_curve(q_hat, scores, costs, lams) -> tuple[np.ndarray, np.ndarray]:
    """(mean cost, mean true quality) of the routed choice at each lambda."""
    n = len(scores)
    qs, cs = np.empty(len(lams)), np.empty(len(lams))
    rows = np.arange(n)
    for j, lam in enumerate(lams):
        choice = route_scores(q_hat, costs, lam)
        qs[j] = scores[rows, choice].mean()
        cs[j] = costs[choice].mean()
    return cs, qs


def pareto_frontier(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points not dominated (no other point is cheaper-or-equal and better), sorted by cost."""
    order = np.lexsort((-np.asarray(quality), np.asarray(cost)))
    c, q = np.asarray(cost)[order], np.asarray(quality)[order]
    keep_c, keep_q, best = [], [], -np.inf
    for ci, qi in zip(c, q):
        if qi > best:
            if keep_c and ci == keep_c[-1]:
                keep_q[-1] = qi
            else:
                keep_c.append(ci)
                keep_q.append(qi)
            best = qi
    return np.array(keep_c), np.array(keep_q)


def upper_hull(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing upper convex hull (what random mixing of the points can reach)."""
    c, q = pareto_frontier(cost, quality)
    hull: list[tuple[float, float]] = []
    for p in zip(c, q):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop the middle point if it lies on or below the chord
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    hc, hq = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
    return hc, hq


def better_hull(cost, quality, higher_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`upper_hull` on the better side, in the metric's own direction (plots)."""
    sign = 1.0 if higher_is_better else -1.0
    c, q = upper_hull(np.asarray(cost, float), sign * np.asarray(quality, float))
    return c, sign * q


def cost_to_reach(cost, quality, target: float) -> float | None:
    """Lowest cost on the upper hull (linearly interpolated) whose quality reaches target."""
    c, q = upper_hull(cost, quality)
    tol = 1e-9 * max(1.0, abs(target))  # means of the same numbers summed in another order
    if len(q) == 0 or q[-1] < target - tol:
        return None
    target = min(target, q[-1])
    i = int(np.searchsorted(q, target))  # q is increasing on the frontier
    if i == 0:
        return float(c[0])
    c0, c1, q0, q1 = c[i - 1], c[i], q[i - 1], q[i]
    return float(c0 + (target - q0) * (c1 - c0) / (q1 - q0))


def quality_at_cost(cost, quality, budget: float) -> float | None:
    """Best quality on the upper hull (linearly interpolated) at mean cost <= budget."""
    c, q = upper_hull(cost, quality)
    if len(c) == 0 or budget < c[0]:
        return None
    if budget >= c[-1]:
        return float(q[-1])
    return float(np.interp(budget, c, q))


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
