"""A quality prior: a router with no quality table, and a learned correction that grows with data.

The adaptive optimizer this project descends from needed no training data: an LLM's complexity
estimate chose a step budget. The prior says the same in numbers. A backend is a step budget
``s`` (its config's ``steps``, or the ``steps`` it is configured as worth) with a ceiling ``c``
(1 for the family's full quality); a prompt of complexity ``x`` in 1-5 converges with a time
constant ``tau(x)`` steps, from ``tau[0]`` (x = 1) to ``tau[1]`` (x = 5)::

    prior[p, b] = c_b * (1 - exp(-s_b / tau(x_p)))

so predicted quality rises with steps and saturates sooner for simpler prompts. It is on a 0-1
scale: "the share of the converged quality". Complexity comes from the LLM featurizer's
``expected_complexity`` column when one is configured (``complexity_column``), else from the
lexical featurizer's counts (``lexical_columns``, the LLM featurizer's own fallback estimate,
:mod:`t2iroute.complexity`); training sets both from the featurizer.

Fitted on a table (any pattern of missing cells), the prior is mapped to the metric's scale
(``a + b * prior``: ``b`` matches the spread between backends on a prompt, ``a`` the mean, so
the data sets the scale but not the order) and a learned model (``learned``, ``mf`` by default)
fits what the prior gets wrong; its correction enters with weight ``n / (n + strength)`` for
``n`` prompts with observed cells, so a few cells nudge the prior and many replace it.
"""

from __future__ import annotations

import numpy as np

from t2iroute import complexity as cx
from t2iroute.predictors.base import (
    QualityPredictor,
    StateError,
    build_predictor,
    load_nested,
    state_number,
)

COMPLEXITY_RANGE = cx.RANGE


