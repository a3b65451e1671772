"""``predictor=auto``'s candidates: the default list, a candidate's spec, and resolving the
feature blocks they name.

Apart from :mod:`t2iroute.predictors.auto` (which re-exports all of it) so that
:func:`t2iroute.predictors.base.resolve_blocks`, which resolves an auto spec's candidates too, needs
no import of the predictor that subclasses its base class.
"""

from __future__ import annotations

import copy
from typing import Any

from t2iroute.errors import ConfigError

#: the default candidates: (name, spec, minimum training rows)
DEFAULT_CANDIDATES: list[dict[str, Any]] = [
    {"name": "knn25", "min_rows": 0, "spec": {"type": "knn", "n_neighbors": 25, "block": "embedding"}},
    {"name": "knn50", "min_rows": 0, "spec": {"type": "knn", "n_neighbors": 50, "block": "embedding"}},
    {"name": "knn100", "min_rows": 200, "spec": {"type": "knn", "n_neighbors": 100, "block": "embedding"}},
    {"name": "knn25_all", "min_rows": 0, "spec": {"type": "knn", "n_neighbors": 25}},
    {"name": "knn50_all", "min_rows": 0, "spec": {"type": "knn", "n_neighbors": 50}},
    {"name": "knn100_all", "min_rows": 200, "spec": {"type": "knn", "n_neighbors": 100}},
    {"name": "ridge", "min_rows": 0, "spec": {"type": "ridge", "alpha": 1000.0, "block": "embedding"}},
    {"name": "lgbm", "min_rows": 1000, "max_rows": 2000, "spec": {"type": "lgbm"}},  # the stack's, above
    {"name": "stack", "min_rows": 2000, "config": "stack"},  # conf/predictor/stack.yaml
    # a table with missing cells: a model that shares what it learns across backends
    {"name": "mf", "min_rows": 0, "missing_only": True, "spec": {"type": "mf", "block": "embedding"}},
    {"name": "mf_all", "min_rows": 0, "missing_only": True, "spec": {"type": "mf"}},
]


def candidate_spec(c: dict) -> dict:
    """A candidate's predictor spec: ``spec``, or ``config: NAME`` for conf/predictor/NAME.yaml."""
    if "spec" in c:
        return copy.deepcopy(dict(c["spec"]))
    if "config" in c:
        import yaml

        from t2iroute.paths import CONF_DIR

        path = CONF_DIR / "predictor" / f"{c['config']}.yaml"
        if not path.is_file():
            raise ValueError(f"auto predictor: candidate config {c['config']!r} not found ({path})")
        return dict(yaml.safe_load(path.read_text()))
    raise ValueError(f"auto predictor: candidate {c} has neither 'spec' nor 'config'")


def resolve_candidates(spec: dict, blocks: dict, resolve) -> dict:
    """Resolve ``block`` keys in each candidate of an auto spec; a block that is not configured
    makes that candidate use every feature column instead."""
    out = []
    for c in spec.get("candidates") or DEFAULT_CANDIDATES:
        c = dict(c)
        sp = candidate_spec(c)
        try:
            sp = resolve(sp, blocks)
        except ConfigError:
            sp = resolve(_drop_blocks(sp), blocks)
        c.pop("config", None)
        c["spec"] = sp
        out.append(c)
    return {**spec, "candidates": out}


def _drop_blocks(x):
    if isinstance(x, dict):
        return {k: _drop_blocks(v) for k, v in x.items() if k != "block"}
    if isinstance(x, list):
        return [_drop_blocks(v) for v in x]
    return x
