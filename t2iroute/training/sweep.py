"""Sweeps: prompts x backends x seeds -> images -> scores -> rows of a quality table.

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
    tmp = table_dir / f".tmp-{os.getpid()}-{name}"
    try:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
        os.replace(tmp, table_dir / name)
    finally:
        if tmp.exists():
            tmp.unlink()
    return table_dir / name


@dataclass
class SweepResult:
    out_dir: Path
    n_items: int
    n_skipped_done: int
    n_generated: int
    n_failed: int


def clean_temp_parts(table_dir: Path) -> list[Path]:
    """Remove temp part files that killed sweeps left (those of running processes stay)."""
    import re

    from t2iroute.paths import pid_alive

    removed = []
    for p in Path(table_dir).glob(".tmp-*"):
        m = re.match(r"\.tmp-(\d+)-", p.name)
        if m is None or not pid_alive(int(m.group(1))):  # no pid: written by t2iroute before 0.2
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def run_sweep(backends: Mapping[str, object], prompts: pd.DataFrame, seeds: Sequence[int], scorer, out_dir,
              *, shard: int = 0, num_shards: int = 1, chunk_size: int = 8, keep_images: bool = False,
              progress: bool = True) -> SweepResult:
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard={shard} num_shards={num_shards}: need 0 <= shard < num_shards")
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    if scorer is None:
        raise ValueError("a sweep needs a scorer (scorer=clip)")
    out_dir = Path(out_dir)
    table_dir = out_dir / "quality.parquet"
    if table_dir.is_dir():
        clean_temp_parts(table_dir)
    done = finished_keys(table_dir)
    mine = prompts[[shard_of(p, num_shards) == shard for p in prompts.prompt_id]]
    items = [(b, r.prompt_id, r.prompt, r.source, int(s))
             for b in backends for r in mine.itertuples(index=False) for s in seeds]
    todo = [it for it in items if (str(it[1]), it[0], it[4]) not in done]
    skipped = len(items) - len(todo)
    log.info("sweep shard %d/%d: %d items, %d already finished, %d to do", shard, num_shards,
             len(items), skipped, len(todo))
    # progress goes to stderr: stdout carries only the command's JSON result
    print(f"sweep: {len(items)} items, skipping {skipped} finished, {len(todo)} to do", file=sys.stderr, flush=True)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), disable=not progress, desc=f"sweep shard {shard}", unit="img")
    n_gen = n_fail = 0
    failed_backends: set[str] = set()
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        rows = []
        for bname in dict.fromkeys(it[0] for it in chunk):
            its = [it for it in chunk if it[0] == bname]
            try:
                gens = backends[bname].generate([it[2] for it in its], seeds=[it[4] for it in its])
                scores = scorer.score([g.image for g in gens], [it[2] for it in its])
            except Exception as e:  # out of memory, a broken model: record it and go on
                n_fail += len(its)
                failed_backends.add(bname)
                with open(out_dir / "failures.jsonl", "a") as fh:
                    for it in its:
                        fh.write(json.dumps({"backend": bname, "prompt_id": str(it[1]), "seed": it[4],
                                             "error": f"{type(e).__name__}: {e}",
                                             "trace": traceback.format_exc(limit=3)}) + "\n")
                log.error("backend %s failed on %d items: %s", bname, len(its), e)
                bar.update(len(its))
                continue
            for it, g, sc in zip(its, gens, scores):
                image_path = None
                if keep_images:
                    d = out_dir / "images" / bname
                    d.mkdir(parents=True, exist_ok=True)
                    image_path = str(d / f"{it[1]}-s{it[4]}.png")
                    g.image.save(image_path)
                d = g.diffusion.to_dict() if g.diffusion is not None else {}
                rows.append({
                    "prompt_id": str(it[1]), "prompt": it[2], "backend": bname, "metric": scorer.metric,
                    "higher_is_better": bool(getattr(scorer, "higher_is_better", True)),
                    "score": float(sc), "cost_s": float(g.latency_s if g.cost is None else g.cost),
                    "source": str(it[3]), "seed": it[4], "latency_s": float(g.latency_s),
                    "steps_run": d.get("steps_run"), "nfe": d.get("nfe"),
                    "stopped_early": d.get("stopped_early"), "image_path": image_path,
                })
            n_gen += len(its)
            bar.update(len(its))
        if rows:
            _write_part(table_dir, rows, shard)
    bar.close()
    if failed_backends:
        log.warning("failures recorded in %s (backends %s)", out_dir / "failures.jsonl", sorted(failed_backends))
    return SweepResult(out_dir, len(items), skipped, n_gen, n_fail)


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
