"""Stacking predictor: out-of-fold outputs of base predictors feed final models."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from t2iroute.predictors.base import (
    QualityPredictor,
    StateError,
    _slice,
    build_predictor,
    load_nested,
    slice_width,
)


class StackPredictor(QualityPredictor):
    """Stacking: out-of-fold outputs of base predictors become features of final models.

    ``base`` is a list of predictor specs (kNN kernels on the embedding, TF-IDF ridge, ridge on the
    embedding, ...). Each is fitted on K-1 folds to produce its ``stack_features`` for the held-out
    fold, so the final models learn how far to trust each base from honest, out-of-sample
    inputs; then the bases are refitted on all rows for prediction. ``final`` is one spec or a
    list whose predictions are averaged (a tree stacker and a linear one complement each other).
    ``passthrough_slice`` hands those original feature columns to the final models too.
    """

    type_name = "stack"

    def __init__(
        self,
        base: list | None = None,
        final: list | dict | None = None,
        n_folds: int = 5,
        passthrough_slice: tuple[int, int] | None = None,
        relative: bool = True,
        seed: int = 0,
    ):
        self.base = base
        self.final = final
        self.n_folds = n_folds
        self.passthrough_slice = passthrough_slice
        self.relative = relative
        self.seed = seed

    @property
    def needs_texts(self):
        return any(b.needs_texts for b in self._bases())

    def _bases(self) -> list[QualityPredictor]:
        specs = self.base if self.base is not None else [{"type": "knn", "n_neighbors": 100}]
        return [build_predictor(dict(sp)) for sp in specs]

    def _finals(self) -> list[QualityPredictor]:
        specs = self.final if self.final is not None else {"type": "lgbm"}
        specs = [specs] if isinstance(specs, dict) else list(specs)
        out = []
        for sp in specs:
            sp = dict(sp)
            sp.setdefault("relative", False)  # targets are already relative here
            out.append(build_predictor(sp))
        return out

    def _stack_input(self, X, base_feats):
        sl = self.passthrough_slice
        if sl is None:
            parts = []
        elif len(sl) and isinstance(sl[0], (list, tuple)):  # several blocks
            parts = [_slice(X, s) for s in sl]
        else:
            parts = [_slice(X, sl)]
        return np.hstack(parts + base_feats)

    def _fit_core(self, X, Y, texts=None):
        from sklearn.base import clone
        from sklearn.model_selection import KFold

        folds = max(2, min(int(self.n_folds), len(X)))
        splits = list(KFold(folds, shuffle=True, random_state=int(self.seed)).split(X))
        sub = (lambda idx: None) if texts is None else (lambda idx: [texts[i] for i in idx])
        oof, self.bases_ = [], []
        for proto in self._bases():
            cols = None
            for a, b in splits:
                f = clone(proto).fit(X[a], Y[a], texts=sub(a)).stack_features(X[b], texts=sub(b))
                if cols is None:
                    cols = np.zeros((len(X), f.shape[1]))
                cols[b] = f
            oof.append(cols)
            self.bases_.append(clone(proto).fit(X, Y, texts=texts))
        Z = self._stack_input(X, oof)
        self.finals_ = [f.fit(Z, Y) for f in self._finals()]

    #: batches at least this large compute the bases' features in parallel threads
    PARALLEL_ROWS = 256

    def _predict_core(self, X, texts=None):
        threads = min(len(self.bases_), os.cpu_count() or 1)
        if threads < 2 or len(X) < self.PARALLEL_ROWS:
            feats = [b.stack_features(X, texts=texts) for b in self.bases_]
        else:  # the kNN's numpy work releases the GIL, the TF-IDF's n-gram counting holds it: they overlap
            with ThreadPoolExecutor(threads, thread_name_prefix="t2iroute-stack") as pool:
                feats = list(pool.map(lambda b: b.stack_features(X, texts=texts), self.bases_))
        Z = self._stack_input(X, feats)
        return np.mean([np.asarray(f.predict(Z)).reshape(len(X), -1) for f in self.finals_], axis=0)

    def _core_state(self):
        meta, arrays, texts = {"bases": [], "finals": []}, {}, {}
        parts = [(f"base{i}", "bases", b) for i, b in enumerate(self.bases_)]
        parts += [(f"final{i}", "finals", f) for i, f in enumerate(self.finals_)]
        for key, group, est in parts:
            m, a, t = est.get_state()
            meta[group].append(m)
            arrays.update({f"{key}/{k}": v for k, v in a.items()})
            texts.update({f"{key}/{k}": v for k, v in t.items()})
        return meta, arrays, texts

    def _set_core_state(self, meta, arrays, texts):
        def load(key, m):
            return load_nested(key, m, arrays, texts)

        for key in ("bases", "finals"):
            if not isinstance(meta.get(key), list) or not 1 <= len(meta[key]) <= 1000:
                raise StateError(
                    f"predictor meta: '{key}'", f"must be a list of 1 to 1000 predictors, got {meta.get(key)!r:.60}"
                )
        self.bases_ = [load(f"base{i}", m) for i, m in enumerate(meta["bases"])]
        self.finals_ = [load(f"final{i}", m) for i, m in enumerate(meta["finals"])]
        n, k = self.n_features_in_, self.n_outputs_
        sl = self.passthrough_slice
        several = isinstance(sl, (list, tuple)) and len(sl) and isinstance(sl[0], (list, tuple))
        width = sum(slice_width(s, n, "passthrough_slice") for s in (sl if several else [sl])) if sl is not None else 0
        for i, b in enumerate(self.bases_):
            if b.n_features_in_ != n:
                raise StateError(f"predictor meta: base{i}", f"takes {b.n_features_in_} features, the stack {n}")
            width += b.stack_width_()
        for i, f in enumerate(self.finals_):
            if (f.n_features_in_, f.n_outputs_) != (width, k):
                raise StateError(
                    f"predictor meta: final{i}",
                    f"takes {f.n_features_in_} columns to {f.n_outputs_} "
                    f"outputs; the stack hands it {width} columns and needs {k} outputs",
                )
