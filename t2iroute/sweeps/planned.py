"""A sweep that generates the cells a plan chooses (``t2iroute sweep plan=prompts|cells|active
budget_share=0.5``), on either launcher.

The plan (:func:`t2iroute.training.plans.plan_cells`) is a deterministic function of its seed and
of the scores it has seen, and every launch skips the cells the table already holds, so a killed
planned sweep resumes by running again: it replays the same decisions from the same table and
generates only what is missing (no cell twice). Costs per backend: the backend config's
``cost_s``/``cost`` where given, else the median ``latency_s`` measured on the active plan's seed
rows, generated first (the same rows the plan would start with).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from t2iroute.errors import ConfigError
from t2iroute.training.plans import ActiveSettings, check_plan, plan_cells, seed_design_rows

log = logging.getLogger(__name__)

#: launch(cells) runs the sweep on those (prompt_id, backend) cells and returns its SweepResult
Launch = Callable[[set], object]


def table_scores(out_dir, prompt_ids: Sequence[str], backends: Sequence[str], metric: str | None = None):
    """(scores, latency) of the sweep folder as (n, k) arrays, NaN where not generated (seeds averaged)."""
    from t2iroute.sweeps.local import read_sweep

    n, k = len(prompt_ids), len(backends)
    table_dir = Path(out_dir) / "quality.parquet"
    if not table_dir.is_dir() or not any(table_dir.glob("part-*.parquet")):
        return np.full((n, k), np.nan), np.full((n, k), np.nan)
    df = read_sweep(table_dir)
    metrics = sorted(df["metric"].unique())
    if metric is None:
        if len(metrics) > 1:
            raise ConfigError(f"{table_dir}: holds metrics {metrics}; a planned sweep needs one")
        metric = metrics[0]
    df = df[df["metric"] == metric]
    index = pd.Index([str(p) for p in prompt_ids])
    out = []
    for col in ("score", "latency_s"):
        if col not in df.columns:
            out.append(np.full((n, k), np.nan))
            continue
        w = df.assign(prompt_id=df.prompt_id.astype(str)).pivot_table(
            index="prompt_id", columns="backend", values=col, aggfunc="mean"
        )
        out.append(w.reindex(index=index, columns=list(backends)).to_numpy(dtype=float))
    return out[0], out[1]


def run_planned_sweep(
    plan: str,
    share: float,
    prompts: pd.DataFrame,
    backends: Sequence[str],
    launch: Launch,
    out_dir,
    *,
    featurize: Callable[[list[str]], np.ndarray] | None = None,
    costs: Mapping[str, float | None] | None = None,
    seed: int = 0,
    settings: ActiveSettings | None = None,
) -> dict:
    """Run ``plan`` at ``share`` of the full sweep's cost over ``prompts`` x ``backends``.
    ``featurize(prompts) -> X`` (the active plan's committee reads it); ``costs``: configured cost
    per backend (None: measured). Returns what was spent and generated."""
    plan, share = check_plan(plan, share)
    names = list(backends)
    pids = [str(p) for p in prompts.prompt_id]
    n, k = len(pids), len(names)
    st = settings or ActiveSettings()
    totals = {"generated": 0, "failed": 0, "skipped_finished": 0, "launches": 0}

    def run(mask: np.ndarray) -> None:
        cells = {(pids[i], names[j]) for i, j in zip(*np.nonzero(mask))}
        res = launch(cells)
        totals["launches"] += 1
        totals["generated"] += int(res.n_generated)
        totals["failed"] += int(res.n_failed)
        totals["skipped_finished"] += int(res.n_skipped_done)

    if plan == "full":
        mask = np.ones((n, k), bool)
        run(mask)
        return {**totals, "plan": plan, "share": share, "cells": int(mask.sum())}
    given = {b: (None if costs is None else costs.get(b)) for b in names}
    have = None
    probe = np.zeros((n, k), bool)
    if plan == "prompts":
        c = np.ones(k)  # full rows: the share of prompts is the share of the cost, whatever the costs
    else:
        if any(v is None for v in given.values()):
            # measure: every backend on the seed rows (the active plan's first rows, so nothing is wasted)
            probe[seed_design_rows(n, share, np.random.default_rng(seed), st)] = True
            run(probe)
            have = None if plan == "active" else probe
        # the seed rows' latencies only: a resumed run measures what the first one measured
        _, lat = table_scores(out_dir, pids, names)
        lat = np.where(probe, lat, np.nan)
        c = np.empty(k)
        for j, b in enumerate(names):
            if given[b] is not None:
                c[j] = float(given[b])
            else:
                m = np.nanmedian(lat[:, j]) if np.isfinite(lat[:, j]).any() else np.nan
                if not np.isfinite(m) or m <= 0:
                    raise ConfigError(
                        f"backend '{b}': no cost (no cost_s in its config and no latency measured on the seed rows)"
                    )
                c[j] = m
        log.info("planned sweep: costs per image %s", dict(zip(names, np.round(c, 4))))

    def observe(mask: np.ndarray) -> np.ndarray:
        run(mask)
        s, _ = table_scores(out_dir, pids, names)
        return np.where(mask, s, np.nan)

    X = None
    if plan == "active":
        if featurize is None:
            raise ValueError("the active plan needs the prompts' features (featurize)")
        X = np.asarray(featurize([str(p) for p in prompts.prompt]), dtype=np.float64)
    mask = plan_cells(plan, share, c, n, seed=seed, observe=observe, X=X, have=have, settings=st)
    run(mask)
    spent = float((mask * c[None, :]).sum() / (n * c.sum()))
    return {
        **totals,
        "plan": plan,
        "share": share,
        "spent_share": spent,
        "cells": int(mask.sum()),
        "cells_by_backend": {b: int(v) for b, v in zip(names, mask.sum(axis=0))},
        "costs": {b: float(v) for b, v in zip(names, c)},
    }
