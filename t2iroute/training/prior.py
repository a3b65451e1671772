"""Routers from a prior (``predictor=prior``): the backends' step budgets, ceilings and costs, and
a router trained with no quality table at all (``t2iroute train predictor=prior 'backends=[...]'``).

A backend's ``steps`` come from ``predictor.backends.<name>.steps``, else from its config
(``backends=[...]``, or the bundled config of that name); its ``ceiling`` (default 1: the family's
full quality) and ``cost`` from ``predictor.backends.<name>``. With no table, costs are the
configured ones where every backend has one, else each backend's step budget (unit ``steps``).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from t2iroute.errors import ConfigError

log = logging.getLogger(__name__)

#: the spec keys training reads and the predictor does not take
_TRAINING_KEYS = ("backends", "complexity")
#: the default policy of a prior router: the cheapest backend predicted to reach this share of the
#: converged quality (the prior's scale is 0-1), else the best
DEFAULT_FLOOR = 0.9


def bundled_backend_spec(name: str) -> dict | None:
    """The bundled backend config ``conf/backends/<name>.yaml`` as a dict, or None."""
    from t2iroute.paths import bundled_config

    return bundled_config("backends", name)


def _per_backend(spec: Mapping[str, Any]) -> dict[str, dict]:
    given = spec.get("backends") or {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"predictor.backends={given!r:.80}: a mapping of backend -> {{steps, ceiling, cost}}")
    out = {}
    for name, v in given.items():
        v = dict(v or {})
        unknown = sorted(set(v) - {"steps", "ceiling", "cost"})
        if unknown:
            raise ConfigError(f"predictor.backends.{name}.{unknown[0]}: unknown key; use steps, ceiling or cost")
        out[str(name)] = v
    return out


def prior_spec(spec: Mapping[str, Any], backends, specs: Mapping[str, Any] | None, featurizer=None) -> dict:
    """The prior predictor's spec for ``backends``: ``steps`` and ``ceiling`` per backend and the
    complexity column, from the training-only keys (errors name the key)."""
    spec = dict(spec)
    per = _per_backend(spec)
    unknown = sorted(set(per) - set(backends))
    if unknown:
        raise ConfigError(f"predictor.backends.{unknown[0]}: not a backend here ({list(backends)})")
    steps, ceiling = [], []
    for b in backends:
        own = dict((specs or {}).get(b) or bundled_backend_spec(b) or {})
        s = per.get(b, {}).get("steps", own.get("steps"))
        if s is None:
            raise ConfigError(
                f"predictor=prior: backend {b!r} has no steps; give predictor.backends.{b}.steps=N "
                "(the step budget of its model family it is worth)"
            )
        c = per.get(b, {}).get("ceiling", 1.0)
        for key, v, lo, hi in (("steps", s, 1e-6, 1e6), ("ceiling", c, 0.0, 1.0)):
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and lo <= float(v) <= hi
            if not ok:
                raise ConfigError(f"predictor.backends.{b}.{key}={v!r}: a number in [{lo:g}, {hi:g}]")
        steps.append(float(s))
        ceiling.append(float(c))
    mode = str(spec.get("complexity", "auto"))
    if mode not in ("auto", "llm", "lexical"):
        raise ConfigError(f"predictor.complexity={mode!r}: use auto, llm or lexical")
    from t2iroute.complexity import COUNTS

    col, lex = None, None
    names = list(getattr(featurizer, "feature_names_", []) or [])
    if mode in ("auto", "llm") and "llm:expected_complexity" in names:
        col = names.index("llm:expected_complexity")
    elif mode == "llm":
        raise ConfigError("predictor.complexity=llm: add the llm featurizer (features=[embedding,lexical,llm])")
    elif all(f"lexical:{c}" in names for c in COUNTS):
        lex = [names.index(f"lexical:{c}") for c in COUNTS]
    else:
        raise ConfigError(
            "predictor=prior reads prompt complexity from the llm or lexical features: add lexical "
            "(features=[embedding,lexical])"
        )
    for k in _TRAINING_KEYS:
        spec.pop(k, None)
    spec.update(steps=steps, ceiling=ceiling, complexity_column=col, lexical_columns=lex)
    tau = spec.get("tau")
    if tau is not None:
        spec["tau"] = list(tau)
    return spec


def prior_costs(spec: Mapping[str, Any], backends, steps: list[float]) -> tuple[np.ndarray, str]:
    """Costs with no table: every backend's ``predictor.backends.<name>.cost``, or the step budgets."""
    per = _per_backend(spec)
    given = {b: per[b]["cost"] for b in backends if "cost" in per.get(b, {})}
    if given and len(given) < len(backends):
        missing = [b for b in backends if b not in given]
        raise ConfigError(
            f"predictor.backends.{missing[0]}.cost: give every backend a cost, or none (the costs are then "
            "the step budgets)"
        )
    if not given:
        return np.asarray(steps, dtype=np.float64), "steps"
    for b, v in given.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < float(v) <= 1e15:
            raise ConfigError(f"predictor.backends.{b}.cost={v!r}: a cost per image > 0")
    return np.asarray([float(given[b]) for b in backends]), "s"
