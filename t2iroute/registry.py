"""One lazy registry for every swappable part: backends, scorers, featurizers, predictors, policies,
and model sources (what a diffusers backend's ``model: NAME:REF`` names).

Built-in entries are ``"module:Class"`` strings, imported only when first used. Third-party
packages add entries through Python entry points in the groups ``t2iroute.backends``,
``t2iroute.scorers``, ``t2iroute.featurizers``, ``t2iroute.predictors``, ``t2iroute.policies``
and ``t2iroute.model_sources``::

    # a plug-in's pyproject.toml
    [project.entry-points."t2iroute.policies"]
    cheapest_good = "my_pkg.policies:CheapestGood"
    [project.entry-points."t2iroute.backends"]
    wrapped_pipeline = "my_pkg.backend:WrappedPipeline"  # docs/plugins.md: a backend how-to

A spec is a mapping with one discriminator key, ``type``; the other keys are the class's
constructor arguments. Unknown names list the known ones, with a close-match suggestion.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Mapping

from t2iroute.errors import ConfigError

KINDS = ("backends", "scorers", "featurizers", "predictors", "policies", "model_sources")

#: kind -> name -> "module:Class" (or the class itself, for entries registered in process)
BUILTIN: dict[str, dict[str, Any]] = {
    "backends": {
        "diffusers": "t2iroute.backends.diffusers_backend:DiffusersBackend",
        "openai_images": "t2iroute.backends.remote:OpenAIImagesBackend",
    },
    "scorers": {
        "clip": "t2iroute.scoring.clip:CLIPScorer",
        "testbed_check": "t2iroute.testbed.checker:TestbedChecker",
    },
    "featurizers": {
        "embedding": "t2iroute.features.embedding:SentenceEmbeddingFeaturizer",
        "lexical": "t2iroute.features.lexical:LexicalFeaturizer",
        "llm": "t2iroute.features.llm:LLMComplexityFeaturizer",
        "static": "t2iroute.features.static:StaticEmbeddingFeaturizer",
    },
    "predictors": {
        "ridge": "t2iroute.predictors.linear:RidgePredictor",
        "tfidf_ridge": "t2iroute.predictors.linear:TfidfRidgePredictor",
        "knn": "t2iroute.predictors.knn:KNNPredictor",
        "lgbm": "t2iroute.predictors.lgbm:LGBMPredictor",
        "stack": "t2iroute.predictors.stack:StackPredictor",
        "auto": "t2iroute.predictors.auto:AutoPredictor",
        "mf": "t2iroute.predictors.mf:MFPredictor",
        "prior": "t2iroute.predictors.prior:PriorPredictor",
    },
    "policies": {
        "lam": "t2iroute.router.policy:LambdaPolicy",
        "budget": "t2iroute.router.policy:BudgetPolicy",
        "quality_floor": "t2iroute.router.policy:QualityFloorPolicy",
        "max_cost": "t2iroute.router.policy:MaxCostPolicy",
        "fixed": "t2iroute.router.policy:FixedPolicy",
    },
    # a diffusers backend's ``model: NAME:REF`` asks the source NAME for REF: a local pipeline folder
    # or a pipeline object (see t2iroute.backends.diffusers_backend.resolve_model)
    "model_sources": {
        "tiny": "t2iroute.backends.tiny:tiny_source",
        "testbed": "t2iroute.testbed.models:testbed_source",
    },
}

_SINGULAR = {
    "backends": "backend",
    "scorers": "scorer",
    "featurizers": "featurizer",
    "predictors": "predictor",
    "policies": "policy",
    "model_sources": "model source",
}
_EXTRA: dict[str, dict[str, Any]] = {k: {} for k in KINDS}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind '{kind}'; known: {list(KINDS)}")


def _entry_points(kind: str) -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=f"t2iroute.{kind}")}


def register(kind: str, name: str, target: Any) -> None:
    """Register ``target`` ("module:Class" or a class) under ``name`` in this process."""
    _check_kind(kind)
    _EXTRA[kind][name] = target


def names(kind: str) -> list[str]:
    """Every name known for ``kind``: built in, registered in process, and from entry points."""
    _check_kind(kind)
    return sorted(set(BUILTIN[kind]) | set(_EXTRA[kind]) | set(_entry_points(kind)))


def unknown_message(kind: str, name: Any, known: list[str] | None = None) -> str:
    known = names(kind) if known is None else known
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {_SINGULAR[kind]} type '{name}'{hint} known: {known}"


def get(kind: str, name: str):
    """The class registered as ``name`` (imported now)."""
    _check_kind(kind)
    target = _EXTRA[kind].get(name) or BUILTIN[kind].get(name)
    if target is None:
        eps = _entry_points(kind)
        if name not in eps:
            raise ConfigError(unknown_message(kind, name))
        try:
            return eps[name].load()
        except Exception as e:
            raise ConfigError(
                f"{_SINGULAR[kind]} type '{name}': its entry point {eps[name].value} "
                f"does not load ({type(e).__name__}: {e})"
            ) from e
    if not isinstance(target, str):
        return target
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)


def build(kind: str, spec: Mapping[str, Any] | None, *, default: str | None = None, **extra):
    """``{"type": NAME, **params}`` -> an instance of the class registered as NAME.

    ``extra`` keyword arguments (a backend's name, say) are passed along when the spec lacks them.
    """
    if spec is not None and not isinstance(spec, Mapping):
        raise ConfigError(f"{_SINGULAR[kind]} config must be a mapping with a 'type' key, got {spec!r}")
    params = dict(spec or {})
    params.pop("_target_", None)
    if "kind" in params and "type" not in params:
        raise ConfigError(
            f"{_SINGULAR[kind]} config {dict(spec or {})}: the discriminator key is 'type', "
            f"not 'kind' (type: {params['kind']})"
        )
    name = params.pop("type", default)
    if name is None:
        raise ConfigError(f"{_SINGULAR[kind]} config {dict(spec or {})} has no 'type'; known: {names(kind)}")
    cls = get(kind, str(name))
    for k, v in extra.items():
        params.setdefault(k, v)
    try:
        return cls(**params)
    except TypeError as e:
        raise ConfigError(f"{_SINGULAR[kind]} '{name}': bad parameters {sorted(params)}: {e}") from e


def type_name(kind: str, obj: Any) -> str | None:
    """The registered name of ``obj``'s class (first match), or None."""
    cls = obj if isinstance(obj, type) else type(obj)
    for n in names(kind):
        target = _EXTRA[kind].get(n) or BUILTIN[kind].get(n)
        if target is cls or target == f"{cls.__module__}:{cls.__qualname__}":
            return n
    return None
