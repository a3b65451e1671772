"""Scorer protocol: ``score(images, prompts) -> list[float]``.

A scorer declares the quality-table metric it writes (``metric``) and whether higher is better
(``higher_is_better``, default True); sweeps record both, and the router maximizes the score in
its better direction. Scorers are registered in :mod:`t2iroute.registry` (group
``t2iroute.scorers`` for plug-ins).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Scorer(Protocol):
    metric: str  # the quality-table metric name it writes
    higher_is_better: bool

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]: ...


def build_scorer(spec: Mapping[str, Any] | None) -> Scorer | None:
    """``{"type": "clip", ...}`` -> a scorer (None for an empty spec)."""
    from t2iroute import registry

    if not spec:
        return None
    return registry.build("scorers", spec)
