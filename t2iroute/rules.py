"""The routing decision rules (pure numpy): what the router's policies decide with, and what
quality-cost curves and ``predictor=auto``'s routing objective judge with.

Below every layer, so that the runtime (:mod:`t2iroute.router.policy`), the curves
(:mod:`t2iroute.curves`) and the predictors (:mod:`t2iroute.predictors.auto`) share them without
importing each other; :mod:`t2iroute.router.policy` re-exports both (their documented home).
"""

from __future__ import annotations

import numpy as np


def route_scores(q_hat: np.ndarray, costs: np.ndarray, lam: float) -> np.ndarray:
    """argmax_k q_hat[i, k] - lam * c_k; ties go to the cheaper backend."""
    util = np.asarray(q_hat, float) - lam * np.asarray(costs, float)[None, :]
    order = np.argsort(costs, kind="stable")
    return order[np.argmax(util[:, order], axis=1)]


def anchor_quality(q_oriented: np.ndarray, anchor: int) -> np.ndarray:
    """Oriented quality with the ``anchor`` backend raised to each row's best prediction (plus a
    hair): every lambda rule then routes to the anchor at lambda 0 and leaves it only for a
    backend predicted to be as good, or cheaper at a predicted loss that lambda pays for.

    Anchored on the best single backend, the router's family of policies contains that backend
    itself, so routing never has to lose to it; the ordering of prompts by predicted loss, which
    is what cost savings come from, is unchanged.
    """
    q = np.array(q_oriented, dtype=float, copy=True)
    if q.size:
        q[:, anchor] = q.max(axis=1) + 1e-9 * (1.0 + float(np.abs(q).max()))
    return q
