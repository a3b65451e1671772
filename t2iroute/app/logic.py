"""What the app computes, without Streamlit: prompt parsing, tables for charts, bench folders.

Kept apart from the page scripts so that it is tested directly and the pages stay thin.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from t2iroute.errors import ConfigError, T2IRouteError

DEFAULT_ARTIFACT = "outputs/demo/testbed/router"  # written by `make demo`
DEFAULT_BENCH = "outputs/demo/testbed-bench"
DEFAULT_PROMPT = "three small striped blue squares left of a dotted green triangle"
#: errors the app shows in an error box (anything else is a bug and shows a traceback)
USER_ERRORS = (T2IRouteError, ValueError, TypeError, OSError, RuntimeError, LookupError)


def default_artifact() -> str:
    return os.environ.get("T2IROUTE_APP_ARTIFACT") or DEFAULT_ARTIFACT


def default_bench() -> str:
    return os.environ.get("T2IROUTE_APP_BENCH") or DEFAULT_BENCH


def default_log_dir() -> str:
    return os.environ.get("T2IROUTE_APP_LOG_DIR") or ""


def attach_log(router, folder: str) -> str | None:
    """Log the router's generations to ``folder`` (a decision log; empty: no log). Returns the
    folder in use. The app's router is shared by its sessions, so is its log."""
    folder = str(folder or "").strip()
    if not folder:
        router.log_decisions(None)
        return None
    path = str(Path(folder).expanduser().resolve())
    current = getattr(router.decision_log, "dir", None)
    if current is None or str(current) != path:
        router.log_decisions(path)
    return path


def record_ratings(router, ratings: dict[str, float]) -> list[str]:
    """Record a person's scores (metric units) for generated images as feedback (source ``user``);
    ``ratings`` maps image id to score. Returns the ids recorded. Raises naming the image when a
    score is not a finite number or the log does not hold the id."""
    import math

    for id, score in ratings.items():
        if not isinstance(score, (int, float)) or not math.isfinite(float(score)):
            raise ValueError(f"score for image {id}: a finite number is needed, got {score!r}")
    for id, score in ratings.items():
        router.feedback(id, float(score), source="user")
    return list(ratings)


def prediction_spread(decision) -> float:
    """How far apart the router's predicted qualities of this prompt's backends lie (their
    standard deviation; a small positive number when they coincide): the step a preference takes."""
    import numpy as np

    q = np.array([float(v) for v in decision.predicted_quality.values()], float)
    q = q[np.isfinite(q)]
    spread = float(q.std()) if len(q) > 1 else 0.0
    return spread if spread > 0 else 1e-3


PREFERENCES = ("as scored", "baseline", "routed", "the same")


def apply_preference(scores: Sequence[float], better: str, spread: float) -> list[float]:
    """The (baseline, routed) scores a person's preference implies: unchanged for ``as scored`` or
    when the preferred image already scores higher; otherwise both placed ``spread`` apart around
    their mean, the preferred one higher; ``the same``: both at their mean."""
    if better not in PREFERENCES:
        raise ValueError(f"preference {better!r}: use one of {list(PREFERENCES)}")
    b, r = (float(x) for x in scores)
    m = (b + r) / 2
    if better == "the same":
        return [m, m]
    if better == "baseline" and not b > r:
        return [m + spread / 2, m - spread / 2]
    if better == "routed" and not r > b:
        return [m - spread / 2, m + spread / 2]
    return [b, r]


def describe(e: BaseException) -> str:
    """One line for an error box: the type and the message."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def parse_prompts(text: Any) -> list[str]:
    """One prompt per non-empty line. Raises naming what is wrong (the router checks length)."""
    if not isinstance(text, str):
        raise TypeError(f"prompts must be text, got {type(text).__name__}")
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not prompts:
        raise ValueError("no prompt: enter one prompt per line")
    return prompts


def artifact_key(path: str) -> tuple[str, float]:
    """Cache key of a loaded router: the folder and its manifest's mtime (a retrained artifact reloads)."""
    if not str(path).strip():
        return "", -1.0
    p = Path(str(path).strip()).expanduser()
    try:
        mtime = (p / "manifest.json").stat().st_mtime
    except OSError:
        mtime = -1.0
    return str(p.resolve()), mtime


