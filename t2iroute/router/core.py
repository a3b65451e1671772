"""The runtime Router: featurize -> predict every backend's quality -> a policy picks one.

The default policy is the cost-aware rule argmax q - lambda * c; per request any policy can be
asked for (``lam=``, ``budget=``, ``quality_floor=``, ``max_cost=`` or ``policy=``). The router
imports nothing from training: a loaded artifact routes with numpy and its featurizers.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from t2iroute.backends.base import DiffusionShortcuts, free_accelerator_memory
from t2iroute.errors import ConfigError, GenerationError
from t2iroute.router.artifact import _set_router_class, load_router, save_router
from t2iroute.router.decisions import new_id
from t2iroute.router.policy import (
    LambdaPolicy,
    _finite,
    Policy,
    anchor_quality,
    build_policy,
    calibrate_lambda,
    policy_from_keywords,
)

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 4000


@dataclass
class RouteDecision:
    """Where one prompt goes, and why.

    ``predicted_quality`` is in the metric's own units and direction (``higher_is_better``),
    within the metric's observed range where the router knows it: a prediction beyond it is
    reported clipped to it (``predicted_clipped`` is then True and ``predicted_quality_raw``
    holds the predictor's values, which routing used; see :class:`Router`);
    ``policy`` is the policy that decided, with what it resolved (a calibrated lambda, say);
    ``lam`` and ``utility`` (q - lambda * c, oriented, from the raw predictions) are set when a
    lambda rule decided. ``out_of_domain`` (``{"distance", "threshold", "space"}``) is set when
    the prompt is farther from every training prompt than the router's threshold: its
    predictions are a guess (``warnings`` says so in words).
    """

    prompt: str
    backend: str
    lam: float | None
    predicted_quality: dict[str, float]
    cost: dict[str, float]
    utility: dict[str, float] | None
    timings_s: dict[str, float] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool = True
    anchor: str | None = None  # the backend routing leaves only when predicted as good (see Router)
    ranking: list[str] = field(default_factory=list)  # every backend, most preferred first
    #: feature groups that were imputed for this prompt, and why (e.g. the LLM was down)
    imputed: dict[str, str] = field(default_factory=dict)
    predicted_clipped: bool = False
    predicted_quality_raw: dict[str, float] | None = None  # set when predicted_clipped
    out_of_domain: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    #: exploration (``explore=``): whether this backend was not the policy's choice, and the
    #: probability that this backend was chosen (1.0: no exploration)
    explored: bool = False
    propensity: float = 1.0
    features: Any = field(default=None, repr=False, compare=False)  # the prompt's feature row (logging)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "prompt": self.prompt,
            "backend": self.backend,
            "policy": self.policy,
            "predicted_quality": self.predicted_quality,
            "higher_is_better": self.higher_is_better,
            "cost": self.cost,
            "ranking": self.ranking,
            "timings_s": self.timings_s,
        }
        if self.predicted_clipped:
            d["predicted_clipped"] = True
            d["predicted_quality_raw"] = self.predicted_quality_raw
        if self.anchor is not None:
            d["anchor"] = self.anchor
        if self.out_of_domain is not None:
            d["out_of_domain"] = self.out_of_domain
        if self.warnings:
            d["warnings"] = list(self.warnings)
        if self.imputed:
            d["imputed"] = self.imputed
        if self.lam is not None:
            d["lambda"] = self.lam
            d["utility"] = self.utility
        if self.explored or self.propensity < 1.0:
            d["explored"] = self.explored
            d["propensity"] = self.propensity
        return d


@dataclass
class GenerateResult(DiffusionShortcuts):
    """One image made by :meth:`Router.generate`, with the decision and what it cost.

    ``backend`` is the backend that made the image: the routed choice, unless it was forced
    (``backend=``) or the choice failed and a fallback made it (``fallbacks`` lists each backend
    tried before, with its error). ``diffusion`` holds steps run, budget, NFE and early stop
    for diffusion backends (None for others); ``steps_run`` etc. are shortcuts to it.
    """

    image: Any  # PIL.Image.Image
    decision: RouteDecision
    backend: str
    seed: int
    latency_s: float
    diffusion: Any = None  # DiffusionInfo or None
    fallbacks: list[dict] = field(default_factory=list)
    route_s: float = 0.0
    generation: Any = None  # the backend's Generation record
    id: str | None = None  # the image's id: feedback names it (Router.feedback, POST /v1/feedback)

    @property
    def fell_back(self) -> bool:
        return bool(self.fallbacks)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the image, JSON-ready (diffusion details only where present)."""
        d = {
            "id": self.id,
            "backend": self.backend,
            "routed_backend": self.decision.backend,
            "seed": self.seed,
            "latency_s": self.latency_s,
            "route_s": self.route_s,
        }
        cost = getattr(self.generation, "cost", None)
        if cost is not None:
            d["cost"] = cost
        if self.diffusion is not None:
            d.update(self.diffusion.to_dict())
        d["fallbacks"] = self.fallbacks
        d["decision"] = self.decision.to_dict()
        return d


def _check_seeds(seed: Any, n: int) -> list[int]:
    """One seed for all ``n`` prompts, or one each; each an integer in [0, 2**63)."""
    seeds = [seed] * n if isinstance(seed, (int, np.integer)) or isinstance(seed, bool) else seed
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) and not isinstance(seeds, np.ndarray):
        raise TypeError(f"seed must be an integer or a list of integers, got {type(seed).__name__}")
    seeds = list(seeds)
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} prompts: give one seed, or one per prompt")
    for k, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"seed must be an integer, got {type(s).__name__}" + (f" (seed {k})" if n > 1 else ""))
        if not 0 <= int(s) < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {s}" + (f" (seed {k})" if n > 1 else ""))
    return [int(s) for s in seeds]


