"""LightGBM predictor: one booster per backend (lightgbm is imported only when fitting or loading).

A model text read from an artifact is never handed to LightGBM as it is: LightGBM's parser
trusts its input (a wrong ``tree_sizes`` or ``split_feature`` aborts the process from C++, a
child index out of range reads outside its arrays, a cycle of children loops forever).
:func:`checked_model_text` parses the text format in Python, checks everything LightGBM would
index or loop over, and writes the model out again, canonically, from the checked values only:
LightGBM parses text that this module wrote.
"""

from __future__ import annotations

import math
import re

import numpy as np

from t2iroute.errors import ConfigError
from t2iroute.predictors.base import MAX_ABS, QualityPredictor, StateError, state_int


DEFAULT_LGBM = {
    "n_estimators": 300,
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_child_samples": 40,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.5,
    "reg_lambda": 1.0,
}


class LGBMPredictor(QualityPredictor):
    """LightGBM regressors, one per backend. ``params`` go to ``lightgbm.LGBMRegressor``.

    ``early_stopping_rounds``: pick the number of trees on a random ``validation_fraction`` of
    the training rows, then refit on all rows with 1.1x that many. ``n_bags`` > 1 averages
    models fitted with different seeds and validation slices.
    """

    type_name = "lgbm"

    def __init__(
        self,
        params: dict | None = None,
        relative: bool = True,
        seed: int = 0,
        n_jobs: int = 2,
        early_stopping_rounds: int | None = None,
        validation_fraction: float = 0.15,
        n_bags: int = 1,
    ):
        self.params = params
        self.relative = relative
        self.seed = seed
        self.n_jobs = n_jobs
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.n_bags = n_bags

    def _lgbm_params(self, bag: int = 0) -> dict:
        p = dict(DEFAULT_LGBM)
        p.update(self.params or {})
        p.update(
            {
                "random_state": int(self.seed) + bag,
                "n_jobs": int(self.n_jobs),
                "verbose": -1,
                "deterministic": True,
                "force_row_wise": True,
            }
        )
        return p

    def _fit_one(self, X, y, bag: int):
        import lightgbm as lgb

        p = self._lgbm_params(bag)
        if self.early_stopping_rounds and len(X) >= 50:
            rng = np.random.default_rng(100 + int(self.seed) + bag)
            val = rng.random(len(X)) < float(self.validation_fraction)
            import warnings

            with warnings.catch_warnings():  # lightgbm >= 4.7 renames eval_set; older ones lack the new names
                warnings.filterwarnings("ignore", message=".*eval_set.*")
                m = lgb.LGBMRegressor(**p).fit(
                    X[~val],
                    y[~val],
                    eval_set=[(X[val], y[val])],
                    callbacks=[lgb.early_stopping(int(self.early_stopping_rounds), verbose=False)],
                )
            p["n_estimators"] = int(max(m.best_iteration_ or p["n_estimators"], 20) * 1.1)
        return lgb.LGBMRegressor(**p).fit(X, y).booster_

    def _fit_core(self, X, Y, texts=None):
        try:
            self.boosters_ = [
                [self._fit_one(X, Y[:, j], b) for j in range(Y.shape[1])] for b in range(max(1, int(self.n_bags)))
            ]
        except TypeError as e:
            raise ConfigError(f"predictor lgbm: bad LightGBM params {self.params}: {e}") from e

    def _predict_core(self, X, texts=None):
        threads = 1 if len(X) < 256 else int(self.n_jobs)  # thread start-up dominates small calls
        return np.mean(
            [np.stack([b.predict(X, num_threads=threads) for b in bag], axis=1) for bag in self.boosters_], axis=0
        )

    def _core_state(self):
        texts = {
            f"booster_{i}_{j}.txt": b.model_to_string()
            for i, bag in enumerate(self.boosters_)
            for j, b in enumerate(bag)
        }
        return {"n_bags": len(self.boosters_), "n_boosters": len(self.boosters_[0])}, {}, texts

    def _set_core_state(self, meta, arrays, texts):
        import lightgbm as lgb

        n_bags = state_int(meta, "n_bags", 1, 1000)
        n_boosters = state_int(meta, "n_boosters", self.n_outputs_, self.n_outputs_)  # one per output
        boosters = []
        for i in range(n_bags):
            bag = []
            for j in range(n_boosters):
                name = f"booster_{i}_{j}.txt"
                if name not in texts:
                    raise StateError(f"model {name}", "is missing")
                text = checked_model_text(texts[name], self.n_features_in_, name)
                try:
                    bag.append(lgb.Booster(model_str=text))
                except lgb.basic.LightGBMError as e:  # not expected after the checks; named all the same
                    raise StateError(f"model {name}", f"is refused by LightGBM ({e})", texts[name]) from None
            boosters.append(bag)
        self.boosters_ = boosters


