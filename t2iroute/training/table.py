"""Quality tables: load, validate, pivot, split.

A quality table is tidy: one row per (prompt, backend, metric) with columns
``prompt_id, prompt, backend, metric, score`` and optionally ``cost_s`` and ``source`` (own
sweeps write both and add ``seed``, ``steps_run``, ``nfe``, ``latency_s``, ``image_path``; rows
of several seeds are averaged when pivoting). Without ``source`` every row is of one source
(:data:`DEFAULT_SOURCE`); without ``cost_s`` the costs come from the config (``data.costs``, or
a backend config's ``cost_s``/``cost``) and a backend left without any is an error naming it. Any metric name is accepted. Whether higher is better comes from the optional
``higher_is_better`` column (sweeps write the scorer's), else from the data config
(``data.higher_is_better``, default true). Everything downstream is blind to where a table
came from.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from t2iroute.errors import TableError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt_id", "prompt", "backend", "metric", "score")
OPTIONAL_COLUMNS = (
    "cost_s",
    "source",
    "seed",
    "steps_run",
    "nfe",
    "latency_s",
    "image_path",
    "higher_is_better",
    "stopped_early",
)
DEFAULT_SOURCE = "table"  # the one source of a table without a ``source`` column


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, CSV.gz or parquet table and validate it. Errors name the file."""
    path = Path(path)
    if not path.exists():
        raise TableError(f"quality table {path}: no such file")
    name = path.name.lower()
    try:
        if path.is_dir():  # a sweep's parquet dataset folder (part files)
            # temp files of a sweep in progress (or killed) are dotfiles: never data
            parts = [
                p
                for p in sorted(path.glob("part-*.parquet")) or sorted(path.glob("*.parquet"))
                if not p.name.startswith(".")
            ]
            if not parts:
                raise TableError(f"quality table {path}: folder holds no parquet files")
            df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        elif name.endswith(".parquet") or name.endswith(".pq"):
            df = pd.read_parquet(path)
        elif name.endswith(".csv") or name.endswith(".csv.gz"):
            df = pd.read_csv(path, keep_default_na=True)
        else:
            raise TableError(f"quality table {path}: unknown format (use .csv, .csv.gz or .parquet)")
    except TableError:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for garbled files
        raise TableError(f"quality table {path}: cannot be read ({type(e).__name__}: {e})") from e
    return validate_table(df, name=str(path))


