"""A predictor that picks itself: cross-validation on the routing objective.

``AutoPredictor`` fits every candidate (kNN of several sizes, ridge, LightGBM, the stack) on K-1
folds of the training rows and predicts the held-out fold. The pooled out-of-fold predictions are
scored the way a router is judged, not by regression error: sweep lambda, read the curve's upper
convex hull, and take the cost saved at the best single backend's quality (then the quality
gained at its cost). Each candidate is also tried *shrunk* towards the backends' mean quality
(``q = m + alpha * (q_hat - m)``): alpha = 0 routes like the best single backend exactly, so a
candidate must beat that out of fold to be chosen. If none does, ``beats_best_single_cv_`` is
False and the trained router's default policy routes to the best single backend.

Candidates too big for the table are skipped (``min_rows``), and so are candidates whose feature
block is not configured. The scores of every candidate and the choice are kept in
``selection_`` (written to the artifact's manifest and to ``summary.json``).
"""

from __future__ import annotations

import copy
import itertools
import logging
import time

import numpy as np

from t2iroute.curves import cost_to_reach, lambda_grid, quality_at_cost, router_curve
from t2iroute.predictors.base import (
    QualityPredictor,
    StateError,
    build_predictor,
    load_nested,
    state_array,
    backend_means,
    mf_fill,
    state_number,
)

# the candidates and their spec resolution live below base (base's resolve_blocks uses them);
# DEFAULT_CANDIDATES, candidate_spec and resolve_candidates are imported from here as ever
from t2iroute.predictors.candidates import (  # noqa: F401 -- resolve_candidates: re-exported
    DEFAULT_CANDIDATES,
    _drop_blocks,
    candidate_spec,
    resolve_candidates,
)
from t2iroute.rules import anchor_quality

log = logging.getLogger(__name__)


def routing_figures(q_hat: np.ndarray, scores: np.ndarray, costs: np.ndarray, n_lambdas: int = 100) -> dict:
    """Cost saved at equal quality and quality gain at equal cost of routing ``q_hat`` over a
    lambda grid, judged on ``scores`` (both oriented: higher is better)."""
    q_hat = np.asarray(q_hat, float)
    scores = np.asarray(scores, float)
    costs = np.asarray(costs, float)
    means = scores.mean(axis=0)
    best = int(np.argmax(means))
    best_q, best_c = float(means[best]), float(costs[best])
    cs, qs = router_curve(q_hat, scores, costs, lambda_grid(q_hat, costs, n_lambdas))
    ctm = cost_to_reach(cs, qs, best_q)
    qab = quality_at_cost(cs, qs, best_c)
    return {
        "cost_saved_pct": None if ctm is None else 100.0 * (1.0 - ctm / best_c),
        "quality_gain_at_equal_cost": None if qab is None else qab - best_q,
    }


def _objective(fig: dict) -> tuple[float, float]:
    saved = fig["cost_saved_pct"]
    gain = fig["quality_gain_at_equal_cost"]
    return (-1e9 if saved is None else saved, -1e9 if gain is None else gain)