# -- LightGBM's text format, checked -----------------------------------------------------------------
#: LightGBM's own bound on ``num_leaves``; a bound on the trees of one model
MAX_LEAVES = 131_072
MAX_TREES = 100_000
#: objectives whose output is the raw score (``sqrt``: its square, sign kept): no exp to overflow
_OBJECTIVES = re.compile(r"(regression|regression_l1|huber|fair|quantile|mape)( sqrt)?")
_INT = re.compile(r"[-+]?\d{1,19}")
#: unambiguous (one way to match a token): a text that fails to match fails fast
_FLOAT = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,4})?")
_INTS = re.compile(rf"{_INT.pattern}( {_INT.pattern})*")
_FLOATS = re.compile(rf"{_FLOAT.pattern}( {_FLOAT.pattern})*")
_FEATURE_INFO = re.compile(r"none|\[[-+0-9.eE]{1,40}:[-+0-9.eE]{1,40}\]|-?\d{1,10}(:-?\d{1,10}){0,100000}")
_HEADER_KEYS = {
    "version",
    "num_class",
    "num_tree_per_iteration",
    "label_index",
    "max_feature_idx",
    "objective",
    "average_output",
    "feature_names",
    "monotone_constraints",
    "feature_infos",
    "tree_sizes",
}
#: per tree: key -> (kind, length: "L" num_leaves, "I" num_leaves - 1, "C" num_cat + 1, "T" cat_threshold,
#: "F" sum of num_features, 1 a scalar), written in this order (LightGBM reads at most 22 lines)
_TREE_FIELDS = {
    "num_leaves": ("int", 1),
    "num_cat": ("int", 1),
    "split_feature": ("int", "I"),
    "split_gain": ("float", "I"),
    "threshold": ("float", "I"),
    "decision_type": ("int", "I"),
    "left_child": ("int", "I"),
    "right_child": ("int", "I"),
    "leaf_value": ("float", "L"),
    "leaf_weight": ("float", "L"),
    "leaf_count": ("int", "L"),
    "internal_value": ("float", "I"),
    "internal_weight": ("float", "I"),
    "internal_count": ("int", "I"),
    "cat_boundaries": ("int", "C"),
    "cat_threshold": ("int", "T"),
    "is_linear": ("int", 1),
    "shrinkage": ("float", 1),
    "leaf_const": ("float", "L"),
    "num_features": ("int", "L"),
    "leaf_features": ("int", "F"),
    "leaf_coeff": ("float", "F"),
}
_REQUIRED = ("num_leaves", "num_cat", "leaf_value")
_ONE_LEAF = {"num_leaves", "num_cat", "leaf_value", "leaf_count", "is_linear", "shrinkage"}
_REQUIRED_SPLITS = ("split_feature", "threshold", "decision_type", "left_child", "right_child")
_INT32 = 2**31 - 1


