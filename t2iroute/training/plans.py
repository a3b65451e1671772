"""Sweep plans: which (prompt, backend) cells a sweep generates for a share of a full sweep's cost.

A full sweep runs every backend on every training prompt. A plan spends ``share`` of that cost:

- ``prompts``: full rows on a random subset of the prompts (the honest baseline);
- ``cells``: random cells, every prompt a candidate;
- ``active``: rounds. A seed design (full rows on a few random prompts), then, each round, a
  committee of shared models (``mf``, fitted on bootstrap resamples of what was observed so far)
  predicts every prompt and prices each open cell: the chance that its backend is chosen times the
  committee's disagreement about the choice, per unit of its cost, over the lambdas where the
  router spends at most ``max_cost_ratio`` x the best single backend's cost. The round's budget
  goes to the backends in proportion to the mean worth of their open cells, and each backend's
  cells to prompts drawn half at random, half by worth (a representative sample: picking single
  cells by worth alone gave biased samples that lost to ``prompts``). Only the cells a plan chose
  are seen by it.

:func:`plan_cells` is the one planner; :func:`simulate` applies it to a complete table's training
split (what ``t2iroute bench sweep.plan=... sweep.share=...`` reports) and ``t2iroute sweep
plan=...`` runs it for real.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from t2iroute.errors import ConfigError
from t2iroute.rules import route_scores

log = logging.getLogger(__name__)

PLANS = ("full", "prompts", "cells", "active")


def check_plan(plan, share, *, prefix: str = "") -> tuple[str, float]:
    """``plan`` one of :data:`PLANS`, ``share`` a number in (0, 1]; errors name the keys."""
    if plan not in PLANS:
        raise ConfigError(f"{prefix}plan={plan!r}: use one of {list(PLANS)}")
    try:
        s = float(share)
    except (TypeError, ValueError):
        s = float("nan")
    if not 0.0 < s <= 1.0:
        raise ConfigError(f"{prefix}share={share!r}: a share of the full sweep's cost in (0, 1]")
    return plan, s


@dataclass
class ActiveSettings:
    """The active plan's knobs: ``rounds`` after the seed design; ``seed_rows``: the share of
    prompts given full rows at the start (at least 20 prompts); ``committee``: models per round;
    ``rank``/``alpha``: of the committee's shared models; ``n_lambdas``: the lambda grid;
    ``max_cost_ratio``: the lambdas of interest spend at most this x the best single backend's
    cost; ``within``: how a backend's cells are spread over prompts (``mixed``: half at random,
    half by worth; ``random``)."""

    rounds: int = 4
    seed_rows: float = 0.03
    committee: int = 4
    rank: int = 3
    alpha: float = 1000.0
    n_lambdas: int = 24
    max_cost_ratio: float = 1.25
    within: str = "mixed"


def plan_cells(
    plan: str,
    share: float,
    costs: np.ndarray,
    n_prompts: int,
    *,
    seed: int = 0,
    observe=None,
    X: np.ndarray | None = None,
    have: np.ndarray | None = None,
    settings: ActiveSettings | None = None,
) -> np.ndarray:
    """The (n_prompts, k) bool mask of the cells ``plan`` generates for ``share`` of the full
    sweep's cost (``n_prompts * sum(costs)``).

    ``active`` needs ``X`` (the prompts' features) and ``observe(mask) -> (n, k) scores`` (NaN
    outside ``mask``): the plan asks for the cells it chose, round by round, and sees nothing else.
    ``have``: cells already generated (a resumed sweep): they count against the budget and are
    never chosen again.
    """
    plan, share = check_plan(plan, share)
    costs = np.asarray(costs, dtype=np.float64)
    k = len(costs)
    rng = np.random.default_rng(seed)
    budget = share * n_prompts * float(costs.sum())
    mask = np.zeros((n_prompts, k), bool) if have is None else np.asarray(have, bool).copy()
    if plan == "full":
        return np.ones((n_prompts, k), bool)
    if plan == "prompts":  # full rows on random prompts (completing any partly generated first in line)
        left = budget - float((mask * costs[None, :]).sum())
        for p in rng.permutation(n_prompts):
            c = float(costs[~mask[p]].sum())
            if c > left + 1e-9:
                break
            mask[p], left = True, left - c
        return mask
    if plan == "cells":
        left = budget - float((mask * costs[None, :]).sum())
        free = rng.permutation(np.flatnonzero(~mask.ravel()))
        chosen = free[np.cumsum(costs[free % k]) <= left + 1e-9]
        mask.flat[chosen] = True
        return mask
    # active
    if X is None or observe is None:
        raise ValueError("the active plan needs the prompts' features (X) and observe()")
    st = settings or ActiveSettings()

    def spent() -> float:
        return float((mask * costs[None, :]).sum())

    # seed design: full rows on a few random prompts
    mask[seed_design_rows(n_prompts, share, rng, st)] = True
    for r in range(int(st.rounds)):
        left = budget - spent()
        if left < costs.min():
            break
        value = _cell_values(X, observe(mask), costs, st, rng)
        _spend_round(mask, value, costs, left / (int(st.rounds) - r), rng, st.within)
        log.info(
            "active plan: round %d, %.1f%% of the full sweep spent", r + 1, 100 * spent() / max(budget / share, 1e-12)
        )
    # what the rounds left (rounding): the cheapest cells still worth something, at random
    left = budget - spent()
    for flat in rng.permutation(np.flatnonzero(~mask.ravel())):
        c = costs[flat % k]
        if c <= left:
            mask.flat[flat] = True
            left -= c
    return mask


def seed_design_rows(n_prompts: int, share: float, rng, settings: ActiveSettings | None = None) -> np.ndarray:
    """The prompts the active plan runs every backend on first (``rng``: a fresh generator of the
    plan's seed, as :func:`plan_cells` draws them first): ``seed_rows`` of the prompts, at least 20,
    at most what half the budget buys."""
    st = settings or ActiveSettings()
    n_seed = min(
        n_prompts, max(20, int(round(st.seed_rows * n_prompts))), int(np.floor(0.5 * share * n_prompts + 1e-9))
    )
    return rng.permutation(n_prompts)[:n_seed]


def _spend_round(mask, value, costs, round_budget: float, rng, within: str = "random") -> None:
    """Spend ``round_budget`` on open cells: each backend gets a share of it in proportion to the
    mean worth of its open cells, and its cells go to prompts drawn at random (``within="random"``:
    a representative sample, which the learners need) or with chances leaning to the worth of each
    cell (``"mixed"``: half uniform, half in proportion to worth)."""
    k = len(costs)
    open_ = ~mask
    worth = np.where(open_ & np.isfinite(value), np.maximum(value, 0.0), 0.0)
    per_backend = np.array([worth[open_[:, j], j].mean() if open_[:, j].any() else 0.0 for j in range(k)])
    if per_backend.sum() <= 0:
        per_backend = open_.any(axis=0).astype(float)
        if per_backend.sum() <= 0:
            return
    carry = 0.0
    for j in np.argsort(-per_backend, kind="stable"):
        cash = round_budget * per_backend[j] / per_backend.sum() + carry
        cand = np.flatnonzero(open_[:, j])
        take = min(len(cand), int((cash + 1e-9) // costs[j]))
        if take > 0:
            if within == "mixed" and worth[cand, j].sum() > 0:
                w = worth[cand, j] / worth[cand, j].sum()
                p = 0.5 / len(cand) + 0.5 * w
                pick = rng.choice(cand, size=take, replace=False, p=p / p.sum())
            else:
                pick = rng.permutation(cand)[:take]
            mask[pick, j] = True
        carry = cash - take * costs[j]


def _cell_values(X, Y, costs, st: ActiveSettings, rng) -> np.ndarray:
    """Each cell's worth per unit cost: the chance its backend is chosen times the committee's
    disagreement, averaged over a lambda grid, plus a little of the committee's spread (so that
    ties break towards what the models know least)."""
    from t2iroute.curves import lambda_grid
    from t2iroute.predictors import build_predictor

    n, k = Y.shape
    seen = np.flatnonzero(np.isfinite(Y).any(axis=1))
    preds = []
    for _ in range(int(st.committee)):
        boot = rng.choice(seen, size=len(seen), replace=True)
        Yb = Y[boot]
        if (~np.isfinite(Yb)).all(axis=0).any():  # a backend absent from the resample: use every row
            boot, Yb = seen, Y[seen]
        model = build_predictor({"type": "mf", "rank": int(st.rank), "alpha": float(st.alpha)})
        preds.append(np.asarray(model.fit(X[boot], Yb).predict(X)).reshape(n, k))
    P = np.stack(preds)  # (E, n, k)
    mean = P.mean(axis=0)
    lams = lambda_grid(mean, costs, 4 * int(st.n_lambdas))
    # the lambdas of interest: the router spends at most max_cost_ratio x the best single backend's
    # cost there (cost saved at equal quality and quality gained at equal cost both live there)
    best_cost = float(costs[int(np.argmax(mean.mean(axis=0)))])
    spend = np.array([costs[route_scores(mean, costs, float(lam))].mean() for lam in lams])
    keep = spend <= st.max_cost_ratio * best_cost + 1e-12
    if keep.any():
        lams = lams[keep]
    lams = lams[np.unique(np.linspace(0, len(lams) - 1, int(st.n_lambdas)).round().astype(int))]
    chosen_share = np.zeros((n, k))
    disagreement_mass = np.zeros((n, k))
    for lam in lams:
        votes = np.zeros((n, k))
        for e in range(len(P)):
            votes[np.arange(n), route_scores(P[e], costs, float(lam))] += 1.0
        votes /= len(P)
        d = 1.0 - votes.max(axis=1, keepdims=True)
        chosen_share += votes
        disagreement_mass += votes * d
    spread = P.std(axis=0)
    value = (disagreement_mass / len(lams)) + 1e-3 * (chosen_share / len(lams)) * spread
    return value / costs[None, :]


def simulate(plan: str, share: float, scores: np.ndarray, costs: np.ndarray, *, X=None, seed: int = 0, settings=None):
    """The cells ``plan`` would have generated on a complete table's ``scores`` (n, k) and those
    scores masked to them (NaN elsewhere): (mask, masked scores)."""
    scores = np.asarray(scores, dtype=np.float64)

    def observe(mask):
        return np.where(mask, scores, np.nan)

    mask = plan_cells(plan, share, costs, len(scores), seed=seed, observe=observe, X=X, settings=settings)
    return mask, observe(mask)
