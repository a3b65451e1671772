"""The decision log: every routed image, and the scores it later receives (feedback, autoscores).

A folder of SQLite files in WAL mode (``decisions.sqlite``, rotated to
``decisions-<UTC time>.sqlite`` past ``max_bytes``, the oldest removed past ``max_files``). Each
record is committed in its own transaction before the response leaves, so a server killed with
SIGKILL loses at most the records of requests still in flight, and a reader never sees half a
record (SQLite's journal, not ours). Several processes (Ray replicas, a retraining job) may open
the same folder: SQLite locks it, writers wait up to ``busy_timeout_ms``.

A record holds: ``id`` (the image's stable id, the one feedback names), ``time`` (Unix seconds),
``prompt`` (only with ``prompts=True``; always ``prompt_sha256`` and, with ``features=True``, the
prompt's feature vector, so that a log without prompt text still retrains a router on the same
features), ``policy`` (JSON), ``backend`` (the one that made the image), ``routed_backend``,
``predicted`` (JSON: every backend's predicted quality), ``cost``, ``latency_s``, ``steps``,
``nfe``, ``explored`` and ``propensity`` (the probability the policy chose this backend), ``seed``,
``metric`` and ``artifact`` (the router's checksum). Scores are a second table: (``id``,
``source``) -> ``score`` in the metric's units, ``source`` ``user`` or ``autoscore``; a repeated
score from the same source replaces the earlier one (a retried request is idempotent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

log = logging.getLogger(__name__)

CURRENT = "decisions.sqlite"
SOURCES = ("user", "autoscore")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    prompt TEXT,
    prompt_sha256 TEXT NOT NULL,
    features BLOB,
    policy TEXT,
    backend TEXT NOT NULL,
    routed_backend TEXT,
    predicted TEXT,
    cost REAL,
    latency_s REAL,
    steps INTEGER,
    nfe INTEGER,
    explored INTEGER NOT NULL DEFAULT 0,
    propensity REAL,
    seed INTEGER,
    metric TEXT,
    artifact TEXT
);
CREATE TABLE IF NOT EXISTS scores (
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    score REAL NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (id, source)
);
"""
COLUMNS = (
    "id",
    "time",
    "prompt",
    "prompt_sha256",
    "features",
    "policy",
    "backend",
    "routed_backend",
    "predicted",
    "cost",
    "latency_s",
    "steps",
    "nfe",
    "explored",
    "propensity",
    "seed",
    "metric",
    "artifact",
)


class UnknownId(KeyError):
    """Feedback for an id no retained log file holds."""


def new_id() -> str:
    """A fresh image id: ``img-`` and 32 hex digits (random; nothing about the request)."""
    return "img-" + uuid.uuid4().hex


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


@dataclass
class LogSettings:
    """``dir``: the folder; ``prompts``: keep prompt text (else only its SHA-256 and features);
    ``features``: keep the feature vector; ``max_bytes``: rotate the current file past this;
    ``max_files``: rotated files kept (the oldest removed)."""

    dir: str
    prompts: bool = True
    features: bool = True
    max_bytes: int = 256 * 2**20
    max_files: int = 8

    def __post_init__(self):
        if not str(self.dir).strip():
            raise ValueError("log dir: an empty path")
        if int(self.max_bytes) < 2**16:
            raise ValueError(f"log max_bytes={self.max_bytes}: at least 65536 (64 KiB)")
        if int(self.max_files) < 1:
            raise ValueError(f"log max_files={self.max_files}: at least 1")


