"""Sweeps: prompts x backends x seeds -> images -> scores -> rows of a quality table, resumable.

:mod:`t2iroute.sweeps.local` runs one item after another in this process (``launcher=local``)
and defines the table's part files, resume and shards; :mod:`t2iroute.sweeps.ray` spreads the
same work units over Ray actors (``launcher=ray``; Ray is imported only when it runs).
"""

from t2iroute.sweeps.local import SweepResult, merge_tables, read_sweep, run_sweep

__all__ = ["SweepResult", "merge_tables", "read_sweep", "run_sweep"]
