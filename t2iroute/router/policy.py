"""Routing policies: predicted quality (n x k) + backend costs (k,) -> a backend per prompt.

Every policy sees *oriented* quality (higher is better; the router flips lower-is-better metrics
before calling it) and breaks ties towards the cheaper backend. Built in:

* ``lam``: argmax q - lambda * c (the cost-aware rule);
* ``budget``: a target mean cost per prompt, calibrated to a lambda on the prompts routed together;
* ``quality_floor``: per prompt, the cheapest backend whose predicted quality reaches the floor,
  else the best predicted;
* ``max_cost``: per prompt, the best predicted quality among backends costing at most the cap;
* ``fixed``: one backend for every prompt (what a router falls back to when it cannot beat the
  best single backend).

A policy also ranks every backend per prompt (:meth:`Policy.order`): the router falls back along
that order when a backend fails. Third-party policies subclass :class:`Policy` and register
under the entry-point group ``t2iroute.policies``.

Policies are never changed by deciding: what a policy resolves on the prompts at hand (a
budget's lambda) lives in the object :meth:`Policy.resolve` returns, which the router reads the
decision's ``policy`` and ``lam`` from. One policy object (a router's default, or one passed to
several threads) can therefore decide for many calls at once.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np

# the pure decision rules live below every layer (t2iroute.curves and predictors.auto use them too);
# they are imported from here as ever: ``from t2iroute.router.policy import route_scores, anchor_quality``
from t2iroute.rules import anchor_quality, route_scores  # noqa: F401 -- anchor_quality: re-exported

log = logging.getLogger(__name__)


def _cost_rank(costs: np.ndarray, n: int) -> np.ndarray:
    ranks = np.empty(len(costs), int)
    ranks[np.argsort(costs, kind="stable")] = np.arange(len(costs))
    return np.broadcast_to(ranks, (n, len(costs)))


def _order(primary: np.ndarray, costs: np.ndarray, *secondary: np.ndarray) -> np.ndarray:
    """Indices per row sorted by ``primary`` ascending, then ``secondary`` keys, then cost."""
    n = primary.shape[0]
    keys = (_cost_rank(costs, n),) + tuple(reversed(secondary)) + (primary,)
    return np.lexsort(keys, axis=-1)


def _finite(name: str, value: Any, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ValueError(f"{name} must be a finite number{bound}, got {value}")
    return value


class Policy:
    """Base class: subclasses implement :meth:`choose` and :meth:`params` (and may override
    :meth:`order`). ``type_name`` is the registry name written into decisions and artifacts."""

    type_name = "base"
    #: True when a prompt's decision depends on that prompt alone, not on the others routed with
    #: it: a long list may then be routed in pieces with the same result (the server does)
    per_prompt = False

    def resolve(self, q_hat: np.ndarray, costs: np.ndarray) -> "Policy":
        """The policy as it decides on these predictions, with whatever it calibrates on them
        fixed (a budget's lambda): a new object, or ``self`` when nothing is calibrated. Never
        changes ``self``, so one policy may decide for several threads at once."""
        return self

    def check(self, costs: np.ndarray) -> None:
        """Raise ValueError, naming the keyword and its value, when no routing over backends
        with ``costs`` can meet this policy (a budget or cost cap below the cheapest backend)."""

    def check_quality_range(self, quality_range: tuple[float, float] | None) -> None:
        """Raise ValueError, naming the keyword, its value and the range, when a quality this
        policy asks for lies outside the metric's observed range ``(low, high)`` (None: unknown)."""

    def choose(self, q_hat: np.ndarray, costs: np.ndarray) -> np.ndarray:
        """Backend index per prompt (oriented quality: higher is better)."""
        return self.order(q_hat, costs)[:, 0]

    def order(self, q_hat: np.ndarray, costs: np.ndarray) -> np.ndarray:
        """(n, k) backend indices from most to least preferred (fallback order)."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def spec(self) -> dict[str, Any]:
        """JSON-able config that rebuilds this policy (``{"type": ..., **params}``)."""
        return {"type": self.type_name, **self.params()}

    def describe(self) -> dict[str, Any]:
        """The spec, plus what was resolved on the prompts at hand where this policy came from
        :meth:`resolve` (e.g. a calibrated lambda)."""
        return self.spec()

    def lambda_(self) -> float | None:
        """The lambda it routes with, where the policy is a lambda rule (for a budget: the
        object :meth:`resolve` returned)."""
        return None

    def oriented(self, sign: float) -> "Policy":
        """This policy for a metric whose quality was multiplied by ``sign`` (-1: lower is better)."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


class LambdaPolicy(Policy):
    """argmax q - lam * c. ``lam`` >= 0; larger lambdas favour cheaper backends."""

    type_name = "lam"
    per_prompt = True

    def __init__(self, lam: float = 0.0, calibrated_from: Mapping[str, Any] | None = None):
        self.lam = _finite("lam (lambda)", lam, minimum=0.0)
        self.calibrated_from = dict(calibrated_from) if calibrated_from else None

    def choose(self, q_hat, costs):
        return route_scores(q_hat, np.asarray(costs, float), self.lam)

    def order(self, q_hat, costs):
        costs = np.asarray(costs, float)
        return _order(-(np.asarray(q_hat, float) - self.lam * costs[None, :]), costs)

    def utility(self, q_hat, costs) -> np.ndarray:
        return np.asarray(q_hat, float) - self.lam * np.asarray(costs, float)[None, :]

    def params(self):
        p: dict[str, Any] = {"lam": self.lam}
        if self.calibrated_from:
            p["calibrated_from"] = self.calibrated_from
        return p

    def lambda_(self):
        return self.lam


class BudgetPolicy(Policy):
    """A target mean cost per prompt: lambda is calibrated on the prompts routed together
    (the smallest lambda whose mean routed cost is within the budget).

    The calibrated lambda is never stored here: :meth:`resolve` returns a
    :class:`CalibratedBudget` holding it, which is what a decision reports."""

    type_name = "budget"

    def __init__(self, budget: float):
        self.budget = _finite("budget", budget, minimum=0.0)

    def check(self, costs):
        costs = np.asarray(costs, float)
        if costs.size and self.budget < costs.min():
            raise ValueError(
                f"budget {self.budget:g} is below the cheapest backend's cost {costs.min():.4g}: no routing meets it"
            )

    def resolve(self, q_hat, costs) -> "CalibratedBudget":
        self.check(costs)
        lam = calibrate_lambda(np.asarray(q_hat, float), np.asarray(costs, float), target_mean_cost=self.budget)
        return CalibratedBudget(self.budget, lam)

    def choose(self, q_hat, costs):
        return self.resolve(q_hat, costs).choose(q_hat, costs)

    def order(self, q_hat, costs):
        return self.resolve(q_hat, costs).order(q_hat, costs)

    def params(self):
        return {"budget": self.budget}


class CalibratedBudget(LambdaPolicy):
    """A :class:`BudgetPolicy` resolved on one call's prompts: the lambda rule with the lambda
    calibrated there. Its spec is the budget's (it rebuilds a :class:`BudgetPolicy`); ``describe``
    adds the lambda."""

    type_name = "budget"
    per_prompt = False

    def __init__(self, budget: float, lam: float):
        super().__init__(lam)
        self.budget = _finite("budget", budget, minimum=0.0)

    def params(self):
        return {"budget": self.budget}

    def describe(self):
        return {**self.spec(), "lam": self.lam}


def format_range(quality_range: tuple[float, float]) -> str:
    """``[0, 0.62]``: a metric range as error messages and notices write it."""
    lo, hi = (float(v) for v in quality_range)
    return f"[{lo:.4g}, {hi:.4g}]"


def check_quality_floor(
    floor: float, quality_range: tuple[float, float] | None, *, name: str = "quality_floor"
) -> None:
    """ValueError when ``floor`` lies outside the metric's observed range (None: unknown, no check).

    The range is the training table's lowest and highest score (the artifact's
    ``metric_range.observed``): a floor above it is one no backend was ever seen to reach, a floor
    below it one every backend always reaches -- most likely a floor in other units (a 0-100 CLIP
    score floor given to a 0-1 metric, or the reverse)."""
    if quality_range is None:
        return
    lo, hi = (float(v) for v in quality_range)
    v = _finite(name, floor)
    if not lo <= v <= hi:
        raise ValueError(
            f"{name}={v:g} is outside the metric's observed range {format_range((lo, hi))} "
            "(the lowest and highest score in the router's training data)"
        )


class QualityFloorPolicy(Policy):
    """Per prompt: the cheapest backend whose predicted quality reaches ``quality_floor``, else
    the best predicted one. The floor is in the metric's own units and direction."""

    type_name = "quality_floor"
    per_prompt = True

    def __init__(self, quality_floor: float):
        self.quality_floor = _finite("quality_floor", quality_floor)
        self._sign = 1.0

    def check_quality_range(self, quality_range):
        check_quality_floor(self.quality_floor, quality_range)

    def oriented(self, sign):
        p = QualityFloorPolicy(self.quality_floor)
        p._sign = float(sign)
        return p

    def order(self, q_hat, costs):
        q = np.asarray(q_hat, float)
        costs = np.asarray(costs, float)
        meets = q >= self._sign * self.quality_floor
        # meeting the floor first (cheapest first), then the rest (best predicted first)
        return _order((~meets).astype(int), costs, np.where(meets, costs[None, :], -q))

    def params(self):
        return {"quality_floor": self.quality_floor}


class MaxCostPolicy(Policy):
    """Per prompt: the best predicted backend among those costing at most ``max_cost``."""

    type_name = "max_cost"
    per_prompt = True

    def __init__(self, max_cost: float):
        self.max_cost = _finite("max_cost", max_cost, minimum=0.0)

    def check(self, costs):
        costs = np.asarray(costs, float)
        if costs.size and self.max_cost < costs.min():
            raise ValueError(
                f"max_cost {self.max_cost:g} is below the cheapest backend's cost {costs.min():.4g}: "
                "no backend is within it"
            )

    def order(self, q_hat, costs):
        q = np.asarray(q_hat, float)
        costs = np.asarray(costs, float)
        self.check(costs)
        within = np.broadcast_to(costs[None, :] <= self.max_cost, q.shape)
        # within the cap first (best predicted first); over the cap only as fallbacks (cheapest first)
        return _order((~within).astype(int), costs, np.where(within, -q, costs[None, :]))

    def params(self):
        return {"max_cost": self.max_cost}


class FixedPolicy(Policy):
    """Every prompt to ``backend`` (a name, resolved against the router's backends)."""

    type_name = "fixed"
    per_prompt = True

    def __init__(self, backend: str, backends: list[str] | None = None):
        self.backend = str(backend)
        self.backends = list(backends) if backends is not None else None

    def with_backends(self, names: list[str]) -> "FixedPolicy":
        if self.backend not in names:
            raise ValueError(f"fixed policy: backend '{self.backend}' is not one of {names}")
        return FixedPolicy(self.backend, names)

    def order(self, q_hat, costs):
        if self.backends is None:
            raise ValueError("fixed policy: backend names unknown (use Router.route, or with_backends)")
        q = np.asarray(q_hat, float)
        j = self.backends.index(self.backend)
        first = np.zeros(q.shape, int)
        first[:, [i for i in range(q.shape[1]) if i != j]] = 1
        return _order(first, np.asarray(costs, float), -q)

    def params(self):
        return {"backend": self.backend}


def calibrate_lambda(
    q_hat: np.ndarray,
    costs: np.ndarray,
    *,
    target_mean_cost: float | None = None,
    mean_quality_floor: float | None = None,
    scores: np.ndarray | None = None,
) -> float:
    """Lambda for a budget, from predictions on calibration prompts.

    ``target_mean_cost``: the smallest lambda whose routed mean cost is <= the target (the
    cheapest quality-maximizing policy within budget). ``mean_quality_floor``: the largest lambda
    whose MEAN quality (true ``scores`` if given, else predicted) stays >= the floor (oriented:
    higher is better). Mean cost falls monotonically with lambda, so a bisection finds it.
    """
    if (target_mean_cost is None) == (mean_quality_floor is None):
        raise ValueError("give exactly one of target_mean_cost and mean_quality_floor")
    if target_mean_cost is not None:
        target_mean_cost = _finite("budget (target_mean_cost)", target_mean_cost, minimum=0.0)
    if mean_quality_floor is not None:
        mean_quality_floor = _finite("mean_quality_floor", mean_quality_floor)
    q_hat = np.asarray(q_hat, float)
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
            raise ValueError(f"budget {target_mean_cost:g} is below the cheapest backend's cost {costs.min():.4g}")
        ok = lambda lam: mean_cost(lam) <= target_mean_cost  # noqa: E731  false at 0, true at lam_hi
    else:
        if mean_quality(0.0) < mean_quality_floor:
            log.warning(
                "mean quality floor %.4g is above what the router reaches (%.4g); lambda=0",
                mean_quality_floor,
                mean_quality(0.0),
            )
            return 0.0
        ok = lambda lam: mean_quality(lam) < mean_quality_floor  # noqa: E731  false at 0
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


#: the per-request keywords of Router.route / generate and the CLI, each one built-in policy
POLICY_KEYWORDS = ("lam", "budget", "quality_floor", "max_cost")


def build_policy(spec: Policy | Mapping[str, Any]) -> Policy:
    """A Policy object passes through; ``{"type": NAME, ...}`` is built from the registry."""
    from t2iroute import registry

    if isinstance(spec, Policy):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"policy must be a Policy or a mapping with a 'type', got {type(spec).__name__}")
    try:
        return registry.build("policies", spec)
    except ValueError:
        raise
    except TypeError as e:
        raise ValueError(f"policy {dict(spec)}: {e}") from e