def _fmt(vals: list) -> str:
    """Numbers as LightGBM reads them back exactly: ints, and floats in Python's shortest repr."""
    return " ".join(map(repr, vals))


def checked_model_text(text: str, n_features: int, name: str = "model") -> str:
    """A LightGBM regression model text, checked and written out again canonically.

    Checked: the header (one class, one tree per iteration, ``max_feature_idx`` + 1 ==
    ``n_features``, a known objective without an exp link, the feature lists' lengths), and
    every tree: counts within LightGBM's bounds, each array as long as ``num_leaves`` says,
    numbers finite (leaf outputs within +-1e15), feature indices < ``n_features``, decision
    types LightGBM knows, categorical splits within ``cat_boundaries``, children that form one
    tree (every node reached once from the root: no cycle, no index out of range). Raises
    :class:`StateError` naming ``name`` and what is wrong. The result holds only the checked
    fields, with ``tree_sizes`` recomputed.
    """

    def bad(why: str) -> StateError:
        return StateError(f"model {name}", why, text)

    if not isinstance(text, str):
        raise bad("is not text")
    if not text.isascii() or re.search(r"[^\x20-\x7e\n\r\t]", text):
        raise bad("holds characters a LightGBM model text never has")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not lines or lines[0].strip() != "tree":
        raise bad("does not start with 'tree' (not a LightGBM model text)")
    header: dict[str, str] = {}
    i = 1
    while i < len(lines) and not lines[i].startswith("Tree="):
        line = lines[i].strip()
        i += 1
        if not line:
            continue
        if line == "end of trees":
            raise bad("has no trees")
        key, eq, value = line.partition("=")
        if key not in _HEADER_KEYS:
            raise bad(f"has an unknown header line {line[:60]!r}")
        if key in header:
            raise bad(f"sets '{key}' twice")
        header[key] = value if eq else ""

    def h_int(key: str, lo: int, hi: int, default: int | None = None) -> int:
        v = header.get(key)
        if v is None and default is not None:
            return default
        if v is None or not _INT.fullmatch(v.strip()) or not lo <= int(v) <= hi:
            raise bad(f"'{key}' must be a whole number from {lo} to {hi}, got {v!r:.40}")
        return int(v)

    if h_int("num_class", 1, 1) != 1 or h_int("num_tree_per_iteration", 1, 1, default=1) != 1:
        raise bad("is not a regression model (one class)")
    label_index = h_int("label_index", 0, _INT32)
    max_idx = h_int("max_feature_idx", 0, _INT32)
    if max_idx + 1 != n_features:
        raise bad(f"is for {max_idx + 1} features (max_feature_idx={max_idx}); the predictor takes {n_features}")
    objective = header.get("objective", "regression").strip()
    if not _OBJECTIVES.fullmatch(objective):
        raise bad(
            f"has objective {objective[:60]!r}; a t2iroute model is a regression "
            "(regression, regression_l1, huber, fair, quantile or mape)"
        )
    infos = header.get("feature_infos", "").split()
    if len(infos) != n_features or not all(_FEATURE_INFO.fullmatch(t) for t in infos):
        raise bad(f"'feature_infos' must list {n_features} entries ('none', [min:max] or categories)")
    if "feature_names" in header and len(header["feature_names"].split()) != n_features:
        raise bad(f"'feature_names' must list {n_features} names")
    if header.get("average_output", "") != "":
        raise bad("'average_output' takes no value")

    blocks: list[str] = []  # each tree written out as soon as it is checked (memory: one tree's numbers)
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
            continue
        if line == "end of trees":
            break
        t = len(blocks)
        if line != f"Tree={t}":
            raise bad(f"line {i + 1}: expected 'Tree={t}', got {line[:60]!r}")
        if t >= MAX_TREES:
            raise bad(f"has more than {MAX_TREES} trees")
        i += 1
        raw: dict[str, str] = {}
        while i < len(lines) and lines[i].strip():
            key, eq, value = lines[i].strip().partition("=")
            if not eq or key not in _TREE_FIELDS:
                raise bad(f"tree {t}: unknown line {lines[i].strip()[:60]!r}")
            if key in raw:
                raise bad(f"tree {t}: sets '{key}' twice")
            raw[key] = value
            i += 1
        fields = _check_tree(raw, t, n_features, bad)
        body = "".join(f"{k}={_fmt(fields[k])}\n" for k in _TREE_FIELDS if k in fields)
        blocks.append(f"Tree={t}\n{body}\n")
    else:
        raise bad("has no 'end of trees' line (truncated?)")
    if not blocks:
        raise bad("has no trees")
    out = [
        "tree",
        "version=v4",
        "num_class=1",
        "num_tree_per_iteration=1",
        f"label_index={label_index}",
        f"max_feature_idx={max_idx}",
        f"objective={objective}",
    ]
    if "average_output" in header:
        out.append("average_output")
    out += [
        "feature_names=" + " ".join(f"Column_{j}" for j in range(n_features)),
        "feature_infos=" + " ".join(infos),
        "tree_sizes=" + " ".join(str(len(b)) for b in blocks),
        "",
    ]
    return "\n".join(out) + "\n" + "".join(blocks) + "end of trees\n\npandas_categorical:null\n"