def check_prompts(prompts: Any) -> tuple[list[str], bool]:
    """(prompts as a list, whether one string was given); raises naming the bad prompt."""
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
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"prompt #{i} ({p[:40]!r}) is not valid text: {e.reason} at position {e.start} "
                "(bytes that are not UTF-8?)"
            ) from None
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"prompt #{i} has {len(p)} characters; at most {MAX_PROMPT_CHARS} are accepted "
                "(text-to-image models read at most 77 tokens)"
            )
    return items, single


_BLAS_LIMITER = None


def _dist(d) -> str:
    return "infinitely far" if d is None else f"at distance {d:.3g}"


def _one_blas_thread():
    global _BLAS_LIMITER
    from threadpoolctl import ThreadpoolController

    if _BLAS_LIMITER is None:
        _BLAS_LIMITER = ThreadpoolController()
    return _BLAS_LIMITER.limit(limits=1, user_api="blas")


class Router:
    """Routes prompts to backends by predicted quality and cost, under a routing policy.

    Build one with :func:`t2iroute.training.train.run_train` or load one with
    :meth:`Router.load`. ``policy`` is the default routing policy (a :class:`Policy` or a spec
    such as ``{"type": "lam", "lam": 0.1}``; ``lam=`` is a shortcut for the lambda rule);
    every call of :meth:`route` or :meth:`generate` may ask for another one.
    ``higher_is_better`` says which way the metric points: the predictor predicts the metric as
    it is, the router orients it before a policy decides. ``backends`` (name ->
    :class:`~t2iroute.backends.base.Backend`) is only needed by :meth:`generate`; it may hold
    more backends than the router routes to (baselines). ``backend_specs`` (name -> backend
    config) is saved with the artifact so that a loaded router can generate on its own.
    ``anchor`` (a backend name, set by training: the best single backend) makes every policy see
    that backend's predicted quality raised to the prompt's best prediction, so routing leaves
    it only for a backend predicted to be as good or cheaper at a loss the policy accepts
    (decisions still show the predictions as they are).

    ``metric_range`` (``{"observed": [low, high], "bounds": [low, high] or None}``, set by
    training: the lowest and highest score of the training table, and the scorer's declared
    bounds) keeps what decisions report within the metric: a prediction beyond the observed range
    (a regression's -0.06 on a 0-1 metric) is *reported* clipped to it, with
    ``predicted_clipped`` set and the raw value kept. Policies decide on the *raw* predictions:
    the default lambda was calibrated on them, and clipping would tie backends that the
    predictor tells apart (two predicted below 0 would both read 0, and the cheaper would win
    for no reason). A ``quality_floor`` outside the observed range is refused (ValueError
    naming the range): no backend was ever seen to reach it, or every one always does.

    ``domain`` (a :class:`~t2iroute.router.domain.Domain`, set by training) flags prompts far
    from every training prompt: their decisions carry ``out_of_domain`` and a warning. Routers
    without them (built by hand, or loaded from older artifacts) report predictions as they are
    and flag nothing.

    Thread safe: routing runs under a lock (featurizers and BLAS limits are process state);
    generation holds only the lock of the pipeline it runs on, so different models run in
    parallel.
    """

    def __init__(
        self,
        featurizer,
        predictor,
        backend_names: Sequence[str],
        costs: Sequence[float],
        *,
        lam: float | None = None,
        policy: Policy | Mapping | str | None = None,
        metric: str = "quality",
        higher_is_better: bool = True,
        anchor: str | None = None,
        manifest: dict | None = None,
        backends: Mapping[str, Any] | None = None,
        backend_specs: Mapping[str, Mapping | None] | None = None,
        metric_range: Mapping[str, Any] | None = None,
        domain: Any = None,
    ):
        self.featurizer = featurizer
        self.predictor = predictor
        self.backend_names = list(backend_names)
        self.costs = np.asarray(costs, dtype=float)
        if len(self.costs) != len(self.backend_names):
            raise ConfigError("one cost per backend is needed")
        if lam is not None and policy is not None:
            raise ConfigError("give lam or policy, not both")
        if isinstance(policy, str):  # its text form, e.g. "budget=0.3" or "policy={type: NAME, ...}"
            policy = policy_from_keywords(policy=policy)
        self.policy = self._resolve(build_policy(policy) if policy is not None else LambdaPolicy(lam or 0.0))
        self.metric = metric
        self.higher_is_better = bool(higher_is_better)
        if anchor is not None and anchor not in self.backend_names:
            raise ConfigError(f"anchor '{anchor}' is not one of the backends {self.backend_names}")
        self.anchor = anchor
        self.manifest = manifest or {}
        self.backends = dict(backends or {})
        self.backend_specs = {b: (dict(v) if v else None) for b, v in (backend_specs or {}).items()}
        unknown = sorted(set(self.backend_specs) - set(self.backend_names))
        if unknown:
            raise ConfigError(f"backend configs for {unknown}, which the router does not route to")
        self.metric_range = self._check_metric_range(metric_range)
        self.domain = domain
        self._lock = threading.RLock()
        #: the share of routed prompts sent to another backend than the policy's choice (0: none);
        #: see :meth:`route`
        self.explore = 0.0
        self._explore_rng = np.random.default_rng()
        #: where generated images' decisions are logged (:meth:`log_decisions`; None: nowhere)
        self.decision_log = None

    @staticmethod
    def _check_metric_range(metric_range: Mapping[str, Any] | None) -> dict[str, Any] | None:
        from t2iroute.router.domain import check_range

        if metric_range is None:
            return None
        if not isinstance(metric_range, Mapping):
            raise ConfigError(f"metric_range must be a mapping with 'observed', got {type(metric_range).__name__}")
        out: dict[str, Any] = {}
        for key in ("observed", "bounds"):
            v = metric_range.get(key)
            if v is None:
                if key == "observed":
                    raise ConfigError("metric_range lacks 'observed' ([low, high] of the training scores)")
                continue
            got = check_range(f"metric_range.{key}", v)
            if isinstance(got, str):
                raise ConfigError(got)
            out[key] = list(got)
        return out

    @property
    def observed_range(self) -> tuple[float, float] | None:
        """(lowest, highest) score of the training data, in the metric's units; None if unknown."""
        if not self.metric_range:
            return None
        lo, hi = self.metric_range["observed"]
        return float(lo), float(hi)

    def check_policy(self, policy: Policy) -> None:
        """Raise ValueError when ``policy`` asks for a quality outside the metric's observed range
        (a ``quality_floor=5`` on a 0-1 metric), naming the range."""
        check = getattr(policy, "check_quality_range", None)
        if callable(check):
            check(self.observed_range)

    # -- policy -------------------------------------------------------------------------
    def _resolve(self, policy: Policy) -> Policy:
        if hasattr(policy, "with_backends"):  # policies that name backends (fixed)
            policy = policy.with_backends(self.backend_names)
        return policy

    @property
    def lam(self) -> float | None:
        """The default policy's lambda (None when the default is not a lambda rule)."""
        return self.policy.lambda_()

    @lam.setter
    def lam(self, value: float) -> None:
        self.policy = LambdaPolicy(value)

    @property
    def cost_unit(self) -> str:
        """The unit of the costs (the training data's ``cost_unit``; seconds by default)."""
        data = self.manifest.get("data") if isinstance(self.manifest, dict) else None
        return str((data or {}).get("cost_unit") or "s")

    @property
    def sign(self) -> float:
        return 1.0 if self.higher_is_better else -1.0

    def routing_quality(self, Q: np.ndarray) -> np.ndarray:
        """What policies see: predictions oriented (higher is better) and anchored."""
        Qo = self.sign * np.asarray(Q, float)
        if self.anchor is not None:
            Qo = anchor_quality(Qo, self.backend_names.index(self.anchor))
        return Qo

    # -- prediction ---------------------------------------------------------------------
    def predict(self, prompts: Sequence[str]) -> tuple[np.ndarray, dict[str, float]]:
        """(n, k) predicted quality (the metric's own direction) and the time of each stage."""
        Q, timings, _, _, _ = self._predict(prompts)
        return Q, timings

    def _imputed_rows(self, X: np.ndarray) -> list[dict[str, str]]:
        """Per row: {feature group: why} for groups whose ``imputed`` column is set."""
        out: list[dict[str, str]] = [{} for _ in range(len(X))]
        names = self.featurizer.feature_names_
        for j, col in enumerate(names):
            group, _, feat = col.rpartition(":")
            if feat != "imputed" or not group:
                continue
            part = next((p for p in getattr(self.featurizer, "parts", []) if p.name == group), None)
            why = (getattr(part, "last_stats_", None) or {}).get("imputed_reason") or "no answer"
            for i in np.flatnonzero(X[:, j] > 0.5):
                out[i][group] = str(why)
        return out

    def _predict(self, prompts: Sequence[str]):
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
            Q = np.asarray(Q, dtype=float).reshape(len(prompts), -1)
            self._check_finite(Q)
            t2 = time.perf_counter()
            imputed = self._imputed_rows(np.asarray(X))
            notices = self._domain_notices(X)
            t3 = time.perf_counter()
        timings = {f"features.{k}": v for k, v in stage_times.items()}
        timings.update({"features": t1 - t0, "predict": t2 - t1})
        if self.domain is not None:
            timings["domain"] = t3 - t2
        return Q, timings, imputed, notices, X

    def _domain_notices(self, X) -> list[dict[str, Any] | None]:
        if self.domain is None:
            return [None] * len(X)
        if len(X) < 64:
            with _one_blas_thread():
                return self.domain.notices(np.asarray(X))
        return self.domain.notices(np.asarray(X))

    def out_of_domain(self, prompts: str | Sequence[str]) -> list[dict[str, Any] | None]:
        """Per prompt: the out-of-domain notice its decision would carry (None: in domain, or the
        router has no domain information)."""
        items, _ = check_prompts(prompts)
        return self._predict(items)[3]

    def _check_finite(self, Q: np.ndarray) -> None:
        """The last guard: never route on (or return) NaN or infinite predictions."""
        if Q.shape[1] != len(self.backend_names) or not np.isfinite(Q).all():
            from t2iroute.errors import ArtifactError

            src = getattr(self, "source", None)
            what = f"router artifact {src}" if src else "router"
            if Q.shape[1] != len(self.backend_names):
                raise ArtifactError(
                    f"{what}: its predictor gave {Q.shape[1]} predictions for {len(self.backend_names)} backends"
                )
            bad = [b for b, ok in zip(self.backend_names, np.isfinite(Q).all(axis=0)) if not ok]
            raise ArtifactError(
                f"{what}: its predictor gave NaN or infinite quality for {bad}; not routing "
                "on it (the artifact's model is unusable: retrain or replace it)"
            )

    def warmup(self) -> float:
        """Load the featurizer's models now (they load lazily on the first prompt); seconds taken.

        After it, the stage timings of a decision are the steady-state cost of routing.
        """
        t0 = time.perf_counter()
        with self._lock:
            if hasattr(self.featurizer, "warmup"):
                self.featurizer.warmup()
            # the predictor's first call (lazy imports) on a blank row: featurizing a prompt here
            # would ask a remote LLM once more before the real prompts
            n = int(getattr(self.predictor, "n_features_in_", 0) or len(self.featurizer.feature_names_))
            self.predictor.predict(np.zeros((1, n), np.float32), texts=["a photo of a cat"])
        return time.perf_counter() - t0

    def imputed(self) -> dict[str, dict[str, Any]]:
        """Feature groups the last featurization imputed, and why: ``{part: {"imputed": n,
        "reason": ...}}`` (empty when every feature was computed)."""
        out = {}
        for part in getattr(self.featurizer, "parts", [self.featurizer]):
            st = getattr(part, "last_stats_", None) or {}
            if st.get("imputed"):
                out[getattr(part, "name", type(part).__name__)] = {
                    "imputed": int(st["imputed"]),
                    "of": int(st.get("n", 0)),
                    "reason": st.get("imputed_reason"),
                }
        return out

    def route(
        self,
        prompts: str | Sequence[str],
        *,
        lam: float | None = None,
        budget: float | None = None,
        quality_floor: float | None = None,
        max_cost: float | None = None,
        policy: Policy | Mapping | str | None = None,
        explore: float | None = None,
    ) -> RouteDecision | list[RouteDecision]:
        """Route one prompt (-> RouteDecision) or a list (-> list).

        At most one policy per call; none: the router's default (:attr:`policy`).

        * ``lam``: argmax q - lam * c;
        * ``budget``: a target mean cost per prompt, lambda calibrated on these prompts;
        * ``quality_floor``: per prompt, the cheapest backend predicted to reach it (metric units);
        * ``max_cost``: per prompt, the best predicted backend costing at most this;
        * ``policy``: any policy, as an object, a spec (``{"type": ..., ...}``, plug-ins too) or
          the text form every interface shares (``"budget=0.3"``, ``"policy={type: NAME, ...}"``;
          :func:`~t2iroute.router.policy.parse_policy`).

        ``explore`` (default :attr:`explore`, 0): the probability that a prompt goes to another
        backend than the policy's choice, picked uniformly among the others that cost at most the
        request's ``max_cost`` (when it has one); the decision then has ``explored`` set, and
        ``propensity`` is the probability of the backend it got (logged with it, so retraining can
        weigh it).
        """
        items, single = check_prompts(prompts)
        explore = self.explore if explore is None else explore
        explore = _finite("explore", explore, minimum=0.0)
        if explore >= 1.0:
            raise ConfigError(f"explore={explore}: a probability in [0, 1)")
        chosen = policy_from_keywords(
            lam=lam, budget=budget, quality_floor=quality_floor, max_cost=max_cost, policy=policy
        )
        pol = self.policy if chosen is None else self._resolve(chosen)
        self.check_policy(pol)
        Q, timings, imputed, notices, X = self._predict(items)
        t0 = time.perf_counter()
        Qo = self.routing_quality(Q)
        # what the policy resolves on these prompts (a budget's lambda) is read from the object
        # resolve returns, never from the policy, which other calls may be using at the same time
        resolved = pol.oriented(self.sign).resolve(Qo, self.costs)
        order = np.asarray(resolved.order(Qo, self.costs))
        desc = resolved.describe()
        lam_used = resolved.lambda_()
        explored, propensity = np.zeros(len(items), bool), np.ones(len(items))
        if explore > 0:
            cap = max_cost if max_cost is not None else desc.get("max_cost") if desc.get("type") == "max_cost" else None
            order, explored, propensity = self._explore(order, explore, np.inf if cap is None else float(cap))
        timings["decide"] = time.perf_counter() - t0
        per = {k: v / len(items) for k, v in timings.items()}
        cost = {b: float(c) for b, c in zip(self.backend_names, self.costs)}
        rng = self.observed_range
        Qr = Q if rng is None else np.clip(Q, rng[0], rng[1])  # reported; routing used Q
        clipped = (Qr != Q).any(axis=1)
        out = []
        for i, p in enumerate(items):
            raw = {b: float(v) for b, v in zip(self.backend_names, Q[i])}
            q = raw if not clipped[i] else {b: float(v) for b, v in zip(self.backend_names, Qr[i])}
            util = None
            if lam_used is not None:
                util = {b: float(self.sign * raw[b] - lam_used * cost[b]) for b in self.backend_names}
            ood = notices[i]
            warns = (
                []
                if ood is None
                else [
                    f"out of domain: this prompt is {_dist(ood['distance'])} from the nearest training prompt "
                    f"(threshold {ood['threshold']:.3g}, {ood['space']} space); the router has seen nothing like "
                    "it, so its predicted qualities are a guess"
                ]
            )
            out.append(
                RouteDecision(
                    prompt=p,
                    backend=self.backend_names[int(order[i, 0])],
                    lam=lam_used,
                    predicted_quality=q,
                    cost=cost,
                    utility=util,
                    timings_s=per,
                    policy=dict(desc),
                    higher_is_better=self.higher_is_better,
                    anchor=self.anchor,
                    ranking=[self.backend_names[int(j)] for j in order[i]],
                    imputed=imputed[i],
                    predicted_clipped=bool(clipped[i]),
                    predicted_quality_raw=raw if clipped[i] else None,
                    out_of_domain=ood,
                    warnings=warns,
                    explored=bool(explored[i]),
                    propensity=float(propensity[i]),
                    features=X[i],
                )
            )
        return out[0] if single else out

    def _explore(self, order: np.ndarray, share: float, cap: float):
        """With probability ``share`` per row, move a backend other than the first of ``order``,
        uniformly among those costing at most ``cap``, to the front: (order, explored, propensity)."""
        order = np.array(order, copy=True)
        n = len(order)
        explored, propensity = np.zeros(n, bool), np.ones(n)
        with self._lock:  # one generator, shared by threads
            draws = self._explore_rng.random(n)
            picks = self._explore_rng.random(n)
        for i in range(n):
            others = [j for j in order[i, 1:] if self.costs[j] <= cap]
            if not others:
                continue
            if draws[i] < share:
                j = others[min(int(picks[i] * len(others)), len(others) - 1)]
                order[i] = [j] + [b for b in order[i] if b != j]
                explored[i], propensity[i] = True, share / len(others)
            else:
                propensity[i] = 1.0 - share
        return order, explored, propensity

    # -- the decision log -----------------------------------------------------------------------
    def log_decisions(self, log=None, **settings) -> None:
        """Log every image :meth:`generate` makes (see :mod:`t2iroute.router.decisions`): a
        :class:`~t2iroute.router.decisions.DecisionLog`, or a folder (``settings``: ``prompts``,
        ``features``, ``max_bytes``, ``max_files``); None stops logging."""
        from t2iroute.router.decisions import DecisionLog

        if log is not None and not isinstance(log, DecisionLog):
            log = DecisionLog(log, **settings)
        self.decision_log = log

    def feedback(self, id: str, score: float, *, source: str = "user") -> bool:
        """Record a realized ``score`` (metric units) for the image ``id`` (``GenerateResult.id``):
        a served image becomes an observed (prompt, backend) cell for ``t2iroute train
        feedback=LOG``. True if it replaced an earlier score from the same source. Raises
        :class:`~t2iroute.router.decisions.UnknownId` (a KeyError) for an id the log does not
        hold, ConfigError when no log is set."""
        if self.decision_log is None:
            raise ConfigError("no decision log: Router.log_decisions(DIR) first (serve: log_dir=DIR)")
        return self.decision_log.score(id, score, source=source)

    def _log_results(self, results: list["GenerateResult"]) -> None:
        if self.decision_log is None or not results:
            return
        artifact = self.manifest.get("manifest_sha256")
        records = []
        for r in results:
            d = r.decision
            info = r.diffusion.to_dict() if r.diffusion is not None else {}
            cost = getattr(r.generation, "cost", None)
            records.append(
                {
                    "id": r.id,
                    "time": time.time(),
                    "prompt": d.prompt,
                    "features": d.features,
                    "policy": d.policy,
                    "backend": r.backend,
                    "routed_backend": d.backend,
                    "predicted": d.predicted_quality_raw or d.predicted_quality,
                    "cost": float(cost) if cost is not None else d.cost.get(r.backend),
                    "latency_s": r.latency_s,
                    "steps": info.get("steps_run"),
                    "nfe": info.get("nfe"),
                    "explored": d.explored,
                    "propensity": d.propensity,
                    "seed": r.seed,
                    "metric": self.metric,
                    "artifact": artifact,
                }
            )
        try:
            self.decision_log.record(records)
        except Exception as e:  # noqa: BLE001 -- the image is made: a log that fails must not lose it
            log.warning("decision log: %d record(s) not written: %s: %s", len(records), type(e).__name__, e)

    def calibrate(
        self, prompts: Sequence[str], target_mean_cost: float | None = None, *, mean_quality_floor: float | None = None
    ) -> float:
        """Make the default policy the lambda rule whose lambda meets the budget on these prompts
        (a target mean cost, or a floor on the mean predicted quality); returns lambda."""
        items, _ = check_prompts(prompts)
        Q, _ = self.predict(items)
        floor = None if mean_quality_floor is None else self.sign * float(mean_quality_floor)
        lam = calibrate_lambda(
            self.routing_quality(Q), self.costs, target_mean_cost=target_mean_cost, mean_quality_floor=floor
        )
        src = (
            {"budget": float(target_mean_cost)}
            if target_mean_cost is not None
            else {"mean_quality_floor": float(mean_quality_floor)}
        )
        with self._lock:
            self.policy = LambdaPolicy(lam, calibrated_from={**src, "n_prompts": len(items)})
        return lam

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        seed: int | Sequence[int] = 0,
        lam: float | None = None,
        budget: float | None = None,
        quality_floor: float | None = None,
        max_cost: float | None = None,
        policy: Policy | Mapping | str | None = None,
        backend: str | None = None,
        fallback: bool = True,
        explore: float | None = None,
        **opts,
    ) -> GenerateResult | list[GenerateResult]:
        """Route ``prompt`` (policy keywords as in :meth:`route`) and run the chosen backend.

        A list of prompts is routed in one call, grouped by chosen backend, and each group runs
        as batched pipeline calls (each backend's ``batch_size``); the results come back in input
        order, each with its own decision, latency share, steps and NFE. ``seed``: one seed for
        every prompt (a prompt's image then does not depend on its place in the list), or one
        per prompt. A budget policy (``budget=``) calibrates lambda on the prompts of this call.

        If the chosen backend raises (out of memory, a model that will not load...), the next
        backend in the policy's ranking runs instead, and so on; ``result.fallbacks`` records
        each failure (for a list: a group that fails falls back prompt by prompt, each to its
        own next choice, regrouped). ``backend=`` skips routing's choice and runs that backend
        (a baseline); it may name any backend in ``self.backends``. ``opts`` go to the backend's
        ``generate``. A prompt no backend could make raises :class:`GenerationError` once every
        other prompt is done (:meth:`generate_iter` yields those as they finish).
        """
        if isinstance(prompt, str):
            return next(
                iter(
                    self.generate_iter(
                        prompt,
                        seed=seed,
                        lam=lam,
                        budget=budget,
                        quality_floor=quality_floor,
                        max_cost=max_cost,
                        policy=policy,
                        backend=backend,
                        fallback=fallback,
                        explore=explore,
                        **opts,
                    )
                )
            )[1]
        out: dict[int, GenerateResult] = {}
        try:
            for i, res in self.generate_iter(
                prompt,
                seed=seed,
                lam=lam,
                budget=budget,
                quality_floor=quality_floor,
                max_cost=max_cost,
                policy=policy,
                backend=backend,
                fallback=fallback,
                explore=explore,
                **opts,
            ):
                out[i] = res
        except GenerationError as e:
            e.results = [out.get(i) for i in range(len(prompt))]  # what was made survives
            raise
        return [out[i] for i in range(len(out))]

    def generate_iter(
        self,
        prompts: str | Sequence[str],
        *,
        seed: int | Sequence[int] = 0,
        lam: float | None = None,
        budget: float | None = None,
        quality_floor: float | None = None,
        max_cost: float | None = None,
        policy: Policy | Mapping | str | None = None,
        backend: str | None = None,
        fallback: bool = True,
        explore: float | None = None,
        **opts,
    ):
        """:meth:`generate` for many prompts, yielding ``(index, GenerateResult)`` as each
        backend group finishes (progress bars, writing images as they come). Arguments as there."""
        items, single = check_prompts(prompts)
        seeds = _check_seeds(seed, len(items))
        if backend is not None and backend not in self.backends:
            raise ConfigError(f"backend '{backend}' is not configured (have {sorted(self.backends)})")
        t0 = time.perf_counter()
        decisions = self.route(
            items,
            lam=lam,
            budget=budget,
            quality_floor=quality_floor,
            max_cost=max_cost,
            policy=policy,
            explore=0.0 if backend is not None else explore,
        )
        route_s = (time.perf_counter() - t0) / len(items)
        if backend is not None:
            orders = [[backend]] * len(items)
        else:
            missing_choice = sorted({d.backend for d in decisions} - set(self.backends))
            if missing_choice:
                missing = [b for b in self.backend_names if b not in self.backends]
                raise ConfigError(
                    f"backend '{missing_choice[0]}' is not configured (unconfigured: {missing}); the "
                    "artifact stores no backend config for it: pass backends= to Router.load, or "
                    "train with backends=[...] so the artifact carries them"
                )
            orders = [d.ranking if fallback else [d.backend] for d in decisions]
        failures: list[list[dict]] = [[] for _ in items]
        attempt = [0] * len(items)
        pending = list(range(len(items)))
        lost: list[int] = []
        while pending:
            groups: dict[str, list[int]] = {}
            for i in pending:
                groups.setdefault(orders[i][attempt[i]], []).append(i)
            pending = []
            for name, idx in groups.items():
                be = self.backends.get(name)
                gens, error = None, None
                if be is None:
                    error = "not configured"
                else:
                    try:
                        gens = be.generate([items[i] for i in idx], seeds=[seeds[i] for i in idx], **opts)
                        if len(gens) != len(idx):
                            raise GenerationError(f"returned {len(gens)} images for {len(idx)} prompts")
                    except Exception as e:
                        log.warning(
                            "backend %s failed on %d prompt(s) (first %r): %s: %s",
                            name,
                            len(idx),
                            items[idx[0]][:80],
                            type(e).__name__,
                            e,
                        )
                        error = f"{type(e).__name__}: {e}"
                        if all(len(orders[i]) == 1 for i in idx) and single:
                            raise GenerationError(f"backend '{name}' failed: {error}") from e
                        gens = None
                if gens is None:
                    # Only here, past the except block, has the traceback (and with it the failed call's
                    # tensors) been dropped: emptying the CUDA cache inside it freed nothing (measured on
                    # an H200: 48 GiB stayed reserved after a failed 256 GiB allocation).
                    free_accelerator_memory()
                    for i in idx:
                        failures[i].append({"backend": name, "error": error})
                        attempt[i] += 1
                        (pending if attempt[i] < len(orders[i]) else lost).append(i)
                    continue
                made = [
                    GenerateResult(
                        image=gen.image,
                        decision=decisions[i],
                        backend=name,
                        seed=seeds[i],
                        latency_s=float(gen.latency_s),
                        diffusion=getattr(gen, "diffusion", None),
                        fallbacks=failures[i],
                        route_s=route_s,
                        generation=gen,
                        id=new_id(),
                    )
                    for i, gen in zip(idx, gens)
                ]
                self._log_results(made)  # committed before any result leaves
                yield from zip(idx, made)
        if lost:
            i = lost[0]
            what = "; ".join(f"{f['backend']}: {f['error']}" for f in failures[i])
            if single or len(items) == 1:
                raise GenerationError(f"every backend failed for this prompt: {what}")
            raise GenerationError(
                f"every backend failed for {len(lost)} of {len(items)} prompts "
                f"(indices {sorted(lost)[:10]}); prompt {i} ({items[i][:60]!r}): {what}"
            )

    # -- persistence ----------------------------------------------------------------------
    def save(self, path, **extra) -> None:
        save_router(self, path, **extra)

    @classmethod
    def load(
        cls,
        path,
        *,
        backends: Mapping[str, Any] | None = None,
        local: Mapping[str, Mapping[str, Any]] | None = None,
        expected_sha256: str | None = None,
    ) -> "Router":
        """Load an artifact folder; see :func:`t2iroute.router.artifact.load_router`. ``local``
        (featurizer type -> settings) carries the loading user's endpoints and cache folders."""
        return load_router(path, backends=backends, local=local, expected_sha256=expected_sha256)


# the artifact format builds this class when it loads one; it cannot import this module, which
# imports it (see t2iroute.router.artifact._ROUTER_CLASS)
_set_router_class(Router)
