"""Replay: the serving loop measured on a complete table, without serving (``t2iroute replay``).

Held-out prompts of a complete table stream in one at a time. The current router picks a backend
for each (greedy on its predictions, or with probability ``explore`` another backend, uniformly;
the propensity is kept); only the chosen backend's score is revealed (bandit feedback), and only
for a share ``autoscore`` of the served prompts. Every ``retrain_every`` prompts the router is
refitted on what it has seen (the start table plus the revealed cells: an incomplete table) and
judged on a fixed test split exactly as ``bench`` judges a router, beside the router trained on the
full table of every prompt the replay could have seen.

The router starts from the prior (``start=prior``: no table; backends without a step budget get
a flat prior) or from full rows on a share of the pool (``start=table:0.05``). While serving,
a router picks the largest lambda whose predicted mean quality on the prompts it has served stays
at the predicted quality of its best backend (equal predicted quality), with no anchor, so that
cheaper backends are tried where the model predicts no loss.

Regret is counted against the full-table router serving the same prompts at its own equal-quality
lambda: the score it would have got minus the score served (metric units, higher is better), and
the cost served minus its cost.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from t2iroute.errors import ConfigError
from t2iroute.features import build_featurizer
from t2iroute.predictors import build_predictor
from t2iroute.router.policy import calibrate_lambda
from t2iroute.rules import route_scores
from t2iroute.training.evaluate import summarize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Start:
    """Where the replay starts: ``prior`` (no table) or ``table`` with full rows on ``share`` of the pool."""

    kind: str
    share: float = 0.0

    @classmethod
    def parse(cls, text: Any) -> "Start":
        s = str(text).strip()
        if s == "prior":
            return cls("prior")
        if s.startswith("table:"):
            try:
                share = float(s.split(":", 1)[1])
            except ValueError:
                share = float("nan")
            if 0.0 < share < 1.0:
                return cls("table", share)
        raise ConfigError(f"start={text!r}: use prior or table:SHARE with SHARE in (0, 1), e.g. table:0.05")


def serving_lambda(q_hat: np.ndarray, costs: np.ndarray) -> float:
    """The largest lambda whose predicted mean quality (oriented) stays at the best backend's
    predicted mean: the router's equal-quality operating point, read on predictions alone."""
    if len(q_hat) == 0:
        return 0.0
    floor = float(q_hat.mean(axis=0).max())
    if float(q_hat.max(axis=1).mean()) <= floor + 1e-12:  # one backend predicted best everywhere
        return 0.0
    return calibrate_lambda(q_hat, costs, mean_quality_floor=floor)


def _prior_spec(cfg_predictor: dict, backends: list[str], specs: dict, featurizer) -> tuple[dict, bool]:
    """The prior's spec; a flat prior (every backend the same steps) when no backend has a step budget."""
    from t2iroute.training.prior import _per_backend, bundled_backend_spec, prior_spec

    spec = dict(cfg_predictor)
    if spec.get("type") != "prior":
        spec = {"type": "prior"}
    per = _per_backend(spec)
    known = [
        b for b in backends if "steps" in per.get(b, {}) or "steps" in (specs.get(b) or bundled_backend_spec(b) or {})
    ]
    flat = not known
    if flat:
        spec["backends"] = {b: {**per.get(b, {}), "steps": 1.0} for b in backends}
    return prior_spec(spec, backends, specs, featurizer), flat


