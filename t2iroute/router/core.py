"""The runtime Router: featurize -> predict every backend's quality -> argmax q - lambda * c."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from t2iroute.errors import ConfigError
from t2iroute.training.evaluate import route_scores

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 4000


@dataclass
class RouteDecision:
    """Where one prompt goes, and why."""

    prompt: str
    backend: str
    lam: float
    predicted_quality: dict[str, float]
    cost: dict[str, float]
    utility: dict[str, float]
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "backend": self.backend,
            "lambda": self.lam,
            "predicted_quality": self.predicted_quality,
            "cost": self.cost,
            "utility": self.utility,
            "timings_s": self.timings_s,
        }


def _check_prompts(prompts: Any) -> tuple[list[str], bool]:
    single = isinstance(prompts, str)
    items = [prompts] if single else prompts
    if items is None or isinstance(items, (bytes, Mapping)) or not hasattr(items, "__iter__"):
        raise TypeError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    items = list(items)
    if not items:
        raise ValueError("prompts: empty list")
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise TypeError(f"prompt #{i} is {type(p).__name__}, not a string")
        if not p.strip():
            raise ValueError(f"prompt #{i} is empty or whitespace")
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"prompt #{i} has {len(p)} characters; at most {MAX_PROMPT_CHARS} are accepted "
                "(text-to-image models read at most 77 tokens)"
            )
    return items, single


def calibrate_lambda(
    q_hat: np.ndarray,
    costs: np.ndarray,
    *,
    target_mean_cost: float | None = None,
    quality_floor: float | None = None,
    scores: np.ndarray | None = None,
) -> float:
    """Lambda for a budget, from predictions on calibration prompts.

    ``target_mean_cost``: the smallest lambda whose routed mean cost is <= the target (the
    cheapest quality-maximizing policy within budget). ``quality_floor``: the largest lambda
    whose mean quality (true ``scores`` if given, else predicted) stays >= the floor.
    Mean cost falls monotonically with lambda, so a bisection over log-lambda finds it.
    """
    if (target_mean_cost is None) == (quality_floor is None):
        raise ValueError("give exactly one of target_mean_cost and quality_floor")
    costs = np.asarray(costs, float)
    rows = np.arange(len(q_hat))

    def mean_cost(lam):
        return costs[route_scores(q_hat, costs, lam)].mean()

    def mean_quality(lam):
        ref = q_hat if scores is None else scores
        return ref[rows, route_scores(q_hat, costs, lam)].mean()

    spread = float(np.ptp(q_hat, axis=1).max()) if q_hat.size else 1.0
    gaps = np.diff(np.unique(costs))
    lam_hi = max(spread / (gaps.min() if len(gaps) else 1.0), 1e-12) * 2.0  # cheapest always wins
    if target_mean_cost is not None:
        if target_mean_cost < costs.min():
            raise ValueError(
                f"target_mean_cost {target_mean_cost} is below the cheapest backend's cost {costs.min():.4g}"
            )
        ok = lambda lam: mean_cost(lam) <= target_mean_cost  # noqa: E731  false at 0, true at lam_hi
    else:
        if mean_quality(0.0) < quality_floor:
            log.warning("quality floor %.4g is above what the router reaches (%.4g); lambda=0",
                        quality_floor, mean_quality(0.0))
            return 0.0
        ok = lambda lam: mean_quality(lam) < quality_floor  # noqa: E731  false at 0
    if ok(0.0):  # the budget is met at lambda 0
        return 0.0
    if not ok(lam_hi):  # the floor holds even when the cheapest backend always wins
        return float(lam_hi)
    lo, hi = 0.0, lam_hi  # invariant: not ok(lo), ok(hi)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    # budget: the smallest lambda within budget; floor: the largest lambda above the floor
    return float(hi if target_mean_cost is not None else lo)


_BLAS_LIMITER = None


def _one_blas_thread():
    global _BLAS_LIMITER
    from threadpoolctl import ThreadpoolController

    if _BLAS_LIMITER is None:
        _BLAS_LIMITER = ThreadpoolController()
    return _BLAS_LIMITER.limit(limits=1, user_api="blas")


class Router:
    """Routes prompts to the backend maximizing predicted quality - lambda * cost.

    Build one with :func:`t2iroute.training.train.fit_router` or load one with
    :meth:`Router.load`. ``backends`` (name -> object with ``generate``) is only needed by
    :meth:`generate`.
    """

    def __init__(self, featurizer, predictor, backend_names: Sequence[str], costs: Sequence[float],
                 *, lam: float = 0.0, metric: str = "quality", manifest: dict | None = None,
                 backends: Mapping[str, Any] | None = None):
        self.featurizer = featurizer
        self.predictor = predictor
        self.backend_names = list(backend_names)
        self.costs = np.asarray(costs, dtype=float)
        if len(self.costs) != len(self.backend_names):
            raise ConfigError("one cost per backend is needed")
        self.lam = float(lam)
        self.metric = metric
        self.manifest = manifest or {}
        self.backends = dict(backends or {})

    # -- prediction ---------------------------------------------------------------------
    def predict(self, prompts: Sequence[str]) -> tuple[np.ndarray, dict[str, float]]:
        """(n, k) predicted quality and the time spent in each stage."""
        t0 = time.perf_counter()
        X = self.featurizer.transform(prompts)
        t1 = time.perf_counter()
        if len(prompts) < 64:
            # Small products gain nothing from BLAS threads, and OpenBLAS threads left spinning
            # after them slow the next embedding call by 2x on a 2-core machine.
            with _one_blas_thread():
                Q = self.predictor.predict(X, texts=list(prompts))
        else:
            Q = self.predictor.predict(X, texts=list(prompts))
        Q = np.asarray(Q).reshape(len(prompts), -1)
        t2 = time.perf_counter()
        timings = {f"features.{k}": v for k, v in getattr(self.featurizer, "last_timings_", {}).items()}
        timings.update({"features": t1 - t0, "predict": t2 - t1})
        return Q, timings

    def route(self, prompts: str | Sequence[str], *, lam: float | None = None,
              budget: float | None = None) -> RouteDecision | list[RouteDecision]:
        """Route one prompt (-> RouteDecision) or a list (-> list).

        ``lam`` overrides the router's lambda; ``budget`` (a target mean cost per prompt)
        calibrates lambda on these prompts' own predictions.
        """
        items, single = _check_prompts(prompts)
        if lam is not None and budget is not None:
            raise ValueError("give lam or budget, not both")
        Q, timings = self.predict(items)
        t0 = time.perf_counter()
        if budget is not None:
            lam = calibrate_lambda(Q, self.costs, target_mean_cost=float(budget))
        lam = self.lam if lam is None else float(lam)
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lambda must be a finite number >= 0, got {lam}")
        choice = route_scores(Q, self.costs, lam)
        timings["decide"] = time.perf_counter() - t0
        per = {k: v / len(items) for k, v in timings.items()}
        cost = {b: float(c) for b, c in zip(self.backend_names, self.costs)}
        out = []
        for i, p in enumerate(items):
            q = {b: float(v) for b, v in zip(self.backend_names, Q[i])}
            out.append(RouteDecision(
                prompt=p,
                backend=self.backend_names[int(choice[i])],
                lam=lam,
                predicted_quality=q,
                cost=cost,
                utility={b: q[b] - lam * cost[b] for b in self.backend_names},
                timings_s=per,
            ))
        return out[0] if single else out

    def calibrate(self, prompts: Sequence[str], target_mean_cost: float | None = None, *,
                  quality_floor: float | None = None) -> float:
        """Set (and return) lambda so that routing these prompts meets the budget."""
        items, _ = _check_prompts(prompts)
        Q, _ = self.predict(items)
        self.lam = calibrate_lambda(Q, self.costs, target_mean_cost=target_mean_cost,
                                    quality_floor=quality_floor)
        return self.lam

    def generate(self, prompt: str, *, seed: int = 0, lam: float | None = None, **opts):
        """Route, then run the chosen backend. Needs ``backends`` objects."""
        decision = self.route(prompt, lam=lam)
        if decision.backend not in self.backends:
            raise ConfigError(
                f"backend '{decision.backend}' is not configured in this Router "
                f"(have {sorted(self.backends)}); pass backends= to Router.load"
            )
        gen = self.backends[decision.backend].generate([prompt], seeds=[seed], **opts)[0]
        return gen, decision

    # -- persistence ----------------------------------------------------------------------
    def save(self, path, **extra) -> None:
        from t2iroute.router.artifact import save_router

        save_router(self, path, **extra)

    @classmethod
    def load(cls, path, *, backends: Mapping[str, Any] | None = None) -> "Router":
        from t2iroute.router.artifact import load_router

        return load_router(path, backends=backends)
