"""Featurizer protocol, registry and composition."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from t2iroute.errors import ConfigError


@runtime_checkable
class Featurizer(Protocol):
    """Turns prompts into a float matrix with stable column names.

    ``spec()`` returns a JSON-able dict from which :func:`build_featurizer` rebuilds an equal
    featurizer (this is what a router artifact stores: never the object itself).
    """

    name: str

    @property
    def feature_names_(self) -> list[str]: ...

    def transform(self, prompts: Sequence[str]) -> np.ndarray: ...

    def spec(self) -> dict[str, Any]: ...


def build_one(name: str, params: Mapping[str, Any] | None = None) -> Featurizer:
    """One featurizer: ``params`` may carry ``type`` (default: ``name``)."""
    from t2iroute import registry

    params = dict(params or {})
    params.setdefault("type", name)
    return registry.build("featurizers", params)


def featurizer_parts(spec: Mapping[str, Any] | Sequence[Any]) -> list[dict[str, Any]]:
    """A featurizer spec as a list of part specs, each with its ``type``: a mapping
    ``{name: params}`` (Hydra's features node), a list of names or specs, or a
    :meth:`ComposedFeaturizer.spec` (``{"featurizers": [...]}``)."""
    if isinstance(spec, Mapping) and "featurizers" in spec:
        spec = spec["featurizers"]
    if isinstance(spec, Mapping):
        return [{"type": k, **dict(v or {})} for k, v in spec.items()]
    parts = []
    for s in spec:
        if isinstance(s, str):
            parts.append({"type": s})
        elif isinstance(s, Mapping):
            s = dict(s)
            if "kind" in s and "type" not in s:
                raise ConfigError(f"featurizer spec {s}: the discriminator key is 'type', not 'kind'")
            s.setdefault("type", s.pop("name", None))
            s.pop("name", None)
            parts.append(s)
        else:
            raise ConfigError(f"featurizer part {s!r:.60} is not a mapping")
    return parts


def build_featurizer(spec: Mapping[str, Any] | Sequence[Any]) -> "ComposedFeaturizer":
    """Build from a mapping ``{name: params}`` (Hydra's features node) or a list of specs."""
    parts = featurizer_parts(spec)
    if not parts:
        raise ConfigError("no featurizer configured (features=[embedding,lexical] for example)")
    return ComposedFeaturizer([build_one(p.pop("type"), p) for p in parts])


class ComposedFeaturizer:
    """Concatenation of featurizers; columns are prefixed with each part's name."""

    name = "composed"

    def __init__(self, parts: Sequence[Featurizer]):
        self.parts = list(parts)
        self.last_timings_: dict[str, float] = {}

    @property
    def feature_names_(self) -> list[str]:
        return [f"{p.name}:{n}" for p in self.parts for n in p.feature_names_]

    @property
    def blocks_(self) -> dict[str, slice]:
        """Column slice of each part, by part name; without an ``embedding`` part, ``embedding``
        also names the first part that is a text embedding (``text_embedding = True``, e.g.
        ``static``), so predictors' ``block: embedding`` reads it."""
        out, start = {}, 0
        for p in self.parts:
            n = len(p.feature_names_)
            out[p.name] = slice(start, start + n)
            start += n
        if "embedding" not in out:
            alias = next((p.name for p in self.parts if getattr(p, "text_embedding", False)), None)
            if alias is not None:
                out["embedding"] = out[alias]
        return out

    def transform(self, prompts: Sequence[str]) -> np.ndarray:
        import time

        prompts = list(prompts)
        mats, timings = [], {}
        for p in self.parts:
            t0 = time.perf_counter()
            m = np.asarray(p.transform(prompts), dtype=np.float32)
            timings[p.name] = time.perf_counter() - t0
            if m.shape != (len(prompts), len(p.feature_names_)):
                raise RuntimeError(
                    f"featurizer {p.name} returned shape {m.shape}, expected {(len(prompts), len(p.feature_names_))}"
                )
            mats.append(m)
        self.last_timings_ = timings
        return np.hstack(mats) if mats else np.zeros((len(prompts), 0), np.float32)

    def spec(self) -> dict[str, Any]:
        return {"featurizers": [{"type": p.name, **p.spec()} for p in self.parts]}

    @contextmanager
    def without_deadline(self):
        """Lift the parts' per-call deadlines (``deadline_s``: meant for routing) in this block,
        e.g. while featurizing a whole training table; the saved spec keeps them."""
        saved = [(p, p.deadline_s) for p in self.parts if hasattr(p, "deadline_s")]
        for p, _ in saved:
            p.deadline_s = None
        try:
            yield self
        finally:
            for p, d in saved:
                p.deadline_s = d

    def warmup(self) -> None:
        """Load every part's models now (those with a ``warmup`` method) rather than on first use."""
        for p in self.parts:
            if hasattr(p, "warmup"):
                p.warmup()