#: the longest policy text :func:`parse_policy` reads (it may come from an HTTP request)
MAX_POLICY_CHARS = 2000


def parse_policy(text: str) -> dict[str, Any]:
    """The one text form of a policy, the same as a command-line key, in an HTTP request
    (``model="router:TEXT"``), in the app and in ``Router.route(policy=TEXT)``:
    ``lam=0.05``, ``budget=0.3``, ``quality_floor=30``, ``max_cost=1.5`` or
    ``policy={type: NAME, ...}`` (a YAML flow mapping: any registered policy, plug-ins too).

    Returns the keyword :func:`policy_from_keywords` takes (``{"lam": 0.05}``,
    ``{"policy": {"type": NAME, ...}}``); the policy's own checks run when it is built.
    Raises ValueError naming the text."""
    if not isinstance(text, str):
        raise TypeError(f"a policy text must be a string, got {type(text).__name__}")
    shown = text if len(text) <= 100 else text[:100] + "..."
    if len(text) > MAX_POLICY_CHARS:
        raise ValueError(f"policy {shown!r}: longer than {MAX_POLICY_CHARS} characters")
    key, sep, value = text.strip().partition("=")
    key = key.strip()
    if not sep or key not in (*POLICY_KEYWORDS, "policy"):
        raise ValueError(
            f"policy {shown!r}: use lam=X, budget=X, quality_floor=X, max_cost=X or policy={{type: NAME, ...}}"
        )
    if key == "policy":
        import yaml

        try:
            spec = yaml.safe_load(value)  # data only: no tags that build objects
        except yaml.YAMLError as e:
            raise ValueError(f"policy {shown!r}: not a YAML mapping ({str(e).splitlines()[0]})") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise ValueError(f"policy {shown!r}: give a mapping with a type, e.g. policy={{type: lam, lam: 0.1}}")
        return {"policy": spec}
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"policy {shown!r}: {key} needs a number") from None
    return {key: number}