def load_router(path: str):
    from t2iroute.router.core import Router

    if not str(path).strip():
        raise ConfigError("no router artifact given: enter the folder written by `t2iroute train`")
    router = Router.load(Path(str(path).strip()).expanduser())
    router.warmup()  # load the embedding model now: the first decision's timings are then steady-state
    return router


def backend_table(decision) -> pd.DataFrame:
    """Every backend's predicted quality, cost, rank under the policy (and utility q - lambda * c
    where a lambda rule decided) for one decision."""
    names = list(decision.predicted_quality)
    df = pd.DataFrame(
        {
            "backend": names,
            "predicted_quality": list(decision.predicted_quality.values()),
            "cost": [decision.cost[b] for b in names],
            "rank": [decision.ranking.index(b) + 1 if b in decision.ranking else None for b in names],
        }
    )
    if decision.utility is not None:
        df["utility"] = [decision.utility[b] for b in names]
    df["chosen"] = df.backend == decision.backend
    return df


#: the app's policy choices: label -> (keyword of Router.route, help)
POLICIES = {
    "lambda": ("lam", "argmax predicted quality - lambda * cost"),
    "target mean cost": ("budget", "lambda calibrated so that the prompts entered cost this on average"),
    "quality floor": ("quality_floor", "per prompt, the cheapest backend predicted to reach this quality"),
    "max cost": ("max_cost", "per prompt, the best predicted backend costing at most this"),
    "policy text": (
        "policy",
        "any policy in the text form the CLI and the HTTP API take, e.g. budget=0.3 or "
        "policy={type: NAME, ...} (registered plug-in policies too)",
    ),
    "artifact default": (None, "the policy the router was trained with"),
}


def policy_label(decision) -> str:
    """A short text for the policy that decided, e.g. ``lam 0.05`` or ``budget 0.2 lambda 0.013``."""

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    p = dict(decision.policy)
    kind = str(p.pop("type", "?"))
    p.pop("calibrated_from", None)
    own = p.pop(kind, None)  # lam's lam, budget's budget, ...
    parts = [kind] + ([fmt(own)] if own is not None else [])
    parts += [f"{'lambda' if k == 'lam' else k} {fmt(v)}" for k, v in p.items()]
    return " ".join(parts)


def domain_warning(decisions: Sequence) -> str | None:
    """The out-of-domain warning for the prompts routed (None when every one is like the training
    prompts, or the router has no domain information)."""
    far = [d for d in decisions if getattr(d, "out_of_domain", None)]
    if not far:
        return None
    t = far[0].out_of_domain["threshold"]
    if len(decisions) == 1:
        dist = far[0].out_of_domain["distance"]
        how = "infinitely far" if dist is None else f"{dist:.3g} away"
        return (
            f"Out of domain: this prompt is {how} from the nearest training prompt (threshold {t:.3g}). "
            "The router has seen nothing like it: its predicted qualities are a guess, and the backends "
            "may draw nothing useful."
        )
    shown = ", ".join(f"#{decisions.index(d) + 1}" for d in far[:10]) + (" ..." if len(far) > 10 else "")
    return (
        f"Out of domain: {len(far)} of {len(decisions)} prompts are far from every training prompt "
        f"(distance over {t:.3g}): {shown}. Their predicted qualities are a guess."
    )


def floor_setting(router) -> tuple[float, str]:
    """(default quality floor, help text): the middle of the metric's observed range where the
    router knows it (a floor outside it is refused), else 0."""
    rng = getattr(router, "observed_range", None)
    if rng is None:
        return 0.0, "in the metric's units"
    lo, hi = rng
    return float(round((lo + hi) / 2, 4)), f"observed range of the training scores: [{lo:.4g}, {hi:.4g}]"


def decisions_table(decisions: Sequence) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": [d.prompt for d in decisions],
            "backend": [d.backend for d in decisions],
            "predicted_quality": [d.predicted_quality[d.backend] for d in decisions],
            "cost": [d.cost[d.backend] for d in decisions],
            "out_of_domain": [bool(getattr(d, "out_of_domain", None)) for d in decisions],
        }
    )


def backend_counts(decisions: Sequence, backend_names: Sequence[str]) -> pd.DataFrame:
    counts = pd.Series([d.backend for d in decisions]).value_counts()
    return pd.DataFrame({"backend": list(backend_names), "prompts": [int(counts.get(b, 0)) for b in backend_names]})


