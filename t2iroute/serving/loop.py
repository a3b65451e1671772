"""The serving loop's settings on a server's router, the same on both engines: the decision log,
exploration and automatic scores (``serve log_dir= log.* explore= autoscore.*``).

:func:`check_loop` validates the settings where the command runs (errors name the key);
:func:`apply_loop` applies them to the router a server serves (in the ``t2iroute serve``
process, or in each router replica of ``engine=ray``) and returns the autoscorer, if any."""

from __future__ import annotations

from typing import Any, Mapping

from t2iroute.errors import ConfigError


def loop_settings(cfg) -> dict[str, Any]:
    """The loop's keys of a ``serve`` config as a plain dict (what ``create_app(loop=...)`` takes)."""
    lg = dict(cfg.get("log") or {})
    auto = dict(cfg.get("autoscore") or {})
    return {
        "log_dir": cfg.get("log_dir"),
        "log": {
            "prompts": bool(lg.get("prompts", True)),
            "features": bool(lg.get("features", True)),
            "max_bytes": int(float(lg.get("max_mb", 256.0)) * 2**20),
            "max_files": int(lg.get("max_files", 8)),
        },
        "explore": float(cfg.get("explore", 0.0) or 0.0),
        "autoscore": {
            "share": float(auto.get("share", 0.0) or 0.0),
            "scorer": str(auto.get("scorer", "clip")),
            "max_queue": int(auto.get("max_queue", 64)),
        },
    }


def check_loop(loop: Mapping[str, Any]) -> None:
    """Refuse settings the loop cannot run with, naming the key."""
    explore = float(loop.get("explore", 0.0))
    if not 0.0 <= explore < 1.0:
        raise ConfigError(f"explore={explore}: a probability in [0, 1)")
    share = float((loop.get("autoscore") or {}).get("share", 0.0))
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"autoscore.share={share}: a share in [0, 1]")
    if share > 0 and not loop.get("log_dir"):
        raise ConfigError(f"autoscore.share={share}: scores go to the decision log; give log_dir=DIR")


def load_loop_scorer(loop: Mapping[str, Any]):
    """The autoscore scorer, loaded now (None when autoscore is off): a ConfigError naming
    ``autoscore.scorer`` if it cannot load."""
    auto = loop.get("autoscore") or {}
    if float(auto.get("share", 0.0)) <= 0:
        return None
    from t2iroute.paths import bundled_config
    from t2iroute.scoring import load_scorer

    name = str(auto.get("scorer", "clip"))
    spec = bundled_config("scorer", name) or {"type": name}
    try:
        return load_scorer(spec, name)
    except ConfigError as e:
        raise ConfigError(f"autoscore.scorer={name}: {e}") from None


def apply_loop(router, loop: Mapping[str, Any] | None, scorer=None):
    """Set the decision log and exploration on ``router``; start the autoscorer (``scorer``: one
    already loaded, else it loads here). Returns the autoscorer or None."""
    if not loop:
        return None
    check_loop(loop)
    if loop.get("log_dir"):
        router.log_decisions(str(loop["log_dir"]), **dict(loop.get("log") or {}))
    router.explore = float(loop.get("explore", 0.0))
    auto = loop.get("autoscore") or {}
    if float(auto.get("share", 0.0)) <= 0:
        return None
    from t2iroute.serving.autoscore import AutoScorer

    scorer = scorer if scorer is not None else load_loop_scorer(loop)
    try:
        return AutoScorer(router, scorer, share=float(auto["share"]), max_queue=int(auto.get("max_queue", 64)))
    except ValueError as e:
        raise ConfigError(f"autoscore.scorer={auto.get('scorer')}: {e}") from None