class DecisionLog:
    """Append decisions, record scores, read both back (see the module docstring)."""

    def __init__(
        self,
        dir: str | os.PathLike,
        *,
        prompts: bool = True,
        features: bool = True,
        max_bytes: int = 256 * 2**20,
        max_files: int = 8,
        busy_timeout_ms: int = 10_000,
    ):
        self.settings = LogSettings(str(dir), bool(prompts), bool(features), int(max_bytes), int(max_files))
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.n_written = 0

    @classmethod
    def from_settings(cls, s: LogSettings | Mapping[str, Any]) -> "DecisionLog":
        s = s if isinstance(s, LogSettings) else LogSettings(**dict(s))
        return cls(s.dir, prompts=s.prompts, features=s.features, max_bytes=s.max_bytes, max_files=s.max_files)

    # -- files ---------------------------------------------------------------------------------
    def _open(self, path: Path, *, readonly: bool = False) -> sqlite3.Connection:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=self.busy_timeout_ms / 1000)
        else:
            conn = sqlite3.connect(str(path), timeout=self.busy_timeout_ms / 1000, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives the process's death
            conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        return conn

    def _current(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open(self.dir / CURRENT)
        return self._conn

    def files(self) -> list[Path]:
        """Every retained log file, oldest first (the current one last)."""
        rotated = sorted(self.dir.glob("decisions-*.sqlite"))
        cur = self.dir / CURRENT
        return rotated + ([cur] if cur.exists() else [])

    def _maybe_rotate(self) -> None:
        cur = self.dir / CURRENT
        size = sum(p.stat().st_size for p in (cur, Path(f"{cur}-wal")) if p.exists())
        if size <= self.settings.max_bytes:
            return
        conn = self._current()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        self._conn = None
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:]
        target = self.dir / f"decisions-{stamp}.sqlite"  # names sort in time order
        os.replace(cur, target)
        for side in ("-wal", "-shm"):
            Path(f"{cur}{side}").unlink(missing_ok=True)
        rotated = sorted(self.dir.glob("decisions-*.sqlite"))
        for old in rotated[: max(0, len(rotated) - self.settings.max_files)]:
            old.unlink(missing_ok=True)
        log.info("decision log rotated to %s", target.name)

    # -- writing -------------------------------------------------------------------------------
    def record(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Append ``records`` (dicts with :data:`COLUMNS` keys; ``prompt`` is dropped, and
        ``features`` too, as the settings say) in one transaction; returns how many."""
        rows = [self._row(r) for r in records]
        if not rows:
            return 0
        with self._lock:
            conn = self._current()
            with conn:
                conn.executemany(
                    f"INSERT OR REPLACE INTO decisions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                    rows,
                )
            self.n_written += len(rows)
            self._maybe_rotate()
        return len(rows)

    def _row(self, r: Mapping[str, Any]) -> tuple:
        r = dict(r)
        prompt = r.get("prompt")
        if r.get("prompt_sha256") is None:
            if prompt is None:
                raise ValueError("a decision record needs its prompt or prompt_sha256")
            r["prompt_sha256"] = prompt_hash(str(prompt))
        if not self.settings.prompts:
            r["prompt"] = None
        feats = r.get("features")
        if feats is not None and self.settings.features:
            r["features"] = np.ascontiguousarray(np.asarray(feats, dtype=np.float32)).tobytes()
        else:
            r["features"] = None
        for k in ("policy", "predicted"):
            if r.get(k) is not None and not isinstance(r[k], str):
                r[k] = json.dumps(r[k], default=float)
        r["explored"] = int(bool(r.get("explored", False)))
        if r.get("id") is None or r.get("backend") is None:
            raise ValueError("a decision record needs an id and a backend")
        r.setdefault("time", time.time())
        return tuple(r.get(c) for c in COLUMNS)

    def score(self, id: str, score: float, *, source: str = "user") -> bool:
        """Record ``score`` (metric units) for image ``id``. Returns True if it replaced a score
        of the same source (a repeat), False if new. Raises :class:`UnknownId` for an id no
        retained file holds and ValueError for a score that is not a finite number."""
        if source not in SOURCES:
            raise ValueError(f"score source {source!r}: use one of {list(SOURCES)}")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not np.isfinite(float(score)):
            raise ValueError(f"score={score!r}: a finite number in the metric's units")
        with self._lock:
            conn = self._current()
            if conn.execute("SELECT 1 FROM decisions WHERE id=?", (id,)).fetchone() is None:
                if not any(self._holds(p, id) for p in self.files()[:-1]):
                    raise UnknownId(id)
            with conn:
                seen = conn.execute("SELECT 1 FROM scores WHERE id=? AND source=?", (id, source)).fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO scores (id, source, score, time) VALUES (?, ?, ?, ?)",
                    (id, source, float(score), time.time()),
                )
        return seen is not None

    def _holds(self, path: Path, id: str) -> bool:
        conn = self._open(path, readonly=True)
        try:
            return conn.execute("SELECT 1 FROM decisions WHERE id=?", (id,)).fetchone() is not None
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def read_log(dir: str | os.PathLike):
    """Every retained decision of the log folder ``dir`` with its scores, as a DataFrame (one row
    per decision; ``score_user`` / ``score_autoscore`` NaN where none came; ``features`` as
    float32 arrays or None; ``policy``/``predicted`` parsed). Read-only: never writes the folder."""
    import pandas as pd

    d = Path(dir)
    if not d.is_dir():
        raise FileNotFoundError(f"decision log {d}: not a folder")
    files = sorted(d.glob("decisions-*.sqlite")) + ([d / CURRENT] if (d / CURRENT).exists() else [])
    if not files:
        raise FileNotFoundError(f"decision log {d}: no decisions*.sqlite in it")
    parts, scores = [], []
    for p in files:
        try:
            conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=10)
            parts.append(pd.read_sql_query(f"SELECT {', '.join(COLUMNS)} FROM decisions", conn))
            scores.append(pd.read_sql_query("SELECT id, source, score FROM scores", conn))
            conn.close()
        except sqlite3.DatabaseError as e:
            raise ValueError(f"decision log {p}: not a readable SQLite file ({e})") from e
    df = pd.concat(parts, ignore_index=True).drop_duplicates("id", keep="last")
    sc = pd.concat(scores, ignore_index=True).drop_duplicates(["id", "source"], keep="last")
    for src in SOURCES:
        s = sc[sc.source == src].set_index("id")["score"]
        df[f"score_{src}"] = df["id"].map(s).astype(float)
    df["features"] = [None if b is None else np.frombuffer(b, dtype=np.float32) for b in df["features"]]
    for k in ("policy", "predicted"):
        df[k] = [None if v is None else json.loads(v) for v in df[k]]
    df["explored"] = df["explored"].astype(bool)
    return df.reset_index(drop=True)