class PriorPredictor(QualityPredictor):
    """``steps``/``ceiling``: one per backend (set by ``t2iroute train``); ``tau``: convergence
    steps of the simplest and the most complex prompt; ``complexity_column``: the feature column of
    the LLM's expected complexity, else ``lexical_columns``: the columns of the lexical counts the
    estimate reads (:data:`t2iroute.complexity.COUNTS`, in that order); ``learned``: the
    correction's predictor spec; ``strength``: the prior's worth in prompts."""

    type_name = "prior"
    handles_missing = True

    def __init__(
        self,
        steps: list[float] | None = None,
        ceiling: list[float] | None = None,
        tau: tuple[float, float] = (3.0, 12.0),
        complexity_column: int | None = None,
        lexical_columns: list[int] | None = None,
        learned: dict | None = None,
        strength: float = 50.0,
    ):
        self.steps = steps
        self.ceiling = ceiling
        self.tau = tau
        self.complexity_column = complexity_column
        self.lexical_columns = lexical_columns
        self.learned = learned
        self.strength = strength

    # -- the prior itself ----------------------------------------------------------------------
    def _checked(self, k: int | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
        steps = self.steps
        if steps is None or not len(steps):
            raise ValueError("prior: steps (one per backend) are required")
        s = np.asarray([state_number(v, "prior param 'steps'", 1e-6, 1e6) for v in steps])
        if k is not None and len(s) != k:
            raise StateError("prior param 'steps'", f"has {len(s)} entries for {k} backends")
        c = np.ones(len(s)) if self.ceiling is None else np.asarray(self.ceiling, dtype=np.float64)
        if c.shape != s.shape:
            raise StateError("prior param 'ceiling'", f"has {c.size} entries for {len(s)} backends")
        c = np.asarray([state_number(v, "prior param 'ceiling'", 0.0, 1.0) for v in c])
        if not isinstance(self.tau, (list, tuple)) or len(self.tau) != 2:
            raise StateError("prior param 'tau'", f"must be [simple, complex] steps, got {self.tau!r:.60}")
        t0, t1 = (state_number(v, "prior param 'tau'", 1e-3, 1e6) for v in self.tau)
        return s, c, t0, t1

    def _check_columns(self) -> None:
        n = self.n_features_in_

        def column(v) -> bool:
            return not isinstance(v, bool) and isinstance(v, int) and 0 <= v < n

        col, lex = self.complexity_column, self.lexical_columns
        if col is not None and not column(col):
            raise StateError("prior param 'complexity_column'", f"must be a column below {n}, got {col!r:.40}")
        if col is None:
            ok = isinstance(lex, (list, tuple)) and len(lex) == len(cx.COUNTS) and all(column(v) for v in lex)
            if not ok:
                raise StateError(
                    "prior param 'lexical_columns'", f"must be {len(cx.COUNTS)} columns below {n}, got {lex!r:.60}"
                )

    def complexity(self, X: np.ndarray, texts=None) -> np.ndarray:
        """Each prompt's complexity on the 1-5 scale."""
        X = np.asarray(X, np.float64)
        if self.complexity_column is not None:
            return np.clip(X[:, int(self.complexity_column)], *COMPLEXITY_RANGE)
        cols = self.lexical_columns
        if cols is None:
            raise ValueError("prior: complexity_column or lexical_columns is required (features with llm or lexical)")
        return np.asarray([cx.estimate(dict(zip(cx.COUNTS, row)))["complexity"] for row in X[:, list(cols)]])

    def prior(self, X: np.ndarray, texts=None) -> np.ndarray:
        """The (n, k) prior on its 0-1 scale."""
        s, c, t0, t1 = self._checked()
        lo, hi = COMPLEXITY_RANGE
        x = (self.complexity(X, texts) - lo) / (hi - lo)
        tau = t0 + (t1 - t0) * x
        return c[None, :] * (1.0 - np.exp(-s[None, :] / tau[:, None]))

    def fit_without_table(self, n_features: int) -> "PriorPredictor":
        """Ready to predict the prior itself (no table): quality on the prior's 0-1 scale."""
        s, _, _, _ = self._checked()
        self.n_features_in_, self.n_outputs_, self.one_d_ = int(n_features), len(s), False
        self._check_columns()
        self.mean_model_ = None
        self.a_, self.b_, self.weight_, self.learned_ = 0.0, 1.0, 0.0, None
        return self

    # -- fitted on cells -----------------------------------------------------------------------
    def _fit_core(self, X, Y, texts=None):
        self._checked(Y.shape[1])
        self._check_columns()
        P = self.prior(X, texts)
        obs = np.isfinite(Y)
        a, b = _scale(P, Y, obs)
        R = np.where(obs, Y - (a + b * P), np.nan)
        n = int(obs.any(axis=1).sum())
        self.a_, self.b_ = a, b
        self.weight_ = float(n / (n + max(float(self.strength), 0.0)))
        spec = dict(self.learned or {"type": "mf", "rank": 2})
        self.learned_ = build_predictor(spec).fit(X, R, texts=texts) if self.weight_ > 0 else None

    def _predict_core(self, X, texts=None):
        P = self.a_ + self.b_ * self.prior(X, texts)
        if self.learned_ is not None:
            P = P + self.weight_ * np.asarray(self.learned_.predict(X, texts=texts)).reshape(P.shape)
        return P

    def _core_state(self):
        meta = {"a": self.a_, "b": self.b_, "weight": self.weight_}
        arrays, texts = {}, {}
        if self.learned_ is not None:
            m, a, t = self.learned_.get_state()
            meta["learned"] = m
            arrays.update({f"learned/{k}": v for k, v in a.items()})
            texts.update({f"learned/{k}": v for k, v in t.items()})
        return meta, arrays, texts

    def _set_core_state(self, meta, arrays, texts):
        self._checked(self.n_outputs_)
        self._check_columns()
        self.a_ = state_number(meta.get("a"), "predictor meta: 'a'")
        self.b_ = state_number(meta.get("b"), "predictor meta: 'b'")
        self.weight_ = state_number(meta.get("weight"), "predictor meta: 'weight'", 0.0, 1.0)
        self.learned_ = None
        if "learned" in meta:
            lp = load_nested("learned", meta["learned"], arrays, texts)
            if (lp.n_features_in_, lp.n_outputs_) != (self.n_features_in_, self.n_outputs_):
                raise StateError("predictor meta: 'learned'", "does not take the prior's features to its backends")
            self.learned_ = lp


def _scale(P: np.ndarray, Y: np.ndarray, obs: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` mapping the prior ``P`` onto the metric of ``Y`` over the observed cells: ``b``
    the ratio of their spreads between backends on the same prompt (prompts with two or more
    cells; else the overall spreads), ``a`` matching the means. Never negative: the data sets
    the prior's scale, the learned correction (not ``b``) may overturn its order."""
    two = obs.sum(axis=1) >= 2

    def spread(M, rows):
        Z = np.where(obs[rows], M[rows], np.nan)
        return float(np.sqrt(np.nanmean((Z - np.nanmean(Z, axis=1, keepdims=True)) ** 2)))

    if two.any():
        sy, sp = spread(Y, two), spread(P, two)
    else:
        sy, sp = float(Y[obs].std()), float(P[obs].std())
    b = sy / sp if sp > 1e-12 else 0.0
    return float(Y[obs].mean() - b * P[obs].mean()), float(b)