def policy_from_keywords(*, policy: Policy | Mapping | str | None = None, **kw) -> Policy | None:
    """The policy one request asks for: at most one of ``lam``, ``budget``, ``quality_floor``,
    ``max_cost`` or ``policy`` (a Policy, a spec, or its text form, :func:`parse_policy`). None
    when none is given."""
    if isinstance(policy, str):
        parsed = parse_policy(policy)
        if "policy" in parsed:
            policy = parsed["policy"]
        else:  # "lam=0.05": the keyword itself
            others = sorted(k for k, v in kw.items() if v is not None)
            if others:
                raise ValueError(f"give at most one policy keyword, got {others + ['policy']}")
            kw, policy = parsed, None
    given = {k: v for k, v in kw.items() if v is not None}
    unknown = sorted(set(given) - set(POLICY_KEYWORDS))
    if unknown:
        raise TypeError(f"unknown policy keyword(s) {unknown}; use one of {list(POLICY_KEYWORDS)} or policy=")
    if policy is not None:
        given["policy"] = policy
    if len(given) > 1:
        raise ValueError(f"give at most one policy keyword, got {sorted(given)}")
    if not given:
        return None
    ((key, value),) = given.items()
    if key == "policy":
        return build_policy(value)
    return build_policy({"type": key, key: value})