def _numbers(value: str, kind: str, n: int, key: str, bad) -> list:
    toks = value.split()
    if len(toks) != n:
        raise bad(f"'{key}' has {len(toks)} values, {n} expected")
    pat = _INTS if kind == "int" else _FLOATS
    if toks and not pat.fullmatch(" ".join(toks)):
        raise bad(f"'{key}' holds something other than {'whole numbers' if kind == 'int' else 'numbers'}")
    if kind == "int":
        out = [int(t) for t in toks]
        if any(not -_INT32 - 1 <= v <= 2**32 - 1 for v in out):
            raise bad(f"'{key}' holds a value out of range")
        return out
    out = list(map(float, toks))
    if not all(map(math.isfinite, out)):
        raise bad(f"'{key}' holds a value beyond the range of a double")
    return out


def _check_tree(raw: dict[str, str], t: int, n_features: int, outer_bad) -> dict[str, list]:
    def bad(why: str) -> StateError:
        return outer_bad(f"tree {t}: {why}")

    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise bad(f"lacks {missing}")
    (n_leaves,) = _numbers(raw["num_leaves"], "int", 1, "num_leaves", bad)
    (n_cat,) = _numbers(raw["num_cat"], "int", 1, "num_cat", bad)
    if not 1 <= n_leaves <= MAX_LEAVES:
        raise bad(f"num_leaves={n_leaves}: must be from 1 to {MAX_LEAVES}")
    if not 0 <= n_cat <= n_leaves - 1:
        raise bad(f"num_cat={n_cat}: must be from 0 to num_leaves - 1 = {n_leaves - 1}")
    is_linear = _numbers(raw["is_linear"], "int", 1, "is_linear", bad)[0] if "is_linear" in raw else 0
    if is_linear not in (0, 1):
        raise bad(f"is_linear={is_linear}: must be 0 or 1")
    if n_leaves > 1 or is_linear:  # a linear tree's parser reads them even for one leaf
        missing = [k for k in _REQUIRED_SPLITS if k not in raw]
        if missing:
            raise bad(f"has {n_leaves} leaves but lacks {missing}")
    if n_cat and ("cat_boundaries" not in raw or "cat_threshold" not in raw):
        raise bad("has categorical splits but lacks cat_boundaries or cat_threshold")
    if is_linear and not {"leaf_const", "num_features"} <= set(raw):
        raise bad("is linear but lacks leaf_const or num_features")
    lengths = {"L": n_leaves, "I": n_leaves - 1, "C": n_cat + 1, 1: 1}
    out: dict[str, list] = {}
    # in an order where each length is known before it is needed
    for key in ("num_leaves", "num_cat", "is_linear", "cat_boundaries", "num_features", *_TREE_FIELDS):
        if key in out or key not in raw:
            continue
        kind, ln = _TREE_FIELDS[key]
        if key == "cat_threshold":
            ln = out["cat_boundaries"][-1] if "cat_boundaries" in out else 0
        elif key in ("leaf_features", "leaf_coeff"):
            ln = sum(out.get("num_features", []))
        else:
            ln = lengths[ln]
        if n_leaves == 1 and not is_linear and key not in _ONE_LEAF:
            continue  # a one-leaf tree: LightGBM reads nothing else
        if key in ("cat_boundaries", "cat_threshold") and not n_cat:
            continue
        if key in ("leaf_const", "num_features", "leaf_features", "leaf_coeff") and not is_linear:
            continue
        vals = _numbers(raw[key], kind, ln, key, bad)
        if key in ("leaf_value", "leaf_const", "leaf_coeff") and any(abs(v) > MAX_ABS for v in vals):
            raise bad(f"'{key}' holds values beyond +-{MAX_ABS:g}")
        if key == "split_gain" and any(abs(v) > 3.4e38 for v in vals):
            raise bad("'split_gain' holds values beyond the range of a float")
        if key in ("leaf_count", "internal_count", "num_features") and any(not 0 <= v <= _INT32 for v in vals):
            raise bad(f"'{key}' holds negative or huge counts")
        if key in ("num_features",) and sum(vals) > 10 * MAX_LEAVES * max(1, n_features):
            raise bad("'num_features' is too large")
        if key in ("split_feature", "leaf_features") and any(not 0 <= v < n_features for v in vals):
            raise bad(f"'{key}' holds a feature index outside 0..{n_features - 1}")
        if key == "decision_type" and any(not 0 <= v <= 11 or (v >> 2) & 3 == 3 for v in vals):
            raise bad("'decision_type' holds a value LightGBM does not know")
        if key == "cat_boundaries" and (
            vals[0] != 0 or any(b < a for a, b in zip(vals, vals[1:])) or vals[-1] > 10 * 2**20
        ):
            raise bad("'cat_boundaries' must rise from 0")
        if key == "cat_threshold" and any(v < 0 for v in vals):
            raise bad("'cat_threshold' holds negative values")
        out[key] = vals
    if n_leaves > 1:
        _check_children(out, n_leaves, n_cat, bad)
    return out


