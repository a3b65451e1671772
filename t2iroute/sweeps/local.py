"""The sequential sweep (``launcher=local``) and the table format every sweep writes: prompts x backends x seeds -> images -> scores -> rows of a quality table.

Output: ``OUT/quality.parquet``, a parquet dataset folder of part files. Each chunk of finished
work is one part file written atomically (temp file + rename), so killing a sweep at any moment
loses at most the chunk in flight; re-running the same command reads the finished row keys
(prompt_id, backend, seed) and does only what is missing: no row lost, none duplicated, no
finished work repeated. Shards (``shard=i num_shards=n``) split the prompts deterministically by
a hash of their id and write part files named by shard, so shards of one sweep can write into
one folder, or into several that :func:`merge_tables` joins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from t2iroute.paths import atomic_path

log = logging.getLogger(__name__)

KEY = ("prompt_id", "backend", "seed")


def shard_of(prompt_id: str, num_shards: int) -> int:
    return int(hashlib.sha1(str(prompt_id).encode()).hexdigest(), 16) % num_shards


def finished_keys(table_dir: Path) -> set[tuple]:
    if not table_dir.exists():
        return set()
    parts = sorted(table_dir.glob("part-*.parquet"))
    if not parts:
        return set()
    df = pd.concat([pd.read_parquet(p, columns=list(KEY)) for p in parts])
    return set(zip(df.prompt_id.astype(str), df.backend.astype(str), df.seed.astype(int)))


def _write_part(table_dir: Path, rows: list[dict], shard: int) -> Path:
    table_dir.mkdir(parents=True, exist_ok=True)
    name = f"part-{shard:04d}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    with atomic_path(table_dir / name) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
    return table_dir / name


@dataclass
class SweepResult:
    out_dir: Path
    n_items: int
    n_skipped_done: int
    n_generated: int
    n_failed: int
    n_retried: int = 0  # items run again after their worker died (launcher=ray)
    n_workers_replaced: int = 0


def clean_temp_parts(table_dir: Path) -> list[Path]:
    """Remove temp part files that killed sweeps left (those of running processes stay)."""
    import re

    from t2iroute.paths import pid_alive

    removed = []
    for p in Path(table_dir).glob(".tmp-*"):
        m = re.match(r"\.tmp-(\d+)-", p.name)
        if m is not None and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@dataclass
class SweepPlan:
    """What a sweep has to do: every item of this shard, and those not finished yet."""

    out_dir: Path
    table_dir: Path
    n_items: int
    todo: list[tuple]  # (backend, prompt_id, prompt, source, seed)

    @property
    def n_skipped(self) -> int:
        return self.n_items - len(self.todo)


def plan_sweep(
    backend_names: Sequence[str],
    prompts: pd.DataFrame,
    seeds: Sequence[int],
    out_dir,
    *,
    shard: int = 0,
    num_shards: int = 1,
    cells: set[tuple[str, str]] | None = None,
) -> SweepPlan:
    """Check the arguments, clean killed sweeps' temp parts, read the finished keys: the work left.
    ``cells``: only these (prompt_id, backend) cells (a sweep plan's, :mod:`t2iroute.sweeps.planned`)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard={shard} num_shards={num_shards}: need 0 <= shard < num_shards")
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    out_dir = Path(out_dir)
    table_dir = out_dir / "quality.parquet"
    if table_dir.is_dir():
        clean_temp_parts(table_dir)
    done = finished_keys(table_dir)
    mine = prompts[[shard_of(p, num_shards) == shard for p in prompts.prompt_id]]
    items = [
        (b, r.prompt_id, r.prompt, r.source, int(s))
        for b in backend_names
        for r in mine.itertuples(index=False)
        for s in seeds
    ]
    if cells is not None:
        items = [it for it in items if (str(it[1]), it[0]) in cells]
    todo = [it for it in items if (str(it[1]), it[0], it[4]) not in done]
    log.info(
        "sweep shard %d/%d: %d items, %d already finished, %d to do",
        shard,
        num_shards,
        len(items),
        len(items) - len(todo),
        len(todo),
    )
    # progress goes to stderr: stdout carries only the command's JSON result
    print(
        f"sweep: {len(items)} items, skipping {len(items) - len(todo)} finished, {len(todo)} to do",
        file=sys.stderr,
        flush=True,
    )
    return SweepPlan(out_dir, table_dir, len(items), todo)


def work_units(todo: Sequence[tuple], chunk_size: int) -> list[tuple[int, str, list[tuple]]]:
    """``todo`` in chunks of ``chunk_size`` items, each chunk split by backend:
    (chunk index, backend, items). Every launcher batches the same items together."""
    units = []
    for c, start in enumerate(range(0, len(todo), chunk_size)):
        chunk = todo[start : start + chunk_size]
        for bname in dict.fromkeys(it[0] for it in chunk):
            units.append((c, bname, [it for it in chunk if it[0] == bname]))
    return units


@dataclass
class UnitResult:
    rows: list[dict]
    images: list[bytes] | None = None  # PNG bytes in row order, when asked to return them
    error: str | None = None  # "Type: message" of a backend or scorer that raised
    trace: str | None = None


def image_path(out_dir, bname: str, prompt_id, seed: int) -> Path:
    return Path(out_dir) / "images" / bname / f"{prompt_id}-s{seed}.png"


def run_unit(
    backend,
    bname: str,
    its: Sequence[tuple],
    scorer,
    out_dir,
    *,
    keep_images: bool = False,
    return_images: bool = False,
) -> UnitResult:
    """Generate and score one backend's items: their rows, or the error that stopped them.
    ``keep_images`` saves each image at :func:`image_path` (``return_images``: returns its PNG bytes
    instead, for a driver on another machine to save)."""
    try:
        gens = backend.generate([it[2] for it in its], seeds=[it[4] for it in its])
        scores = scorer.score([g.image for g in gens], [it[2] for it in its])
    except Exception as e:  # noqa: BLE001 - out of memory, a broken model: the caller records it and goes on
        return UnitResult([], error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=3))
    rows, images = [], [] if return_images else None
    for it, g, sc in zip(its, gens, scores):
        path = None
        if keep_images:
            path = image_path(out_dir, bname, it[1], it[4])
            if return_images:
                import io

                buf = io.BytesIO()
                g.image.save(buf, format="PNG")
                images.append(buf.getvalue())
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                g.image.save(path)
        d = g.diffusion.to_dict() if g.diffusion is not None else {}
        rows.append(
            {
                "prompt_id": str(it[1]),
                "prompt": it[2],
                "backend": bname,
                "metric": scorer.metric,
                "higher_is_better": bool(getattr(scorer, "higher_is_better", True)),
                "score": float(sc),
                "cost_s": float(g.latency_s if g.cost is None else g.cost),
                "source": str(it[3]),
                "seed": it[4],
                "latency_s": float(g.latency_s),
                "steps_run": d.get("steps_run"),
                "nfe": d.get("nfe"),
                "stopped_early": d.get("stopped_early"),
                "image_path": None if path is None else str(path),
            }
        )
    return UnitResult(rows, images)


