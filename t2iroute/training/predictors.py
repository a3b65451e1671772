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

    # subclasses implement these on 2-D float targets
    def _fit_core(self, X: np.ndarray, Y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict_core(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _core_state(self) -> State:
        raise NotImplementedError

    def _set_core_state(self, meta: dict, arrays: dict, texts: dict) -> None:
        raise NotImplementedError

    def fit(self, X, y):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        self.one_d_ = y.ndim == 1
        Y = y.reshape(len(y), -1).astype(np.float64)
        self.n_outputs_ = Y.shape[1]
        if getattr(self, "relative", False) and Y.shape[1] > 1:
            center = Y.mean(axis=1, keepdims=True)
            self.mean_model_ = RidgePredictor(alpha=10.0, relative=False).fit(X, center[:, 0])
            self._fit_core(X, Y - center)
        else:
            self.mean_model_ = None
            self._fit_core(X, Y)
        return self

    def predict(self, X):
        check_is_fitted(self, "n_outputs_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        P = self._predict_core(X)
        if self.mean_model_ is not None:
            P = P + self.mean_model_.predict(X)[:, None]
        return P[:, 0] if self.one_d_ else P

    def predict_relative(self, X) -> np.ndarray:
        """Predictions minus their row mean (what routing depends on)."""
        P = np.asarray(self.predict(X)).reshape(len(X), -1)
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

    def __init__(self, alpha: float = 10.0, relative: bool = True):
        self.alpha = alpha
        self.relative = relative

    def _fit_core(self, X, Y):
        self.x_mean_ = X.mean(axis=0)
        sd = X.std(axis=0)
        self.x_scale_ = np.where(sd > 1e-12, sd, 1.0)
        Z = (X - self.x_mean_) / self.x_scale_
        self.y_mean_ = Y.mean(axis=0)
        A = Z.T @ Z + float(self.alpha) * np.eye(Z.shape[1])
        self.coef_ = np.linalg.solve(A, Z.T @ (Y - self.y_mean_))

    def _predict_core(self, X):
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
                 relative: bool = True, feature_slice: tuple[int, int] | None = None):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.relative = relative
        self.feature_slice = feature_slice

    def _prep(self, X):
        if self.feature_slice is not None:
            a, b = self.feature_slice
            X = X[:, a:b]
        n = np.linalg.norm(X, axis=1, keepdims=True)
        return (X / np.where(n > 0, n, 1.0)).astype(np.float32)

    def _fit_core(self, X, Y):
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

    def _weighted(self, sims, idx):
        if self.temperature:
            w = np.exp((sims - sims[:, :1]) / float(self.temperature))
        else:
            w = np.ones_like(sims)
        w = w / w.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkj->nj", w, self.Y_[idx])

    def _predict_core(self, X):
        sims, idx = self.neighbors(X, int(self.n_neighbors))
        return self._weighted(sims, idx)

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
    """One LightGBM regressor per backend. ``params`` go to ``lightgbm.LGBMRegressor``."""

    kind = "lgbm"

    def __init__(self, params: dict | None = None, relative: bool = True, seed: int = 0,
                 n_jobs: int = 2):
        self.params = params
        self.relative = relative
        self.seed = seed
        self.n_jobs = n_jobs

    def _lgbm_params(self) -> dict:
        p = dict(DEFAULT_LGBM)
        p.update(self.params or {})
        p.update({"random_state": int(self.seed), "n_jobs": int(self.n_jobs), "verbose": -1,
                  "deterministic": True, "force_row_wise": True})
        return p

    def _fit_core(self, X, Y):
        import lightgbm as lgb

        try:
            self.boosters_ = [
                lgb.LGBMRegressor(**self._lgbm_params()).fit(X, Y[:, j]).booster_
                for j in range(Y.shape[1])
            ]
        except TypeError as e:
            raise ConfigError(f"predictor lgbm: bad LightGBM params {self.params}: {e}") from e

    def _predict_core(self, X):
        return np.stack([b.predict(X, num_threads=int(self.n_jobs)) for b in self.boosters_], axis=1)

    def _core_state(self):
        texts = {f"booster_{j}.txt": b.model_to_string() for j, b in enumerate(self.boosters_)}
        return {"n_boosters": len(self.boosters_)}, {}, texts

    def _set_core_state(self, meta, arrays, texts):
        import lightgbm as lgb

        self.boosters_ = [
            lgb.Booster(model_str=texts[f"booster_{j}.txt"]) for j in range(int(meta["n_boosters"]))
        ]


class StackPredictor(QualityPredictor):
    """Stacking: out-of-fold predictions of base predictors become features of a final model.

    ``base`` is a list of predictor specs (e.g. kNN on the embedding block at several k); each
    is fitted on K-1 folds to predict the held-out fold, so the final model (``final``, LightGBM
    by default) learns how far to trust each base predictor from honest, out-of-sample inputs.
    With ``passthrough`` the final model also sees the original features. At predict time the
    bases are refitted on all training rows.
    """

    kind = "stack"

    def __init__(self, base: list | None = None, final: dict | None = None, n_folds: int = 5,
                 passthrough: bool = True, relative: bool = True, seed: int = 0):
        self.base = base
        self.final = final
        self.n_folds = n_folds
        self.passthrough = passthrough
        self.relative = relative
        self.seed = seed

    def _bases(self) -> list[QualityPredictor]:
        specs = self.base if self.base is not None else [{"kind": "knn", "n_neighbors": 100}]
        return [build_predictor(dict(sp)) for sp in specs]

    def _final(self) -> QualityPredictor:
        spec = dict(self.final or {"kind": "lgbm"})
        spec.setdefault("relative", False)  # targets are already relative here
        return build_predictor(spec)

    def _stack_features(self, X, base_preds):
        parts = ([X] if self.passthrough else []) + base_preds
        return np.hstack(parts)

    def _fit_core(self, X, Y):
        from sklearn.model_selection import KFold

        n = len(X)
        folds = max(2, min(int(self.n_folds), n))
        kf = KFold(folds, shuffle=True, random_state=int(self.seed))
        oof = []
        self.bases_ = []
        for proto in self._bases():
            pred = np.zeros_like(Y)
            for a, b in kf.split(X):
                pred[b] = clone(proto).fit(X[a], Y[a]).predict(X[b]).reshape(len(b), -1)
            oof.append(pred)
            self.bases_.append(clone(proto).fit(X, Y))
        self.final_ = self._final().fit(self._stack_features(X, oof), Y)

    def _predict_core(self, X):
        preds = [b.predict(X).reshape(len(X), -1) for b in self.bases_]
        return np.asarray(self.final_.predict(self._stack_features(X, preds))).reshape(len(X), -1)

    def _core_state(self):
        meta, arrays, texts = {"bases": []}, {}, {}
        for i, b in enumerate(self.bases_ + [self.final_]):
            m, a, t = b.get_state()
            key = f"final" if i == len(self.bases_) else f"base{i}"
            if key == "final":
                meta["final"] = m
            else:
                meta["bases"].append(m)
            arrays.update({f"{key}/{k}": v for k, v in a.items()})
            texts.update({f"{key}/{k}": v for k, v in t.items()})
        return meta, arrays, texts

    def _set_core_state(self, meta, arrays, texts):
        self.bases_ = [
            QualityPredictor.from_state(m, _sub(arrays, f"base{i}/"), _sub(texts, f"base{i}/"))
            for i, m in enumerate(meta["bases"])
        ]
        self.final_ = QualityPredictor.from_state(meta["final"], _sub(arrays, "final/"), _sub(texts, "final/"))


def resolve_blocks(spec, blocks: dict[str, slice]):
    """Replace ``block: <featurizer name>`` in a predictor spec (recursively) by ``feature_slice``."""
    if isinstance(spec, dict):
        spec = {k: resolve_blocks(v, blocks) for k, v in spec.items()}
        if "block" in spec:
            name = spec.pop("block")
            if name is not None:
                if name not in blocks:
                    raise ConfigError(f"predictor block '{name}' is not a configured featurizer ({sorted(blocks)})")
                sl = blocks[name]
                spec["feature_slice"] = [sl.start, sl.stop]
        return spec
    if isinstance(spec, list):
        return [resolve_blocks(v, blocks) for v in spec]
    return spec


PREDICTORS: dict[str, type[QualityPredictor]] = {
    "ridge": RidgePredictor,
    "knn": KNNPredictor,
    "lgbm": LGBMPredictor,
    "stack": StackPredictor,
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
    "PREDICTORS", "build_predictor", "resolve_blocks",
]
