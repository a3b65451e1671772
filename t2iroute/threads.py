"""Intra-op CPU threads of torch (diffusion on CPU, CLIP scoring, torch embeddings).

torch starts one OpenMP thread per core. When several generations run at once, or other
processes load the machine, those threads spin waiting for each other: a tiny 64 px image took
11.8 s on a loaded 2-core machine against 0.87 s with one thread. t2iroute therefore sets the
count itself, once, before its first torch call:

* ``T2IROUTE_THREADS=N`` (or the ``threads=N`` key of the commands) sets N;
  ``T2IROUTE_THREADS=0`` leaves torch's default alone;
* by default: half the cores, at most 4 (1 on a 2-core machine), so two or more concurrent
  generations do not oversubscribe the cores. ``scripts/bench_threads.py`` measures it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENV = "T2IROUTE_THREADS"
_APPLIED: int | None = None


def default_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def resolve(threads: int | str | None = None) -> int | None:
    """The thread count to use: ``threads``, else ``$T2IROUTE_THREADS``, else the default.
    None means torch's own default (0 given)."""
    raw = threads if threads is not None else os.environ.get(ENV)
    if raw is None or (isinstance(raw, str) and raw.strip() in ("", "auto")):
        return default_threads()
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{ENV}/threads={raw!r}: a whole number of threads (0: torch's default) is needed") from None
    if isinstance(raw, bool) or n < 0 or float(raw) != n:
        raise ValueError(f"{ENV}/threads={raw!r}: a whole number >= 0 is needed")
    return n or None


def configure(threads: int | str | None = None, *, force: bool = False) -> int:
    """Set torch's intra-op threads (once per process unless ``force``); the count in use."""
    global _APPLIED
    import torch

    if _APPLIED is not None and not force and threads is None:
        return torch.get_num_threads()
    n = resolve(threads)
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    _APPLIED = torch.get_num_threads()
    return _APPLIED