def default_baseline(router) -> str | None:
    """The most expensive configured backend: what you would run without a router."""
    names = [b for b in router.backend_names if b in router.backends]
    extra = [b for b in router.backends if b not in router.backend_names]
    if not names and not extra:
        return None
    cost = dict(zip(router.backend_names, router.costs))
    return max(names, key=lambda b: cost[b]) if names else extra[0]


def scorer_names() -> list[str]:
    from t2iroute.paths import CONF_DIR

    return sorted(p.stem for p in (Path(CONF_DIR) / "scorer").glob("*.yaml"))


def default_scorer(router) -> str | None:
    """``testbed_check`` for routers over the testbed models, ``clip_tiny`` for tiny random-weight
    backends (both offline); otherwise none:
    the real CLIP needs its weights on disk, so it is opt-in."""
    specs = [s for s in router.backend_specs.values() if s]
    if specs and all(str(s.get("model", "")).startswith("testbed") for s in specs):
        return "testbed_check"  # the testbed models' own metric, offline
    if specs and all(str(s.get("model", "")).startswith("tiny") for s in specs):
        return "clip_tiny"
    return None


def build_named_scorer(name: str):
    from omegaconf import OmegaConf

    from t2iroute.paths import CONF_DIR
    from t2iroute.scoring.base import load_scorer

    path = Path(CONF_DIR) / "scorer" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown scorer '{name}'; known: {scorer_names()}")
    # loaded now (its weights too): a scorer that cannot work here is an error before any image
    return load_scorer(OmegaConf.to_container(OmegaConf.load(path), resolve=True), name)


def read_bench(folder: str) -> tuple[dict, dict]:
    """summary.json and curves.json of a ``t2iroute bench`` output folder."""
    d = Path(str(folder).strip()).expanduser()
    if not str(folder).strip():
        raise ConfigError("no benchmark folder given")
    if not d.is_dir():
        raise FileNotFoundError(f"benchmark folder {d}: no such folder (run t2iroute bench ... out_dir={d})")
    out = []
    for name in ("summary.json", "curves.json"):
        f = d / name
        if not f.is_file():
            raise FileNotFoundError(f"benchmark folder {d}: {name} is missing (not a t2iroute bench folder?)")
        try:
            out.append(json.loads(f.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"benchmark folder {d}: {name} is damaged ({e})") from e
    summary, curves = out
    for key in ("backends", "router", "best_single"):
        if key not in summary:
            raise ValueError(f"benchmark folder {d}: summary.json lacks '{key}'")
    for key in ("router", "oracle"):
        if key not in curves or not {"cost", "quality"} <= set(curves[key]):
            raise ValueError(f"benchmark folder {d}: curves.json lacks the '{key}' curve")
    return summary, curves


def bench_frames(summary: dict, curves: dict) -> dict[str, pd.DataFrame]:
    """Long tables for the benchmark chart: hulls of router and oracle, raw router points,
    single backends (the points a router must beat)."""
    from t2iroute.training.evaluate import better_hull

    hib = bool(summary.get("higher_is_better", True))

    def hull(name, label):
        c, q = better_hull(curves[name]["cost"], curves[name]["quality"], hib)
        return pd.DataFrame({"cost": c, "quality": q, "series": label})

    rc = curves["router"]
    points = pd.DataFrame({"cost": rc["cost"], "quality": rc["quality"], "series": "router (each lambda)"})
    if "lambda" in rc:
        points["lambda"] = rc["lambda"]
    singles = pd.DataFrame(
        [{"backend": b, "cost": v["cost"], "quality": v["quality"]} for b, v in summary["backends"].items()]
    )
    return {
        "lines": pd.concat([hull("router", "router"), hull("oracle", "oracle")], ignore_index=True),
        "points": points,
        "backends": singles,
    }


def bench_headline(summary: dict) -> dict[str, Any]:
    r = summary["router"]
    return {
        "data": summary.get("data"),
        "metric": summary.get("metric"),
        "seed": summary.get("seed"),
        "n_test": summary.get("n_test"),
        "best single backend": summary["best_single"]["name"],
        "cost saved at equal quality (%)": r.get("cost_saved_pct"),
        "quality gain at equal cost": r.get("quality_gain_at_equal_cost"),
        "AIQ router": r.get("aiq"),
        "AIQ oracle": summary.get("oracle", {}).get("aiq"),
        "AIQ random mix": summary.get("random_mix", {}).get("aiq"),
    }