def record_failures(out_dir, bname: str, its: Sequence[tuple], error: str, trace: str | None) -> None:
    """One line per item in ``OUT/failures.jsonl`` (a re-run tries these items again)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / "failures.jsonl", "a") as fh:
        for it in its:
            fh.write(
                json.dumps({"backend": bname, "prompt_id": str(it[1]), "seed": it[4], "error": error, "trace": trace})
                + "\n"
            )
    log.error("backend %s failed on %d items: %s", bname, len(its), error)


def run_sweep(
    backends: Mapping[str, object],
    prompts: pd.DataFrame,
    seeds: Sequence[int],
    scorer,
    out_dir,
    *,
    shard: int = 0,
    num_shards: int = 1,
    chunk_size: int = 8,
    keep_images: bool = False,
    progress: bool = True,
    on_result=None,
    cells: set[tuple[str, str]] | None = None,
) -> SweepResult:
    """The sequential sweep, in this process (``launcher=ray``: :func:`t2iroute.sweeps.ray.run_sweep_ray`).
    ``on_result`` is called after each finished unit with ``{"backend", "n", "pid"}``; ``cells``:
    only these (prompt_id, backend) cells."""
    if scorer is None:
        raise ValueError("a sweep needs a scorer (scorer=clip)")
    plan = plan_sweep(list(backends), prompts, seeds, out_dir, shard=shard, num_shards=num_shards, cells=cells)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan.todo), disable=not progress, desc=f"sweep shard {shard}", unit="img")
    n_gen = n_fail = 0
    failed_backends: set[str] = set()
    rows: list[dict] = []
    units = work_units(plan.todo, chunk_size)
    for i, (c, bname, its) in enumerate(units):
        res = run_unit(backends[bname], bname, its, scorer, plan.out_dir, keep_images=keep_images)
        if res.error is not None:
            record_failures(plan.out_dir, bname, its, res.error, res.trace)
            n_fail += len(its)
            failed_backends.add(bname)
        else:
            rows += res.rows
            n_gen += len(its)
            if on_result is not None:
                on_result({"backend": bname, "n": len(its), "pid": os.getpid()})
        bar.update(len(its))
        if rows and (i + 1 == len(units) or units[i + 1][0] != c):  # one part file per chunk
            _write_part(plan.table_dir, rows, shard)
            rows = []
    bar.close()
    if failed_backends:
        log.warning("failures recorded in %s (backends %s)", plan.out_dir / "failures.jsonl", sorted(failed_backends))
    return SweepResult(plan.out_dir, plan.n_items, plan.n_skipped, n_gen, n_fail)


def read_sweep(path) -> pd.DataFrame:
    """All rows of a sweep folder (or its quality.parquet), one per key."""
    path = Path(path)
    table_dir = path / "quality.parquet" if (path / "quality.parquet").exists() else path
    parts = sorted(table_dir.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{table_dir}: no sweep part files")
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def merge_tables(dirs: Sequence, out) -> Path:
    """Join the part files of several shard folders into ``out/quality.parquet`` (one file)."""
    df = pd.concat([read_sweep(d) for d in dirs], ignore_index=True)
    before = len(df)
    df = df.drop_duplicates(list(KEY) + ["metric"], keep="first")
    if len(df) < before:
        log.warning("merge: dropped %d duplicate rows", before - len(df))
    out = Path(out) / "quality.parquet"
    out.mkdir(parents=True, exist_ok=True)
    _write_part(out, df.to_dict("records"), 0)
    return out
