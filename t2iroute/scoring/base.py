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


def offline_scorers(*, notes: bool = False) -> list[str]:
    """The package's scorer configs (``conf/scorer/NAME.yaml``) that need no download: no open_clip
    tag to fetch (``pretrained`` null or a file on this machine). ``notes``: a CLIP with random
    weights is shown as ``NAME (random weights)``."""
    import os
    from pathlib import Path

    from omegaconf import OmegaConf

    from t2iroute.paths import CONF_DIR

    names = []
    for p in sorted((Path(CONF_DIR) / "scorer").glob("*.yaml")):
        try:
            spec = OmegaConf.to_container(OmegaConf.load(p))
        except Exception:  # noqa: BLE001 -- only a hint
            continue
        pre = spec.get("pretrained") if isinstance(spec, dict) else None
        if pre is None or (isinstance(pre, str) and os.path.isfile(pre)):
            random = notes and isinstance(spec, dict) and spec.get("type") == "clip" and pre is None
            names.append(p.stem + (" (random weights)" if random else ""))
    return names


def load_scorer(spec: Mapping[str, Any] | None, name: str | None = None) -> Scorer | None:
    """Build the scorer of ``spec`` and load what it needs now (its ``warmup()``, else one score of
    a blank image), so that a scorer that cannot work fails before any image is generated. Raises
    ConfigError naming the scorer (``name``: its config option, e.g. ``clip``) and why, with the
    scorers that need no download."""
    from t2iroute.errors import ConfigError

    if not spec:
        return None
    name = name or str(spec.get("type", "?"))
    try:
        scorer = build_scorer(spec)
        warm = getattr(scorer, "warmup", None)
        if callable(warm):
            warm()
        else:
            from PIL import Image

            scorer.score([Image.new("RGB", (64, 64), "white")], ["a red circle"])
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 -- a scorer that cannot load, whatever it raises
        why = " ".join(str(e).split()) or type(e).__name__
        ok = [n for n in offline_scorers(notes=True) if n.split(" ")[0] != name]
        hint = f" (scorers that need no download: {', '.join(ok)})" if ok else ""
        raise ConfigError(f"scorer={name}: cannot load: {why}{hint}") from None
    return scorer