def run_replay(cfg) -> dict:
    """``t2iroute replay``: see the module docstring. Writes ``summary.json``, ``replay.json`` and
    ``replay.png`` to ``out_dir``; returns the summary."""
    from t2iroute.training.train import (
        ANCHOR_BELOW_ROWS,
        _anchor_setting,
        _plain,
        _split,
        fit_predictor,
        load_matrix,
        routed,
    )

    t_start = time.perf_counter()
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    start = Start.parse(cfg["start"])
    stream_n, every = int(cfg["stream"]), int(cfg["retrain_every"])
    explore, share = float(cfg["explore"]), float(cfg["autoscore"])
    seed = int(cfg["seed"])
    fill = str(cfg.get("fill", "complete"))
    if not (0.0 <= explore < 1.0):
        raise ConfigError(f"explore={explore}: a share in [0, 1)")
    if not (0.0 <= share <= 1.0):
        raise ConfigError(f"autoscore={share}: a share in [0, 1]")
    M = load_matrix(cfg["data"], str(cfg["metric"]))
    if not M.complete.all():
        raise ConfigError(
            f"data={cfg['data'].get('name')}: replay reveals cells of a complete table; this one misses some"
        )
    tr, va, te = _split(M, cfg)
    rng = np.random.default_rng(seed)
    pool = rng.permutation(np.concatenate([tr, va]))
    n0 = int(round(start.share * len(pool))) if start.kind == "table" else 0
    if n0 + stream_n > len(pool):
        raise ConfigError(
            f"stream={stream_n}: the pool has {len(pool)} prompts, {n0} of them in the start table; "
            f"stream at most {len(pool) - n0}"
        )
    head, stream = pool[:n0], pool[n0 : n0 + stream_n]
    featurizer = build_featurizer(_plain(cfg["features"]))
    with featurizer.without_deadline():
        X = featurizer.transform(list(M.prompts))
    pcfg = dict(_plain(cfg["predictor"]) or {})
    specs = dict(_plain(cfg.get("backends")) or {})
    fitkw = dict(costs=M.costs, higher_is_better=M.higher_is_better, anchor=_anchor_setting(cfg), backends=M.backends)
    prior_flat = None
    if start.kind == "prior":
        pspec, prior_flat = _prior_spec(pcfg, M.backends, specs, featurizer)
        pcfg = {k: v for k, v in pspec.items()}

    def fit(rows: np.ndarray, Y: np.ndarray):
        if start.kind == "prior":
            from t2iroute.predictors.base import resolve_blocks

            p = build_predictor(resolve_blocks(dict(pcfg), featurizer.blocks_))
            if len(rows) == 0:
                return p.fit_without_table(X.shape[1])
            return p.fit(X[rows], Y, texts=list(M.prompts[rows]))
        return fit_predictor(pcfg, X[rows], Y, featurizer, M.prompts[rows], fill=fill, **fitkw)

    def judge(pred, rows: np.ndarray) -> dict:
        a = _anchor(pred, rows)
        q_hat = routed(pred.predict(X[te], texts=list(M.prompts[te])), M, a)
        s = summarize(q_hat, M.scores[te], M.costs, M.backends, higher_is_better=M.higher_is_better)
        r = s["router"]
        return {"cost_saved_pct": r["cost_saved_pct"], "quality_gain_at_equal_cost": r["quality_gain_at_equal_cost"]}

    def _anchor(pred, rows: np.ndarray) -> str | None:
        """Anchored as bench anchors (``anchor``), on the backend the model predicts best over the
        prompts it saw: the two-way means of a bandit table see no backend's offset on prompts with
        one cell, so they would anchor on whichever backend was served most."""
        setting = _anchor_setting(cfg)
        if setting == "auto":
            setting = getattr(pred, "anchored_", None)
            if setting is None:
                setting = len(rows) < ANCHOR_BELOW_ROWS
        if not setting or len(rows) == 0:
            return None
        q = M.sign * pred.predict(X[rows], texts=list(M.prompts[rows]))
        return M.backends[int(np.argmax(q.mean(axis=0)))]

    # the reference: the same predictor on the full table of every prompt the replay could see
    ref_rows = np.sort(pool)
    t0 = time.perf_counter()
    ref = fit(ref_rows, M.scores[ref_rows])  # the replay's own predictor, every cell seen
    full = judge(ref, ref_rows)
    ref_q = M.sign * ref.predict(X[stream], texts=list(M.prompts[stream]))
    ref_lam = serving_lambda(ref_q, M.costs)
    ref_choice = route_scores(ref_q, M.costs, ref_lam)
    log.info("full-table router: %s%% saved (fit %.0fs)", _pct(full["cost_saved_pct"]), time.perf_counter() - t0)

    k = len(M.backends)
    Y = np.full((len(M), k), np.nan)
    Y[head] = M.scores[head]
    seen = np.zeros(len(M), bool)
    seen[head] = True
    pred = fit(head, Y[head])
    checkpoints = [{"streamed": 0, "cells": int(n0 * k), **judge(pred, head), "fit_s": None}]
    served, explored, propensity = np.empty(len(stream), int), np.zeros(len(stream), bool), np.empty(len(stream))
    lam = None
    oriented = M.oriented
    for i0 in range(0, len(stream), every):
        block = stream[i0 : i0 + every]
        q = M.sign * pred.predict(X[block], texts=list(M.prompts[block]))
        lam = serving_lambda(q, M.costs)
        greedy = route_scores(q, M.costs, lam)
        choice = greedy.copy()
        if explore > 0 and k > 1:
            go = rng.random(len(block)) < explore
            other = rng.integers(0, k - 1, len(block))
            other = other + (other >= greedy)  # uniform over the other backends
            choice = np.where(go, other, greedy)
            explored[i0 : i0 + len(block)] = go
        propensity[i0 : i0 + len(block)] = np.where(choice == greedy, 1.0 - explore, explore / max(k - 1, 1))
        served[i0 : i0 + len(block)] = choice
        reveal = rng.random(len(block)) < share
        Y[block[reveal], choice[reveal]] = M.scores[block[reveal], choice[reveal]]
        seen[block[reveal]] = True
        rows = np.flatnonzero(seen)
        unseen = [M.backends[j] for j in np.flatnonzero(~np.isfinite(Y[rows]).any(axis=0))]
        t0 = time.perf_counter()
        if unseen:  # nothing teaches a backend never served (the prior with explore=0): keep the router
            fit_s = None
        else:
            pred = fit(rows, Y[rows])
            fit_s = time.perf_counter() - t0
        n_done = i0 + len(block)
        cp = {
            "streamed": int(n_done),
            "cells": int(np.isfinite(Y).sum()),
            **judge(pred, rows),
            "fit_s": fit_s,
            "serving_lambda": lam,
        }
        if unseen:
            cp["not_refitted"] = f"no cell of {', '.join(unseen)} yet"
        r = np.arange(n_done)
        s_idx = stream[:n_done]
        cp["regret_quality"] = float((oriented[s_idx, ref_choice[r]] - oriented[s_idx, served[r]]).sum())
        cp["extra_cost"] = float((M.costs[served[r]] - M.costs[ref_choice[r]]).sum())
        checkpoints.append(cp)
        log.info(
            "replay: %d streamed, %d cells, %s%% saved (full table %s%%), %s",
            n_done,
            cp["cells"],
            _pct(cp["cost_saved_pct"]),
            _pct(full["cost_saved_pct"]),
            f"fit {fit_s:.1f}s" if fit_s is not None else cp["not_refitted"] + ": not refitted",
        )
    final = checkpoints[-1]
    summary = {
        "data": str(cfg["data"].get("name", cfg["data"]["path"])),
        "metric": M.metric,
        "data_hash": M.data_hash(),
        "seed": seed,
        "start": str(cfg["start"]),
        "prior_flat": prior_flat,
        "predictor": pcfg if start.kind == "prior" else _plain(cfg["predictor"]),
        "stream": stream_n,
        "retrain_every": every,
        "explore": explore,
        "autoscore": share,
        "fill": fill,
        "n_test": int(len(te)),
        "n_pool": int(len(pool)),
        "start_prompts": int(n0),
        "backends": list(M.backends),
        "costs": [float(c) for c in M.costs],
        "full_table": {**full, "prompts": int(len(ref_rows)), "serving_lambda": ref_lam},
        "final": final,
        "share_of_full_saving": _ratio(final["cost_saved_pct"], full["cost_saved_pct"]),
        "served": {
            "by_backend": {b: int((served == j).sum()) for j, b in enumerate(M.backends)},
            "explored": int(explored.sum()),
            "mean_cost": float(M.costs[served].mean()),
            "mean_quality": float(M.scores[stream, served].mean()),
            "full_table_mean_cost": float(M.costs[ref_choice].mean()),
            "full_table_mean_quality": float(M.scores[stream, ref_choice].mean()),
            "min_propensity": float(propensity.min()) if len(stream) else None,
        },
        "checkpoints": checkpoints,
        "timings_s": {"total": time.perf_counter() - t_start},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "replay.json").write_text(json.dumps({"checkpoints": checkpoints, "full_table": summary["full_table"]}))
    plot_replay(summary, out_dir / "replay.png")
    return summary


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return float(a / b)


def plot_replay(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cps = summary["checkpoints"]
    x = [c["streamed"] for c in cps]
    y = [np.nan if c["cost_saved_pct"] is None else c["cost_saved_pct"] for c in cps]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(x, y, marker="o", label=f"replay (start={summary['start']}, explore={summary['explore']})")
    full = summary["full_table"]["cost_saved_pct"]
    if full is not None:
        ax[0].axhline(full, color="k", ls="--", label="full-table router")
    ax[0].axhline(0, color="grey", lw=0.5)
    ax[0].set_xlabel("prompts streamed")
    ax[0].set_ylabel("cost saved at equal quality (%)")
    ax[0].legend(fontsize=8)
    ax[1].plot(x[1:], [c["regret_quality"] for c in cps[1:]], marker="o")
    ax[1].set_xlabel("prompts streamed")
    ax[1].set_ylabel(f"cumulative regret ({summary['metric']})")
    fig.suptitle(f"{summary['data']} {summary['metric']} seed {summary['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