def validate_table(df: pd.DataFrame, *, name: str = "quality table") -> pd.DataFrame:
    """Check the schema and return a cleaned copy (typed columns). Raises TableError."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise TableError(
            f"{name}: missing column(s) {missing}; a quality table needs {list(REQUIRED_COLUMNS)} "
            "(cost_s and source are optional)"
        )
    if len(df) == 0:
        raise TableError(f"{name}: the table is empty")
    df = df.copy()
    if "source" not in df.columns:
        df["source"] = DEFAULT_SOURCE
    if "cost_s" not in df.columns:  # costs then come from the config (see pivot)
        df["cost_s"] = np.nan
    for col in ("prompt_id", "prompt", "backend", "metric", "source"):
        if df[col].isna().any():
            rows = df.index[df[col].isna()][:5].tolist()
            raise TableError(f"{name}: column '{col}' has empty values (rows {rows})")
        df[col] = df[col].astype(str)
    score = pd.to_numeric(df["score"], errors="coerce")
    bad = score.isna() | ~np.isfinite(score.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        rows = df.index[bad][:5].tolist()
        examples = df.loc[bad, "score"].head(3).tolist()
        raise TableError(
            f"{name}: column 'score' has {int(bad.sum())} non-numeric or NaN value(s) (rows {rows}, e.g. {examples})"
        )
    df["score"] = score.astype(float)
    cost = pd.to_numeric(df["cost_s"], errors="coerce")
    nonblank_bad = cost.isna() & df["cost_s"].notna() & (df["cost_s"].astype(str).str.strip() != "")
    if nonblank_bad.any():
        rows = df.index[nonblank_bad][:5].tolist()
        raise TableError(f"{name}: column 'cost_s' has non-numeric value(s) (rows {rows})")
    if (cost < 0).any():
        raise TableError(f"{name}: column 'cost_s' has negative values")
    df["cost_s"] = cost.astype(float)
    if "higher_is_better" in df.columns:
        hib = df["higher_is_better"]
        ok = hib.isna() | hib.map(
            lambda v: isinstance(v, (bool, np.bool_)) or v in (0, 1, "true", "false", "True", "False")
        )
        if not ok.all():
            rows = df.index[~ok][:5].tolist()
            raise TableError(f"{name}: column 'higher_is_better' must be true/false (rows {rows})")
        df["higher_is_better"] = hib.map(
            lambda v: (
                None if pd.isna(v) else (v if isinstance(v, (bool, np.bool_)) else str(v).lower() in ("1", "true"))
            )
        )
        per = df.dropna(subset=["higher_is_better"]).groupby("metric")["higher_is_better"].nunique()
        if (per > 1).any():
            raise TableError(
                f"{name}: metric(s) {per[per > 1].index.tolist()} are marked both higher- and "
                "lower-is-better in column 'higher_is_better'"
            )
    key = ["prompt_id", "backend", "metric"] + (["seed"] if "seed" in df.columns else [])
    dup = df.duplicated(key, keep=False)
    if dup.any():
        ex = df.loc[dup, key].head(3).to_dict("records")
        raise TableError(f"{name}: {int(dup.sum())} duplicate ({', '.join(key)}) rows, e.g. {ex}")
    texts = df.groupby("prompt_id")["prompt"].nunique()
    if (texts > 1).any():
        ex = texts[texts > 1].index[:3].tolist()
        raise TableError(f"{name}: prompt_id(s) {ex} map to more than one prompt text")
    return df


@dataclass
class QualityMatrix:
    """One metric of a table as a prompts x backends matrix. A (prompt, backend) cell the table
    does not have is NaN in ``scores``: such prompts train (every observed cell teaches) but only
    complete rows are judged (:attr:`complete`)."""

    metric: str
    prompt_ids: np.ndarray  # (n,)
    prompts: np.ndarray  # (n,) str
    sources: np.ndarray  # (n,) str
    backends: list[str]
    scores: np.ndarray  # (n, k)
    costs: np.ndarray  # (k,) cost per call of each backend
    higher_is_better: bool = True  # the metric's direction (scores are stored as they are)
    cost_origin: dict[str, str] = field(default_factory=dict)  # backend -> "table median" | "config"

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def subset(self, idx: np.ndarray) -> "QualityMatrix":
        return QualityMatrix(
            self.metric,
            self.prompt_ids[idx],
            self.prompts[idx],
            self.sources[idx],
            list(self.backends),
            self.scores[idx],
            self.costs.copy(),
            self.higher_is_better,
            dict(self.cost_origin),
        )

    @property
    def observed(self) -> np.ndarray:
        """(n, k) bool: the cells the table has."""
        return np.isfinite(self.scores)

    @property
    def complete(self) -> np.ndarray:
        """(n,) bool: the prompts every backend was scored on."""
        return self.observed.all(axis=1)

    def coverage(self, rows: np.ndarray | None = None) -> dict:
        """What the table observed (of ``rows``, default all): cells, their cost in the table's
        unit (each cell at its backend's cost), complete-row prompts, and per-backend cell counts."""
        obs = self.observed if rows is None else self.observed[rows]
        return {
            "prompts": int(len(obs)),
            "complete_prompts": int(obs.all(axis=1).sum()),
            "observed_cells": int(obs.sum()),
            "cells": int(obs.size),
            "observed_cost": float((obs * self.costs[None, :]).sum()),
            "full_sweep_cost": float(len(obs) * self.costs.sum()),
            "cells_by_backend": {b: int(v) for b, v in zip(self.backends, obs.sum(axis=0))},
        }

    @property
    def sign(self) -> float:
        return 1.0 if self.higher_is_better else -1.0

    @property
    def oriented(self) -> np.ndarray:
        """Scores with higher always better (what predictors learn and routers maximize)."""
        return self.sign * self.scores

    def data_hash(self) -> str:
        h = hashlib.sha256()
        h.update(self.metric.encode())
        h.update("\x00".join(self.backends).encode())
        h.update("\x00".join(map(str, self.prompt_ids)).encode())
        h.update(np.ascontiguousarray(self.scores, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(self.costs, dtype=np.float64).tobytes())
        if not self.higher_is_better:
            h.update(b"lower-is-better")
        return h.hexdigest()[:16]


def pivot(
    df: pd.DataFrame,
    metric: str,
    *,
    costs: Mapping[str, float] | None = None,
    backends: list[str] | None = None,
    name: str = "quality table",
    higher_is_better: bool | None = None,
    fallback_costs: Mapping[str, float] | None = None,
) -> QualityMatrix:
    """Pivot one metric to prompts x backends.

    Prompts missing backends are kept, their missing cells NaN (:attr:`QualityMatrix.complete`
    tells which prompts have every backend; the count is logged).
    A backend's cost is the median ``cost_s`` of its rows; ``costs`` (the data config's) fills
    backends whose rows carry no cost and overrides the table where given; ``fallback_costs``
    (the backend configs' ``cost_s``/``cost``) fills only what neither gives. The metric's
    direction: ``higher_is_better`` (from config) where given, else the table's
    ``higher_is_better`` column, else True; config and table disagreeing is an error.
    """
    metrics = sorted(df["metric"].unique())
    if metric not in metrics:
        raise TableError(f"{name}: metric '{metric}' not in the table; it has {metrics}")
    d = df[df["metric"] == metric]
    table_hib = None
    if "higher_is_better" in d.columns and d["higher_is_better"].notna().any():
        table_hib = bool(d["higher_is_better"].dropna().iloc[0])
    if higher_is_better is not None and table_hib is not None and bool(higher_is_better) != table_hib:
        raise TableError(
            f"{name}: metric '{metric}' is marked higher_is_better={table_hib} in the table "
            f"but the config says {bool(higher_is_better)}"
        )
    hib = bool(higher_is_better) if higher_is_better is not None else (True if table_hib is None else table_hib)
    if backends is not None:
        unknown = sorted(set(backends) - set(d["backend"].unique()))
        if unknown:
            raise TableError(
                f"{name}: backend(s) {unknown} have no '{metric}' rows; the table has {sorted(d['backend'].unique())}"
            )
        d = d[d["backend"].isin(backends)]
    # several seeds per (prompt, backend) are averaged
    wide = d.pivot_table(index="prompt_id", columns="backend", values="score", aggfunc="mean")
    order = backends if backends is not None else sorted(wide.columns)
    wide = wide[order]
    n_incomplete = int((~wide.notna().all(axis=1)).sum())
    if n_incomplete:
        log.info(
            "%s: %d of %d prompts miss a backend for metric %s (%d of %d cells observed): they train, "
            "complete prompts are judged",
            name,
            n_incomplete,
            len(wide),
            metric,
            int(wide.notna().to_numpy().sum()),
            wide.size,
        )
    meta = d.drop_duplicates("prompt_id").set_index("prompt_id").loc[wide.index]

    cost_origin: dict[str, str] = {}
    cost_values = []
    costs = dict(costs or {})
    fallback = {k: v for k, v in dict(fallback_costs or {}).items() if v is not None}
    c_col = d["cost_s"] if "cost_s" in d.columns else pd.Series(np.nan, index=d.index)
    no_cost = [
        b for b in order if costs.get(b) is None and b not in fallback and c_col[d["backend"] == b].dropna().empty
    ]
    if no_cost:
        example = ", ".join(f"{b}: <cost per image>" for b in no_cost)
        raise TableError(
            f"{name}: backend(s) {no_cost} have no cost: no cost_s in the table for them and none in "
            f"config; give costs as data.costs={{{example}}} or add a cost_s column"
        )
    for b in order:
        c_tab = c_col[d["backend"] == b].dropna()
        if b in costs and costs[b] is not None:
            cost_values.append(_cost(costs[b], f"data.costs.{b}", name))
            cost_origin[b] = "config"
        elif len(c_tab):
            cost_values.append(float(c_tab.median()))
            cost_origin[b] = "table median"
        else:
            cost_values.append(_cost(fallback[b], f"backend '{b}' config's cost", name))
            cost_origin[b] = "backend config"
    log.info("backend costs: %s", {b: f"{c:.4g} ({cost_origin[b]})" for b, c in zip(order, cost_values)})
    return QualityMatrix(
        metric=metric,
        prompt_ids=wide.index.to_numpy(dtype=str),
        prompts=meta["prompt"].to_numpy(dtype=str),
        sources=(
            meta["source"].to_numpy(dtype=str) if "source" in meta.columns else np.full(len(meta), DEFAULT_SOURCE)
        ),
        backends=list(order),
        scores=wide.to_numpy(dtype=float),
        costs=np.asarray(cost_values, dtype=float),
        higher_is_better=hib,
        cost_origin=cost_origin,
    )


def _cost(value, what: str, name: str) -> float:
    try:
        c = float(value)
    except (TypeError, ValueError):
        c = float("nan")
    if not np.isfinite(c) or c < 0:
        raise TableError(f"{name}: {what}={value!r}: a cost must be a number >= 0")
    return c


def _norm_text(s: str) -> str:
    return " ".join(str(s).lower().split())


def split_prompts(
    prompts: np.ndarray,
    sources: np.ndarray,
    *,
    fractions: tuple[float, ...] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> list[np.ndarray]:
    """Seeded split of row indices, stratified by source, grouped by prompt text.

    Rows whose normalized text is identical form one group and always land in the same part,
    so no prompt text straddles parts. Returns one index array per fraction.
    """
    fractions = tuple(float(f) for f in fractions)
    if any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions {fractions} must be >= 0 and sum to 1")
    prompts = np.asarray(prompts)
    sources = np.asarray(sources)
    rng = np.random.default_rng(seed)
    keys = np.array([_norm_text(p) for p in prompts])
    parts: list[list[int]] = [[] for _ in fractions]
    # a group's stratum is the source of its first row
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    by_source: dict[str, list[str]] = {}
    for k, rows in groups.items():
        by_source.setdefault(str(sources[rows[0]]), []).append(k)
    cum = np.cumsum(fractions)
    for src in sorted(by_source):
        ks = sorted(by_source[src])
        order = rng.permutation(len(ks))
        n = len(ks)
        bounds = np.round(cum * n).astype(int)
        start = 0
        for p, end in enumerate(bounds):
            for j in order[start:end]:
                parts[p].extend(groups[ks[j]])
            start = end
    return [np.sort(np.asarray(p, dtype=int)) for p in parts]