def _check_children(f: dict[str, list], n_leaves: int, n_cat: int, bad) -> None:
    """Children form one binary tree whose root is node 0: every other node and every leaf is
    reached exactly once (so no index is out of range and no walk loops); categorical splits
    point into cat_boundaries."""
    n_int = n_leaves - 1
    seen_node, seen_leaf = [False] * n_int, [False] * n_leaves
    seen_node[0] = True
    stack = [0]
    while stack:
        node = stack.pop()
        for child in (f["left_child"][node], f["right_child"][node]):
            if child >= 0:
                if child >= n_int or seen_node[child]:
                    raise bad(f"node {node} has child {child}: out of range or reached twice")
                seen_node[child] = True
                stack.append(child)
            else:
                leaf = ~child
                if leaf >= n_leaves or seen_leaf[leaf]:
                    raise bad(f"node {node} has leaf {leaf}: out of range or reached twice")
                seen_leaf[leaf] = True
    if not all(seen_node) or not all(seen_leaf):
        raise bad("children do not form one tree (nodes or leaves unreachable from the root)")
    for node, d in enumerate(f["decision_type"]):
        if d & 1:
            c = f["threshold"][node]
            if not n_cat or c != int(c) or not 0 <= c < n_cat:
                raise bad(
                    f"node {node}: a categorical split whose threshold {c!r} is not a category set (0..{n_cat - 1})"
                )
