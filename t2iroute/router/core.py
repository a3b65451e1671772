"""The runtime Router: featurize -> predict every backend's quality -> argmax q - lambda * c."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from t2iroute.errors import ConfigError, GenerationError
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


@dataclass
class GenerateResult:
    """One image made by :meth:`Router.generate`, with the decision and what it cost.

    ``backend`` is the backend that made the image: the routed choice, unless it was forced
    (``backend=``) or the choice failed and a fallback made it (``fallbacks`` lists each backend
    tried before, with its error).
    """

    image: Any  # PIL.Image.Image
    decision: RouteDecision
    backend: str
    seed: int
    latency_s: float
    steps_run: int
    steps_budget: int
    stopped_early: bool
    nfe: int
    fallbacks: list[dict] = field(default_factory=list)
    route_s: float = 0.0
    generation: Any = None  # the backend's Generation record

    @property
    def fell_back(self) -> bool:
        return bool(self.fallbacks)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the image, JSON-ready."""
        return {
            "backend": self.backend,
            "routed_backend": self.decision.backend,
            "seed": self.seed,
            "latency_s": self.latency_s,
            "route_s": self.route_s,
            "steps_run": self.steps_run,
            "steps_budget": self.steps_budget,
            "stopped_early": self.stopped_early,
            "nfe": self.nfe,
            "fallbacks": self.fallbacks,
            "decision": self.decision.to_dict(),
        }


def _free_accelerator_memory() -> None:
    """After a failure (often out of memory) give cached GPU memory back before the next backend."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


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

    Build one with :func:`t2iroute.training.train.run_train` or load one with
    :meth:`Router.load`. ``backends`` (name -> :class:`~t2iroute.backends.base.Backend`) is only
    needed by :meth:`generate`; it may hold more backends than the router routes to (baselines).
    ``backend_specs`` (name -> backend config) is saved with the artifact so that a loaded
    router can generate without being told its backends again.

    Thread safe: routing runs under a lock (featurizers and BLAS limits are process state);
    generation holds only the lock of the pipeline it runs on, so different models run in
    parallel.
    """

    def __init__(self, featurizer, predictor, backend_names: Sequence[str], costs: Sequence[float],
                 *, lam: float = 0.0, metric: str = "quality", manifest: dict | None = None,
                 backends: Mapping[str, Any] | None = None,
                 backend_specs: Mapping[str, Mapping | None] | None = None):
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
        self.backend_specs = {b: (dict(v) if v else None) for b, v in (backend_specs or {}).items()}
        unknown = sorted(set(self.backend_specs) - set(self.backend_names))
        if unknown:
            raise ConfigError(f"backend configs for {unknown}, which the router does not route to")
        self._lock = threading.RLock()

    # -- prediction ---------------------------------------------------------------------
    def predict(self, prompts: Sequence[str]) -> tuple[np.ndarray, dict[str, float]]:
        """(n, k) predicted quality and the time spent in each stage."""
        with self._lock:
            t0 = time.perf_counter()
            X = self.featurizer.transform(prompts)
            t1 = time.perf_counter()
            stage_times = dict(getattr(self.featurizer, "last_timings_", {}))
            if len(prompts) < 64:
                # Small products gain nothing from BLAS threads, and OpenBLAS threads left spinning
                # after them slow the next embedding call by 2x on a 2-core machine.
                with _one_blas_thread():
                    Q = self.predictor.predict(X, texts=list(prompts))
            else:
                Q = self.predictor.predict(X, texts=list(prompts))
            Q = np.asarray(Q).reshape(len(prompts), -1)
            t2 = time.perf_counter()
        timings = {f"features.{k}": v for k, v in stage_times.items()}
        timings.update({"features": t1 - t0, "predict": t2 - t1})
        return Q, timings

    def warmup(self) -> float:
        """Load the featurizer's models now (they load lazily on the first prompt); seconds taken.

        After it, the stage timings of a decision are the steady-state cost of routing.
        """
        t0 = time.perf_counter()
        with self._lock:
            if hasattr(self.featurizer, "warmup"):
                self.featurizer.warmup()
        self.predict(["a photo of a cat"])
        return time.perf_counter() - t0

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
        lam = calibrate_lambda(Q, self.costs, target_mean_cost=target_mean_cost,
                               quality_floor=quality_floor)
        with self._lock:
            self.lam = lam
        return lam

    def generate(self, prompt: str, *, seed: int = 0, lam: float | None = None,
                 budget: float | None = None, backend: str | None = None, fallback: bool = True,
                 **opts) -> GenerateResult:
        """Route ``prompt`` and run the chosen backend: a :class:`GenerateResult`.

        If the chosen backend raises (out of memory, a model that will not load...), the next
        best backend by predicted utility runs instead, and so on; ``result.fallbacks`` records
        each failure. ``backend=`` skips routing's choice and runs that backend (a baseline); it
        may name any backend in ``self.backends``. ``opts`` go to the backend's ``generate``.
        """
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
        t0 = time.perf_counter()
        decision = self.route(prompt, lam=lam, budget=budget)
        route_s = time.perf_counter() - t0
        if backend is not None:
            if backend not in self.backends:
                raise ConfigError(f"backend '{backend}' is not configured (have {sorted(self.backends)})")
            order = [backend]
        else:
            rest = [b for b in sorted(self.backend_names, key=lambda b: (-decision.utility[b], decision.cost[b]))
                    if b != decision.backend]
            order = [decision.backend] + (rest if fallback else [])
            if decision.backend not in self.backends:
                missing = [b for b in self.backend_names if b not in self.backends]
                raise ConfigError(
                    f"backend '{decision.backend}' is not configured (unconfigured: {missing}); the "
                    "artifact stores no backend config for it: pass backends= to Router.load, or "
                    "train with backends=[...] so the artifact carries them"
                )
        failures: list[dict] = []
        for name in order:
            be = self.backends.get(name)
            if be is None:
                failures.append({"backend": name, "error": "not configured"})
                continue
            try:
                gen = be.generate([prompt], seeds=[int(seed)], **opts)[0]
            except Exception as e:  # noqa: BLE001 -- any backend failure falls through to the next
                log.warning("backend %s failed on %r: %s: %s", name, prompt[:80], type(e).__name__, e)
                failures.append({"backend": name, "error": f"{type(e).__name__}: {e}"})
                if len(order) == 1:
                    raise GenerationError(f"backend '{name}' failed: {type(e).__name__}: {e}") from e
                gen = None
            if gen is None:
                # Only here, past the except block, has the traceback (and with it the failed call's
                # tensors) been dropped: emptying the CUDA cache inside it freed nothing (measured on
                # an H200: 48 GiB stayed reserved after a failed 256 GiB allocation).
                _free_accelerator_memory()
                continue
            return GenerateResult(
                image=gen.image, decision=decision, backend=name, seed=int(seed),
                latency_s=float(gen.latency_s), steps_run=int(gen.steps_run),
                steps_budget=int(gen.steps_budget), stopped_early=bool(gen.stopped_early),
                nfe=int(gen.nfe), fallbacks=failures, route_s=route_s, generation=gen)
        raise GenerationError(
            "every backend failed for this prompt: "
            + "; ".join(f"{f['backend']}: {f['error']}" for f in failures))

    # -- persistence ----------------------------------------------------------------------
    def save(self, path, **extra) -> None:
        from t2iroute.router.artifact import save_router

        save_router(self, path, **extra)

    @classmethod
    def load(cls, path, *, backends: Mapping[str, Any] | None = None) -> "Router":
        from t2iroute.router.artifact import load_router

        return load_router(path, backends=backends)