def _route_ms(model, X: np.ndarray, texts) -> float:
    """Milliseconds per prompt that ``model`` takes to predict the batch ``X`` (best of 3)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        model.predict(X, texts=texts)
        best = min(best, time.perf_counter() - t0)
    return 1000.0 * best / max(len(X), 1)


class AutoPredictor(QualityPredictor):
    """Chooses among ``candidates`` (default: :data:`DEFAULT_CANDIDATES`) and shrinkage levels
    ``shrink`` by ``n_folds``-fold cross-validation on the routing objective (default 5 folds, 3
    from 2,000 rows; repeated ``n_repeats`` times with other folds, default 5 below 1,000 rows,
    else 1). Candidates apply between their ``min_rows`` and ``max_rows``. A candidate must
    save at least ``min_cost_saved_pct`` out of fold to count as beating the best single backend.

    Speed counts only when asked: ``max_route_ms`` (milliseconds per prompt) leaves out every
    candidate whose predictions take longer per prompt, measured on a batch of up to 1,000
    held-out prompts on the training machine (the featurizer's time is not included: it is the
    same for every candidate). Each candidate's ``route_ms`` is in ``selection_`` either way.

    ``fit(X, Y, texts=None, costs=..., higher_is_better=True)``: the backend costs are needed to
    judge routing (without them every backend counts as equally expensive and the objective is
    the quality at lambda 0).
    """

    type_name = "auto"
    handles_missing = True  # candidates fit on every observed cell; routing is judged on complete rows
    #: fewer complete-row prompts than this and the routing objective is not judged: best single
    MIN_COMPLETE_ROWS = 20

    def __init__(
        self,
        candidates: list | None = None,
        n_folds: int | None = None,
        n_repeats: int | None = None,
        shrink: tuple = (0.0, 0.25, 0.5, 0.75, 1.0),
        min_cost_saved_pct: float = 2.0,
        seed: int = 0,
        relative: bool = False,
        max_route_ms: float | None = None,
    ):
        if max_route_ms is not None and (
            isinstance(max_route_ms, bool)
            or not isinstance(max_route_ms, (int, float))
            or not 0 < float(max_route_ms) < float("inf")
        ):
            raise ValueError(
                f"auto predictor: max_route_ms must be a positive number of milliseconds, got {max_route_ms!r}"
            )
        self.candidates = candidates
        self.n_folds = n_folds
        self.n_repeats = n_repeats
        self.shrink = shrink
        self.min_cost_saved_pct = min_cost_saved_pct
        self.seed = seed
        self.relative = relative  # the chosen candidate handles its own targets
        self.max_route_ms = None if max_route_ms is None else float(max_route_ms)

    @property
    def needs_texts(self):
        return bool(getattr(self, "chosen_", None) is not None and self.chosen_.needs_texts)

    def _candidates(self, n_rows: int, missing: bool = False) -> list[dict]:
        """The candidates for ``n_rows`` training rows; ``missing_only`` ones where cells are missing."""
        out = []
        for c in self.candidates if self.candidates is not None else DEFAULT_CANDIDATES:
            c = dict(c)
            if n_rows < int(c.get("min_rows", 0)) or n_rows > int(c.get("max_rows") or n_rows):
                continue
            if c.get("missing_only") and not missing:
                continue
            sp = _drop_blocks(candidate_spec(c))  # blocks not resolved by resolve_blocks: every column
            out.append({"name": str(c.get("name") or sp.get("type")), "spec": sp})
        if not out:
            raise ValueError(f"auto predictor: no candidate fits a table of {n_rows} training rows")
        return out

    #: below this many training rows cross-validation is too noisy to trust an unanchored router
    ANCHOR_BELOW_ROWS = 2000

    def fit(self, X, y, texts=None, costs=None, higher_is_better: bool = True, anchor: bool | str = False):
        """``anchor``: judge candidates as an anchored router routes (see
        :func:`t2iroute.router.policy.anchor_quality`), anchored on each fold's best single backend;
        ``"auto"``: anchored below :attr:`ANCHOR_BELOW_ROWS` rows, else both ways, and the
        cross-validation decides (``anchored_``)."""
        self._fit_costs = None if costs is None else np.asarray(costs, float)
        self._fit_sign = 1.0 if higher_is_better else -1.0
        if anchor not in (True, False, "auto"):
            raise ValueError(f"anchor must be true, false or 'auto', got {anchor!r}")
        self._fit_anchor = anchor
        try:
            return super().fit(X, y, texts=texts)
        finally:
            del self._fit_costs, self._fit_sign, self._fit_anchor

    def _fit_core(self, X, Y, texts=None):
        from sklearn.base import clone
        from sklearn.model_selection import KFold

        n, k = Y.shape
        costs = self._fit_costs if self._fit_costs is not None else np.ones(k)
        if len(costs) != k:
            raise ValueError(f"auto predictor: {len(costs)} costs for {k} backends")
        sign = self._fit_sign
        # big tables: 3 folds are enough and the stack candidate costs a fit per fold
        folds = max(2, min(int(self.n_folds) if self.n_folds is not None else (5 if n < 2000 else 3), n))
        # small tables make noisy cross-validation: repeat it with other fold assignments
        repeats = int(self.n_repeats) if self.n_repeats is not None else (5 if n < 1000 else 1)
        splits = [list(KFold(folds, shuffle=True, random_state=int(self.seed) + r).split(X)) for r in range(repeats)]
        sub = (lambda idx: None) if texts is None else (lambda idx: [texts[i] for i in idx])
        Yo = sign * Y
        # routing is judged on the prompts every backend saw (all of them in a complete table)
        complete = np.isfinite(Y).all(axis=1)
        missing = not complete.all()
        # out-of-fold means of the training folds: the alpha = 0 "best single" predictor
        means = []
        for rep in splits:
            Mn = np.zeros_like(Y)
            for a, b in rep:
                Mn[b] = backend_means(Y[a])
            means.append(Mn)

        if self._fit_anchor == "auto":
            modes = [True] if n < self.ANCHOR_BELOW_ROWS else [True, False]
        else:
            modes = [bool(self._fit_anchor)]

        def judge(P, Mn, anchored):
            Qo = sign * P
            if anchored:
                Qo = anchor_quality(Qo, int(np.argmax((sign * Mn).mean(axis=0))))
            if not complete.all():
                return routing_figures(Qo[complete], Yo[complete], costs)
            return routing_figures(Qo, Yo, costs)

        judgeable = bool(complete.all()) or complete.sum() >= self.MIN_COMPLETE_ROWS
        if not judgeable:
            log.warning(
                "auto predictor: %d prompts have a score for every backend, fewer than %d: routing cannot "
                "be judged out of fold; the router will route to the best single backend",
                int(complete.sum()),
                self.MIN_COMPLETE_ROWS,
            )

        # with missing cells, every fold's first fill (one mf fit) is shared by the candidates
        fills: dict[tuple[int, int], np.ndarray] = {}

        def fill_of(r: int, j: int, a) -> np.ndarray | None:
            if not missing or np.isfinite(Y[a]).all():
                return None
            if (r, j) not in fills:
                fills[(r, j)] = mf_fill(X[a], Y[a])
            return fills[(r, j)]

        results = []
        t_all = time.perf_counter()
        for cand in self._candidates(n, missing) if judgeable else []:
            t0 = time.perf_counter()
            try:
                proto = build_predictor(cand["spec"])
                if proto.needs_texts and texts is None:
                    raise ValueError("needs the prompt texts")
                oof = []
                for r, rep in enumerate(splits):
                    P = np.zeros_like(Y)
                    for j, (a, b) in enumerate(rep):
                        fill = None if proto.handles_missing else fill_of(r, j, a)
                        model = clone(proto).fit(X[a], Y[a], texts=sub(a), fill=fill)
                        P[b] = np.asarray(model.predict(X[b], texts=sub(b))).reshape(len(b), k)
                    oof.append(P)
                route_ms = _route_ms(model, X[b[:1000]], sub(b[:1000]))
            except Exception as e:  # noqa: BLE001 -- a candidate that cannot fit this table is skipped
                log.info("auto predictor: candidate %s skipped (%s: %s)", cand["name"], type(e).__name__, e)
                results.append({"name": cand["name"], "skipped": f"{type(e).__name__}: {e}"})
                continue
            log.info("auto predictor: candidate %s cross-validated in %.1fs", cand["name"], time.perf_counter() - t0)
            for alpha, anchored in itertools.product(self.shrink, modes):
                figs = [judge(Mn + float(alpha) * (P - Mn), Mn, anchored) for P, Mn in zip(oof, means)]
                saved = [f["cost_saved_pct"] for f in figs]
                gain = [f["quality_gain_at_equal_cost"] for f in figs]
                results.append(
                    {
                        "name": cand["name"],
                        "shrink": float(alpha),
                        "anchored": anchored,
                        "cost_saved_pct": None if None in saved else float(np.mean(saved)),
                        "quality_gain_at_equal_cost": None if None in gain else float(np.mean(gain)),
                        "fit_s": time.perf_counter() - t0,
                        "route_ms": route_ms,
                    }
                )
        scored = [r for r in results if "skipped" not in r]
        if self.max_route_ms is not None:
            # a candidate too slow to route may still give the best-single baseline (shrink 0: no predictor)
            fast = [r for r in scored if r["shrink"] == 0.0 or r["route_ms"] <= self.max_route_ms]
            for r in scored:
                r["too_slow"] = r["shrink"] > 0 and r["route_ms"] > self.max_route_ms
            if scored and not any(r["shrink"] > 0 for r in fast):
                log.warning(
                    "auto predictor: every candidate takes more than max_route_ms=%g ms a prompt (fastest: %.3g "
                    "ms); the router will route to the best single backend",
                    self.max_route_ms,
                    min(r["route_ms"] for r in scored),
                )
            scored = fast
        if not scored and not judgeable:
            c0 = self._candidates(n, missing)[0]
            scored = [{"name": c0["name"], "shrink": 0.0, "anchored": True, "cost_saved_pct": None}]
            scored[0]["quality_gain_at_equal_cost"] = None
        if not scored:
            raise ValueError(
                "auto predictor: every candidate failed: " + "; ".join(f"{r['name']}: {r['skipped']}" for r in results)
            )
        # the baseline: shrink 0 routes like the best single backend (cost saved 0, gain 0);
        # ties prefer shrinkage over none and anchoring over none
        best = max(scored, key=lambda r: (_objective(r), r["shrink"] > 0, r["anchored"]))
        # a saving below min_cost_saved_pct out of fold is noise, not a router worth trusting
        beats = (
            best["shrink"] > 0
            and (best["cost_saved_pct"] or 0) >= float(self.min_cost_saved_pct)
            and (best["quality_gain_at_equal_cost"] is not None and best["quality_gain_at_equal_cost"] >= 0)
        )
        if not beats:
            best = next(
                (r for r in scored if r["shrink"] == 0.0 and r["anchored"]),
                next((r for r in scored if r["shrink"] == 0.0), best),
            )
        spec = next(c["spec"] for c in self._candidates(n, missing) if c["name"] == best["name"])
        self.chosen_name_ = best["name"]
        self.chosen_spec_ = spec
        self.shrink_ = float(best["shrink"]) if beats else 0.0
        self.anchored_ = bool(best["anchored"])
        self.beats_best_single_cv_ = bool(beats)
        self.means_ = backend_means(Y)
        self.selection_ = {
            "chosen": best["name"],
            "shrink": self.shrink_,
            "beats_best_single_cv": bool(beats),
            "cv_cost_saved_pct": best["cost_saved_pct"],
            "cv_quality_gain_at_equal_cost": best["quality_gain_at_equal_cost"],
            "n_folds": folds,
            "n_repeats": repeats,
            "anchored": bool(best["anchored"]),
            "anchor_modes_tried": modes,
            "objective": "cost saved at equal quality, then quality gain at equal cost (out of fold, "
            "over a lambda grid, mean over repeats)",
            "candidates": results,
            "cv_s": time.perf_counter() - t_all,
            "max_route_ms": self.max_route_ms,
            "n_rows": int(n),
            "n_complete_rows": int(complete.sum()),
            "observed_cells": int(np.isfinite(Y).sum()),
        }
        if not beats:
            log.warning(
                "auto predictor: no candidate beats the best single backend out of fold "
                "(best: %s); the router will route to the best single backend",
                best["name"],
            )
        self.chosen_ = build_predictor(spec).fit(X, Y, texts=texts) if self.shrink_ > 0 else None

    def refit_chosen(self, X, Y, texts=None) -> "AutoPredictor":
        """A new predictor with this one's choice (candidate and shrinkage) fitted on ``X, Y``,
        without cross-validating again (a benchmark's calibration check fits on fewer rows)."""
        if not hasattr(self, "chosen_spec_"):
            raise ValueError("refit_chosen needs a fitted AutoPredictor")
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
        other = type(self)(**self.get_params(deep=False))
        other.n_features_in_, other.n_outputs_, other.one_d_, other.mean_model_ = X.shape[1], Y.shape[1], False, None
        for key in ("chosen_name_", "chosen_spec_", "shrink_", "anchored_", "beats_best_single_cv_", "selection_"):
            setattr(other, key, getattr(self, key))
        other.means_ = backend_means(Y)
        other.chosen_ = (
            build_predictor(copy.deepcopy(self.chosen_spec_)).fit(X, Y, texts=texts) if self.shrink_ > 0 else None
        )
        return other

    def _predict_core(self, X, texts=None):
        if self.chosen_ is None:
            return np.broadcast_to(self.means_, (len(X), len(self.means_))).copy()
        P = np.asarray(self.chosen_.predict(X, texts=texts)).reshape(len(X), -1)
        return self.means_ + self.shrink_ * (P - self.means_)

    def _core_state(self):
        meta = {
            "chosen": self.chosen_name_,
            "spec": self.chosen_spec_,
            "shrink": self.shrink_,
            "anchored": self.anchored_,
            "beats_best_single_cv": self.beats_best_single_cv_,
            "selection": self.selection_,
            "has_model": self.chosen_ is not None,
        }
        arrays, texts = {"means": self.means_}, {}
        if self.chosen_ is not None:
            m, a, t = self.chosen_.get_state()
            meta["model"] = m
            arrays.update({f"chosen/{k}": v for k, v in a.items()})
            texts.update({f"chosen/{k}": v for k, v in t.items()})
        return meta, arrays, texts

    def _set_core_state(self, meta, arrays, texts):
        self.chosen_name_ = meta["chosen"]
        self.chosen_spec_ = meta["spec"]
        self.shrink_ = state_number(meta.get("shrink"), "predictor meta: 'shrink'", 0.0, 1e6)
        self.anchored_ = bool(meta.get("anchored", True))
        self.beats_best_single_cv_ = bool(meta["beats_best_single_cv"])
        self.selection_ = meta.get("selection", {})
        self.means_ = state_array(arrays, "means", (self.n_outputs_,))
        self.chosen_ = None
        if meta.get("has_model"):
            self.chosen_ = load_nested("chosen", meta["model"], arrays, texts)
            c = self.chosen_
            if (c.n_features_in_, c.n_outputs_) != (self.n_features_in_, self.n_outputs_):
                raise StateError(
                    "predictor meta: 'model'",
                    f"takes {c.n_features_in_} features to {c.n_outputs_} "
                    f"outputs, the auto predictor {self.n_features_in_} to {self.n_outputs_}",
                )
