"""Scorer protocol and registry: ``score(images, prompts) -> list[float]``, higher is better."""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from t2iroute.errors import ConfigError

SCORERS: dict[str, str] = {
    "clip": "t2iroute.scoring.clip:CLIPScorer",
}


@runtime_checkable
class Scorer(Protocol):
    metric: str  # the quality-table metric name it writes

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]: ...


def build_scorer(spec: Mapping[str, Any] | None) -> Scorer | None:
    if not spec:
        return None
    spec = dict(spec)
    kind = spec.pop("kind", "clip")
    if kind not in SCORERS:
        raise ConfigError(f"unknown scorer '{kind}'; known: {sorted(SCORERS)}")
    mod, _, cls = SCORERS[kind].partition(":")
    try:
        return getattr(importlib.import_module(mod), cls)(**spec)
    except TypeError as e:
        raise ConfigError(f"scorer '{kind}': bad parameters {sorted(spec)}: {e}") from e
