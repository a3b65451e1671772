"""Quality predictors: prompt features -> predicted quality of every backend.

scikit-learn conventions: ``fit(X, Y)`` returns self, learned state lives in trailing-underscore
attributes, ``predict(X)`` returns ``(n_prompts, n_backends)`` (``(n,)`` when fitted on a 1-D
target). With ``relative=True`` (the default) a predictor learns each backend's quality relative
to the prompt's mean over backends, which is all that routing needs and removes the large
per-prompt offset (some prompts score high on every backend); a ridge model of the prompt mean
is added back so that predictions stay on the metric's scale.

Every fitted predictor exports its state as JSON + numpy arrays + text (LightGBM's own model
format), so an artifact never needs pickle (see ``t2iroute.router.artifact``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted, validate_data

from t2iroute.errors import ConfigError

State = tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]


class QualityPredictor(RegressorMixin, BaseEstimator):
    """Base class: handles validation, 1-D targets and the relative-target transform."""

    kind = "base"

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    #: True for predictors that read the prompt texts (``texts=``), not only the features
    needs_texts = False

    # subclasses implement these on 2-D float targets; ``texts`` is the prompts or None
    def _fit_core(self, X: np.ndarray, Y: np.ndarray, texts=None) -> None:
        raise NotImplementedError

    def _predict_core(self, X: np.ndarray, texts=None) -> np.ndarray:
        raise NotImplementedError

    def stack_features(self, X, texts=None) -> np.ndarray:
        """Columns this predictor hands to a stacking model (default: its predictions)."""
        return np.asarray(self.predict(X, texts=texts)).reshape(len(X), -1)

    def _check_texts(self, X, texts):
        if texts is None:
            if self.needs_texts:
                raise ValueError(f"{type(self).__name__} needs the prompt texts (texts=...)")
            return None
        texts = [str(t) for t in texts]
        if len(texts) != len(X):
            raise ValueError(f"texts has {len(texts)} entries for {len(X)} feature rows")
        return texts

    def _core_state(self) -> State:
        raise NotImplementedError

    def _set_core_state(self, meta: dict, arrays: dict, texts: dict) -> None:
        raise NotImplementedError

    def fit(self, X, y, texts=None):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        texts = self._check_texts(X, texts)
        self.one_d_ = y.ndim == 1
        Y = y.reshape(len(y), -1).astype(np.float64)
        self.n_outputs_ = Y.shape[1]
        if getattr(self, "relative", False) and Y.shape[1] > 1:
            center = Y.mean(axis=1, keepdims=True)
            self.mean_model_ = RidgePredictor(alpha=10.0, relative=False).fit(X, center[:, 0])
            self._fit_core(X, Y - center, texts)
        else:
            self.mean_model_ = None
            self._fit_core(X, Y, texts)
        return self

    def predict(self, X, texts=None):
        check_is_fitted(self, "n_outputs_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        texts = self._check_texts(X, texts)
        P = self._predict_core(X, texts)
        if self.mean_model_ is not None:
            P = P + self.mean_model_.predict(X)[:, None]
        return P[:, 0] if self.one_d_ else P

    def predict_relative(self, X, texts=None) -> np.ndarray:
        """Predictions minus their row mean (what routing depends on)."""
        P = np.asarray(self.predict(X, texts=texts)).reshape(len(X), -1)
        return P - P.mean(axis=1, keepdims=True)

    # -- state for artifacts ------------------------------------------------------------------
    def get_state(self) -> State:
        check_is_fitted(self, "n_outputs_")
        meta, arrays, texts = self._core_state()
        meta = {
            "kind": self.kind,
            "params": _jsonable(self.get_params(deep=False)),
            "n_features_in": int(self.n_features_in_),
            "n_outputs": int(self.n_outputs_),
            "one_d": bool(self.one_d_),
            "core": meta,
        }
        if self.mean_model_ is not None:
            m_meta, m_arr, m_txt = self.mean_model_.get_state()
            meta["mean_model"] = m_meta
            arrays.update({f"mean_model/{k}": v for k, v in m_arr.items()})
            texts.update({f"mean_model/{k}": v for k, v in m_txt.items()})
        return meta, arrays, texts

    @classmethod
    def from_state(cls, meta: dict, arrays: dict, texts: dict) -> "QualityPredictor":
        kind = meta["kind"]
        if kind not in PREDICTORS:
            raise ValueError(f"unknown predictor kind '{kind}' in state; known: {sorted(PREDICTORS)}")
        obj = PREDICTORS[kind](**meta["params"])
        obj.n_features_in_ = int(meta["n_features_in"])
        obj.n_outputs_ = int(meta["n_outputs"])
        obj.one_d_ = bool(meta["one_d"])
        obj.mean_model_ = None
        if "mean_model" in meta:
            obj.mean_model_ = QualityPredictor.from_state(
                meta["mean_model"], _sub(arrays, "mean_model/"), _sub(texts, "mean_model/")
            )
        obj._set_core_state(meta["core"], arrays, texts)
        return obj


def _sub(d: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}


def _slice(X, sl):
    return X if sl is None else X[:, int(sl[0]):int(sl[1])]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


class RidgePredictor(QualityPredictor):
    """Multi-output ridge regression on standardized features (closed form)."""

    kind = "ridge"

    def __init__(self, alpha: float = 10.0, relative: bool = True,
                 feature_slice: tuple[int, int] | None = None):
        self.alpha = alpha
        self.relative = relative
        self.feature_slice = feature_slice

    def _fit_core(self, X, Y, texts=None):
        X = _slice(X, self.feature_slice)
        self.x_mean_ = X.mean(axis=0)
        sd = X.std(axis=0)
        self.x_scale_ = np.where(sd > 1e-12, sd, 1.0)
        Z = (X - self.x_mean_) / self.x_scale_
        self.y_mean_ = Y.mean(axis=0)
        A = Z.T @ Z + float(self.alpha) * np.eye(Z.shape[1])
        self.coef_ = np.linalg.solve(A, Z.T @ (Y - self.y_mean_))

    def _predict_core(self, X, texts=None):
        X = _slice(X, self.feature_slice)
        return ((X - self.x_mean_) / self.x_scale_) @ self.coef_ + self.y_mean_

    def _core_state(self):
        return {}, {"x_mean": self.x_mean_, "x_scale": self.x_scale_, "y_mean": self.y_mean_, "coef": self.coef_}, {}

    def _set_core_state(self, meta, arrays, texts):
        self.x_mean_, self.x_scale_ = arrays["x_mean"], arrays["x_scale"]
        self.y_mean_, self.coef_ = arrays["y_mean"], arrays["coef"]


class KNNPredictor(QualityPredictor):
    """Mean quality of the k most similar training prompts (cosine similarity).

    ``temperature`` > 0 weights neighbours by softmax(similarity / temperature); None weighs
    them equally. Columns ``feature_slice`` (start, stop) restrict the similarity to one block
    (e.g. the embedding) when features are composed.
    """

    kind = "knn"

    def __init__(self, n_neighbors: int = 50, temperature: float | None = None,
                 relative: bool = True, feature_slice: tuple[int, int] | None = None,
                 stack_kernels: dict | None = None):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.relative = relative
        self.feature_slice = feature_slice
        self.stack_kernels = stack_kernels

    def _prep(self, X):
        X = _slice(X, self.feature_slice)
        n = np.linalg.norm(X, axis=1, keepdims=True)
        return (X / np.where(n > 0, n, 1.0)).astype(np.float32)

    def _fit_core(self, X, Y, texts=None):
        if int(self.n_neighbors) < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {self.n_neighbors}")
        self.X_ = self._prep(X)
        self.Y_ = Y.astype(np.float64)

    def neighbors(self, X, k: int, exclude_self: bool = False):
        """(similarities, indices) of the k nearest training rows, most similar first."""
        Q = self._prep(np.asarray(X, dtype=np.float64))
        k_eff = min(k + int(exclude_self), len(self.X_))
        sims, idx = [], []
        for s in range(0, len(Q), 2048):  # bounded memory for big queries
            S = Q[s:s + 2048] @ self.X_.T
            part = np.argpartition(-S, k_eff - 1, axis=1)[:, :k_eff]
            ps = np.take_along_axis(S, part, axis=1)
            order = np.argsort(-ps, axis=1, kind="stable")
            sims.append(np.take_along_axis(ps, order, axis=1))
            idx.append(np.take_along_axis(part, order, axis=1))
        sims, idx = np.vstack(sims), np.vstack(idx)
        if exclude_self:
            sims, idx = sims[:, 1:], idx[:, 1:]
        return sims, idx

    def _weighted(self, sims, idx, temperature=None):
        if temperature:
            w = np.exp((sims - sims[:, :1]) / float(temperature))
        else:
            w = np.ones_like(sims)
        w = w / w.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkj->nj", w, self.Y_[idx])

    def _predict_core(self, X, texts=None):
        sims, idx = self.neighbors(X, int(self.n_neighbors))
        return self._weighted(sims, idx, self.temperature)

    def stack_features(self, X, texts=None) -> np.ndarray:
        """Several neighbourhood estimates at once for a stacking model.

        ``stack_kernels``: ``softmax`` [[T, k], ...] (weights exp((sim - sim_1) / T) over the top k),
        ``inverse`` [k, ...] (weights 1 / (1 - sim + 1e-3)), ``density`` [T, ...] (log sum of
        exp((sim - 1) / T) over the top 200: how crowded the neighbourhood is) and ``distance``
        [k, ...] (mean cosine distance to the top k). Without it: the plain prediction.
        """
        kern = self.stack_kernels
        if not kern:
            return super().stack_features(X, texts)
        ks = [int(k) for _, k in kern.get("softmax", [])] + [int(k) for k in kern.get("inverse", [])]
        ks += [int(k) for k in kern.get("distance", [])] + ([200] if kern.get("density") else [])
        kmax = max(ks + [int(self.n_neighbors)])
        sims, idx = self.neighbors(np.asarray(X, dtype=np.float64), kmax)
        cols = []
        for T, k in kern.get("softmax", []):
            cols.append(self._weighted(sims[:, :int(k)], idx[:, :int(k)], float(T)))
        for k in kern.get("inverse", []):
            w = 1.0 / (1.0 - sims[:, :int(k)] + 1e-3)
            cols.append(np.einsum("nk,nkj->nj", w / w.sum(1, keepdims=True), self.Y_[idx[:, :int(k)]]))
        for T in kern.get("density", []):
            cols.append(np.log(np.exp((sims[:, :200] - 1.0) / float(T)).sum(1, keepdims=True)))
        for k in kern.get("distance", []):
            cols.append((1.0 - sims[:, :int(k)]).mean(1, keepdims=True))
        return np.hstack(cols)

    def _core_state(self):
        return {}, {"X": self.X_, "Y": self.Y_}, {}

    def _set_core_state(self, meta, arrays, texts):
        self.X_, self.Y_ = arrays["X"].astype(np.float32), arrays["Y"]


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

    kind = "lgbm"

    def __init__(self, params: dict | None = None, relative: bool = True, seed: int = 0,
                 n_jobs: int = 2, early_stopping_rounds: int | None = None,
                 validation_fraction: float = 0.15, n_bags: int = 1):
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
        p.update({"random_state": int(self.seed) + bag, "n_jobs": int(self.n_jobs), "verbose": -1,
                  "deterministic": True, "force_row_wise": True})
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
                    X[~val], y[~val], eval_set=[(X[val], y[val])],
                    callbacks=[lgb.early_stopping(int(self.early_stopping_rounds), verbose=False)])
            p["n_estimators"] = int(max(m.best_iteration_ or p["n_estimators"], 20) * 1.1)
        return lgb.LGBMRegressor(**p).fit(X, y).booster_

    def _fit_core(self, X, Y, texts=None):
        try:
            self.boosters_ = [[self._fit_one(X, Y[:, j], b) for j in range(Y.shape[1])]
                              for b in range(max(1, int(self.n_bags)))]
        except TypeError as e:
            raise ConfigError(f"predictor lgbm: bad LightGBM params {self.params}: {e}") from e

    def _predict_core(self, X, texts=None):
        threads = 1 if len(X) < 256 else int(self.n_jobs)  # thread start-up dominates small calls
        return np.mean([
            np.stack([b.predict(X, num_threads=threads) for b in bag], axis=1)
            for bag in self.boosters_
        ], axis=0)

    def _core_state(self):
        texts = {f"booster_{i}_{j}.txt": b.model_to_string()
                 for i, bag in enumerate(self.boosters_) for j, b in enumerate(bag)}
        return {"n_bags": len(self.boosters_), "n_boosters": len(self.boosters_[0])}, {}, texts

    def _set_core_state(self, meta, arrays, texts):
        import lightgbm as lgb

        self.boosters_ = [[lgb.Booster(model_str=texts[f"booster_{i}_{j}.txt"])
                           for j in range(int(meta["n_boosters"]))] for i in range(int(meta["n_bags"]))]


class TfidfRidgePredictor(QualityPredictor):
    """Ridge regression on TF-IDF of the prompt text (word n-grams + character n-grams).

    Reads the prompts (``texts=``), not the feature matrix: it catches the exact words (artist
    names, style tags, rare objects) that a sentence embedding smooths over. ``alphas`` are the
    ridge strengths on both blocks; ``word_alpha`` / ``char_alpha`` add one model per block.
    ``predict`` uses the first alpha; ``stack_features`` returns every model's predictions.
    State: vocabularies, idf weights and coefficients as arrays (no pickle).
    """

    kind = "tfidf_ridge"
    needs_texts = True

    def __init__(self, alphas: tuple = (3.0,), word_ngrams: tuple = (1, 2), char_ngrams: tuple = (2, 5),
                 word_min_df: int = 2, char_min_df: int = 3, max_features: int = 100_000,
                 word_alpha: float | None = None, char_alpha: float | None = None, relative: bool = True):
        self.alphas = alphas
        self.word_ngrams = word_ngrams
        self.char_ngrams = char_ngrams
        self.word_min_df = word_min_df
        self.char_min_df = char_min_df
        self.max_features = max_features
        self.word_alpha = word_alpha
        self.char_alpha = char_alpha
        self.relative = relative

    def _vectorizers(self, n_docs: int):
        from sklearn.feature_extraction.text import TfidfVectorizer

        small = n_docs < 50  # tiny tables: min_df would drop every term
        return (
            TfidfVectorizer(ngram_range=tuple(self.word_ngrams), min_df=1 if small else int(self.word_min_df),
                            sublinear_tf=True, dtype=np.float64),
            TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.char_ngrams),
                            min_df=1 if small else int(self.char_min_df), sublinear_tf=True,
                            max_features=int(self.max_features), dtype=np.float64),
        )

    def _models(self):
        out = [("both", float(a)) for a in self.alphas]
        if self.word_alpha is not None:
            out.append(("word", float(self.word_alpha)))
        if self.char_alpha is not None:
            out.append(("char", float(self.char_alpha)))
        return out

    def _blocks(self, texts):
        from scipy import sparse

        W = self.word_vec_.transform(texts)
        C = self.char_vec_.transform(texts)
        return {"word": W, "char": C, "both": sparse.hstack([W, C]).tocsr()}

    def _fit_core(self, X, Y, texts=None):
        from sklearn.linear_model import Ridge

        if not self._models():
            raise ConfigError("tfidf_ridge: give at least one alpha")
        self.word_vec_, self.char_vec_ = self._vectorizers(len(texts))
        try:
            self.word_vec_.fit(texts)
            self.char_vec_.fit(texts)
        except ValueError as e:  # e.g. an empty vocabulary
            raise ValueError(f"tfidf_ridge: cannot build a vocabulary from the prompts ({e})") from e
        blocks = self._blocks(texts)
        self.coefs_, self.intercepts_ = [], []
        for block, alpha in self._models():
            r = Ridge(alpha=alpha).fit(blocks[block], Y)
            self.coefs_.append(np.asarray(r.coef_, dtype=np.float64).reshape(Y.shape[1], -1))
            self.intercepts_.append(np.asarray(r.intercept_, dtype=np.float64).reshape(Y.shape[1]))

    def _all(self, texts):
        blocks = self._blocks(texts)
        return [blocks[b] @ c.T + i for (b, _), c, i in zip(self._models(), self.coefs_, self.intercepts_)]

    def _predict_core(self, X, texts=None):
        return np.asarray(self._all(texts)[0])

    def stack_features(self, X, texts=None) -> np.ndarray:
        texts = self._check_texts(X, texts)
        return np.hstack([np.asarray(p) for p in self._all(texts)])

    def _core_state(self):
        arrays = {}
        for name, vec in (("word", self.word_vec_), ("char", self.char_vec_)):
            terms = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
            arrays[f"{name}_terms"] = np.asarray(terms, dtype=str)
            arrays[f"{name}_idf"] = vec.idf_
        for m, (c, i) in enumerate(zip(self.coefs_, self.intercepts_)):
            arrays[f"coef{m}"], arrays[f"intercept{m}"] = c, i
        return {"n_models": len(self.coefs_)}, arrays, {}

    def _set_core_state(self, meta, arrays, texts):
        self.word_vec_, self.char_vec_ = self._vectorizers(10**6)
        for name, vec in (("word", self.word_vec_), ("char", self.char_vec_)):
            terms = [str(t) for t in arrays[f"{name}_terms"]]
            vec.set_params(vocabulary={t: i for i, t in enumerate(terms)}, max_features=None, min_df=1)
            vec.idf_ = arrays[f"{name}_idf"]
        n = int(meta["n_models"])
        self.coefs_ = [arrays[f"coef{m}"] for m in range(n)]
        self.intercepts_ = [arrays[f"intercept{m}"] for m in range(n)]


class StackPredictor(QualityPredictor):
    """Stacking: out-of-fold outputs of base predictors become features of final models.

    ``base`` is a list of predictor specs (kNN kernels on the embedding, TF-IDF ridge, ridge on the
    embedding, ...). Each is fitted on K-1 folds to produce its ``stack_features`` for the held-out
    fold, so the final models learn how far to trust each base from honest, out-of-sample
    inputs; then the bases are refitted on all rows for prediction. ``final`` is one spec or a
    list whose predictions are averaged (a tree stacker and a linear one complement each other).
    ``passthrough_slice`` hands those original feature columns to the final models too.
    """

    kind = "stack"

    def __init__(self, base: list | None = None, final: list | dict | None = None, n_folds: int = 5,
                 passthrough_slice: tuple[int, int] | None = None, relative: bool = True, seed: int = 0):
        self.base = base
        self.final = final
        self.n_folds = n_folds
        self.passthrough_slice = passthrough_slice
        self.relative = relative
        self.seed = seed

    @property
    def needs_texts(self):  # noqa: D401 - a property shadowing the class flag
        return any(b.needs_texts for b in self._bases())

    def _bases(self) -> list[QualityPredictor]:
        specs = self.base if self.base is not None else [{"kind": "knn", "n_neighbors": 100}]
        return [build_predictor(dict(sp)) for sp in specs]

    def _finals(self) -> list[QualityPredictor]:
        specs = self.final if self.final is not None else {"kind": "lgbm"}
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
        from sklearn.model_selection import KFold

        folds = max(2, min(int(self.n_folds), len(X)))
        splits = list(KFold(folds, shuffle=True, random_state=int(self.seed)).split(X))
        sub = (lambda idx: None) if texts is None else (lambda idx: [texts[i] for i in idx])  # noqa: E731
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

    def _predict_core(self, X, texts=None):
        feats = [b.stack_features(X, texts=texts) for b in self.bases_]
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
            return QualityPredictor.from_state(m, _sub(arrays, f"{key}/"), _sub(texts, f"{key}/"))

        self.bases_ = [load(f"base{i}", m) for i, m in enumerate(meta["bases"])]
        self.finals_ = [load(f"final{i}", m) for i, m in enumerate(meta["finals"])]


def resolve_blocks(spec, blocks: dict[str, slice]):
    """Replace ``block: <featurizer name>`` in a predictor spec (recursively) by ``feature_slice``."""
    if isinstance(spec, dict):
        spec = {k: resolve_blocks(v, blocks) for k, v in spec.items()}
        for key in [k for k in spec if k == "block" or k.endswith("_block")]:
            name = spec.pop(key)
            target = "feature_slice" if key == "block" else key[: -len("_block")] + "_slice"
            if name is None:
                continue
            names = [name] if isinstance(name, str) else list(name)
            if key == "passthrough_block":  # optional extras: pass through those configured
                names = [n for n in names if n in blocks]
                if not names:
                    continue
                name = names if len(names) > 1 or not isinstance(name, str) else name
            missing = [n for n in names if n not in blocks]
            if missing:
                raise ConfigError(
                    f"predictor {key} '{missing[0]}' is not a configured featurizer ({sorted(blocks)})")
            sls = [[blocks[n].start, blocks[n].stop] for n in names]
            spec[target] = sls[0] if isinstance(name, str) else sls
        return spec
    if isinstance(spec, list):
        return [resolve_blocks(v, blocks) for v in spec]
    return spec


PREDICTORS: dict[str, type[QualityPredictor]] = {
    "ridge": RidgePredictor,
    "knn": KNNPredictor,
    "lgbm": LGBMPredictor,
    "stack": StackPredictor,
    "tfidf_ridge": TfidfRidgePredictor,
}


def build_predictor(spec: dict | None) -> QualityPredictor:
    """``{"kind": "lgbm", ...params}`` -> an unfitted predictor."""
    spec = dict(spec or {"kind": "lgbm"})
    spec.pop("_target_", None)
    kind = spec.pop("kind", "lgbm")
    if kind not in PREDICTORS:
        raise ConfigError(f"unknown predictor '{kind}'; known: {sorted(PREDICTORS)}")
    try:
        return PREDICTORS[kind](**spec)
    except TypeError as e:
        raise ConfigError(f"predictor '{kind}': bad parameters {sorted(spec)}: {e}") from e


__all__ = [
    "QualityPredictor", "RidgePredictor", "KNNPredictor", "LGBMPredictor", "StackPredictor",
    "TfidfRidgePredictor",
    "PREDICTORS", "build_predictor", "resolve_blocks",
]
