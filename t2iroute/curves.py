"""Quality-cost curves of a router over lambda, and reading them (pure numpy).

Shared by the benchmark (:mod:`t2iroute.training.evaluate`) and by predictors that judge
candidates the way a router is judged (:mod:`t2iroute.predictors.auto`), which must not import
training code. Quality here is oriented: higher is better.
"""

from __future__ import annotations

import numpy as np

from t2iroute.rules import route_scores


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
