"""Quality predictors: the base class, state export and helpers.

scikit-learn conventions: ``fit(X, Y)`` returns self, learned state lives in trailing-underscore
attributes, ``predict(X)`` returns ``(n_prompts, n_backends)`` (``(n,)`` when fitted on a 1-D
target). With ``relative=True`` (the default) a predictor learns each backend's quality relative
to the prompt's mean over backends, which is all that routing needs and removes the large
per-prompt offset (some prompts score high on every backend); a ridge model of the prompt mean
is added back so that predictions stay on the metric's scale.

Every fitted predictor exports its state as JSON + numpy arrays + text (LightGBM's own model
format), so an artifact never needs pickle (see ``t2iroute.router.artifact``). A predictor is
registered by its ``type_name`` in :mod:`t2iroute.registry`.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import numpy as np

from t2iroute import registry
from t2iroute.errors import ConfigError
from t2iroute.predictors.candidates import resolve_candidates

State = tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]


class NotFittedError(ValueError, AttributeError):
    """predict() before fit() (scikit-learn's NotFittedError is raised instead where it is loaded)."""


#: The largest magnitude a stored number may have (arrays, model values). A quality, a cost or a
#: coefficient this large is no model's; within it, no prediction can overflow to infinity.
MAX_ABS = 1e15
#: Bounds on what a stored state may declare (features, outputs: a router's backends).
MAX_FEATURES = 10_000_000
MAX_OUTPUTS = 10_000


class StateError(ValueError):
    """A predictor's stored state (an artifact's arrays, model texts or predictor meta) is unusable.

    ``what`` names the array, model file or field as this predictor knows it, ``reason`` says what
    is wrong; ``obj`` is the array or text concerned, so that the loader can name it as the
    artifact stores it (``final0__coef`` in ``predictor/arrays.npz``).
    """

    def __init__(self, what: str, reason: str, obj: Any = None):
        super().__init__(f"{what} {reason}")
        self.what, self.reason, self.obj = what, reason, obj
        self.where = ""  # the nested predictor it is about ("final0/"), prefixed on the way out


def load_nested(key: str, meta: dict, arrays: dict, texts: dict) -> "QualityPredictor":
    """The nested predictor stored under ``key/`` (a mean model, a stack's base or final...)."""
    try:
        return QualityPredictor.from_state(meta, _sub(arrays, f"{key}/"), _sub(texts, f"{key}/"))
    except StateError as e:
        e.where = f"{key}/{e.where}"
        raise


def state_int(meta: dict, key: str, lo: int, hi: int, what: str = "predictor meta") -> int:
    """``meta[key]``, a whole number in [lo, hi] (not a bool, a float or a string)."""
    v = meta.get(key) if isinstance(meta, dict) else None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise StateError(f"{what}: '{key}'", f"must be a whole number from {lo} to {hi}, got {v!r:.60}")
    return v


def state_number(value, what: str, lo: float = -MAX_ABS, hi: float = MAX_ABS) -> float:
    """A finite number in [lo, hi] (not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise StateError(what, f"must be a number from {lo:g} to {hi:g}, got {value!r:.60}")
    return float(value)


def state_array(arrays: dict, name: str, shape: tuple, *, kind: str = "f", positive: bool = False) -> np.ndarray:
    """The stored array ``name`` checked before any prediction uses it: present, of ``shape``
    (ints; None: any length >= 1), numeric (``kind="f"``: returned as float64, finite, at most
    :data:`MAX_ABS` in magnitude, > 0 where ``positive``) or text (``kind="U"``)."""
    if name not in arrays:
        raise StateError(f"array '{name}'", "is missing")
    a = arrays[name]
    if not isinstance(a, np.ndarray):
        raise StateError(f"array '{name}'", f"is not an array ({type(a).__name__})", a)
    want = " x ".join("n" if s is None else str(s) for s in shape) or "a scalar"
    if a.ndim != len(shape) or any((s is None and n < 1) or (s is not None and n != s) for s, n in zip(shape, a.shape)):
        raise StateError(f"array '{name}'", f"has shape {a.shape}, the predictor needs ({want})", a)
    if kind == "U":
        if a.dtype.kind != "U":
            raise StateError(f"array '{name}'", f"holds {a.dtype}, the predictor needs text", a)
        return a
    if a.dtype.kind not in "fiu":
        raise StateError(f"array '{name}'", f"holds {a.dtype}, the predictor needs numbers", a)
    out = a.astype(np.float64)
    if not np.isfinite(out).all():
        raise StateError(f"array '{name}'", "holds NaN or infinite values", a)
    if out.size and np.abs(out).max() > MAX_ABS:
        raise StateError(f"array '{name}'", f"holds values beyond +-{MAX_ABS:g}", a)
    if positive and out.size and out.min() <= 0:
        raise StateError(f"array '{name}'", "must be > 0 everywhere (it divides), holds values <= 0", a)
    return out


def slice_width(sl, n_features: int, what: str = "feature_slice") -> int:
    """The number of columns ``_slice`` takes from ``n_features``: None, or [start, stop] with
    0 <= start < stop <= n_features."""
    if sl is None:
        return n_features
    ok = (
        isinstance(sl, (list, tuple))
        and len(sl) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in sl)
    )
    if not ok or not 0 <= sl[0] < sl[1] <= n_features:
        raise StateError(
            f"predictor param '{what}'", f"must be [start, stop] with 0 <= start < stop <= {n_features}, got {sl!r:.60}"
        )
    return int(sl[1]) - int(sl[0])


class _Estimator:
    """scikit-learn's estimator protocol (get_params, set_params, clone, tags) without importing
    scikit-learn: it costs ~2 s of start-up, and a loaded router predicts with numpy alone.
    Fitting validates its input with scikit-learn's own ``validate_data``."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        out = {}
        for key in self._get_param_names():
            value = getattr(self, key)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{key}__{k}", v) for k, v in value.get_params().items())
            out[key] = value
        return out

    def set_params(self, **params):
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"Invalid parameter {key!r} for estimator {self}. Valid parameters are: {valid!r}.")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        p = self.get_params(deep=False)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in p.items())})"

    _estimator_type = "regressor"

    def __sklearn_tags__(self):
        from sklearn.utils import RegressorTags, Tags, TargetTags

        return Tags(
            estimator_type="regressor",
            target_tags=TargetTags(required=True, multi_output=True, single_output=True),
            transformer_tags=None,
            regressor_tags=RegressorTags(),
            classifier_tags=None,
        )

    def score(self, X, y, sample_weight=None) -> float:
        from sklearn.metrics import r2_score

        return r2_score(y, self.predict(X), sample_weight=sample_weight)


def _check_predict_input(est, X) -> np.ndarray:
    """scikit-learn's validation where scikit-learn is loaded (training, tests); else numpy's.

    A plain non-empty 2-D numeric array (what routing hands every predictor) takes numpy's checks
    either way: scikit-learn's cost ~0.5 ms a call sniffing for dataframes, and a stack calls this
    once per model per routed batch."""
    plain = type(X) is np.ndarray and X.ndim == 2 and len(X) > 0 and X.dtype.kind in "fiu"
    if "sklearn" in sys.modules and not (
        plain and hasattr(est, "n_outputs_") and not hasattr(est, "feature_names_in_")
    ):
        from sklearn.utils.validation import check_is_fitted, validate_data

        check_is_fitted(est, "n_outputs_")
        return validate_data(est, X, reset=False, dtype=np.float64)
    if not hasattr(est, "n_outputs_"):
        raise NotFittedError(f"This {type(est).__name__} instance is not fitted yet. Call 'fit' first.")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"Expected 2D array, got {X.ndim}D array instead. Reshape your data.")
    if X.shape[1] != est.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(est).__name__} is expecting {est.n_features_in_} features as input"
        )
    if not np.isfinite(X).all():
        raise ValueError("Input X contains NaN or infinity.")
    return X


class QualityPredictor(_Estimator):
    """Base class: handles validation, 1-D targets and the relative-target transform."""

    type_name = "base"

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

    #: True for predictors whose ``_fit_core`` takes targets with missing cells (NaN) itself; the
    #: others are fitted by :meth:`fit` with missing cells imputed (see there)
    handles_missing = False
    #: refits with the missing cells refilled by the previous fit, for predictors that do not
    #: handle missing cells themselves (cheap ones do a few; each round is one more fit)
    missing_rounds = 0

    def fit(self, X, y, texts=None, fill=None):
        """Fit on features ``X`` (n, d) and targets ``y`` (n, k), or (n,).

        ``y`` may miss cells (NaN: a backend not run on a prompt). Every observed cell teaches:
        predictors that handle missing cells (``handles_missing``) get them as NaN; the others are
        fitted on the table with each missing cell filled by a two-way model (prompt effect +
        backend offset) plus the interaction a shared low-rank model of every backend learns from
        the observed cells (:class:`~t2iroute.predictors.mf.MFPredictor`), then refitted
        ``missing_rounds`` times with each missing cell refilled by the previous fit's
        prediction (the EM iteration: for a linear model it converges to the fit on the observed
        cells alone). A prompt with no observed cell, or a backend with none, is an error naming it.
        ``fill``: that first fill, when the caller has it (:func:`mf_fill` of the same ``X``, ``y``;
        cross-validation shares one per fold among its candidates)."""
        from sklearn.utils.validation import validate_data

        if y is not None:
            y_arr = np.asarray(y)
            if y_arr.ndim in (1, 2) and y_arr.dtype.kind == "f" and np.isnan(y_arr).any():
                return self._fit_missing(X, y_arr.astype(np.float64), texts, fill)
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        texts = self._check_texts(X, texts)
        self.one_d_ = y.ndim == 1
        Y = y.reshape(len(y), -1).astype(np.float64)
        self.n_outputs_ = Y.shape[1]
        self._fit_complete(X, Y, texts)
        return self

    def _fit_missing(self, X, y, texts, fill=None):
        from sklearn.utils.validation import validate_data

        X = validate_data(self, X, dtype=np.float64)
        texts = self._check_texts(X, texts)
        if len(y) != len(X):
            raise ValueError(f"y has {len(y)} rows for {len(X)} feature rows")
        if np.isinf(y).any():
            raise ValueError("y holds infinite values (a missing cell is NaN)")
        self.one_d_ = y.ndim == 1
        Y = y.reshape(len(y), -1).astype(np.float64)
        self.n_outputs_ = Y.shape[1]
        obs = np.isfinite(Y)
        empty_rows = np.flatnonzero(~obs.any(axis=1))
        if len(empty_rows):
            raise ValueError(f"row {int(empty_rows[0])} of y has no observed cell ({len(empty_rows)} such rows)")
        empty_cols = np.flatnonzero(~obs.any(axis=0))
        if len(empty_cols):
            raise ValueError(f"column {int(empty_cols[0])} of y (a backend) has no observed cell")
        if self.handles_missing:
            self._fit_complete(X, Y, texts)
            return self
        if fill is None:
            fill = mf_fill(X, Y)
        Yf = np.where(obs, Y, np.asarray(fill, dtype=np.float64).reshape(Y.shape))
        for _ in range(int(self.missing_rounds)):
            self._fit_complete(X, Yf, texts)
            P = np.asarray(self.predict(X, texts=texts)).reshape(len(X), -1)
            Yf = np.where(obs, Y, P)
        self._fit_complete(X, Yf, texts)
        return self

    def _fit_complete(self, X, Y, texts):
        if getattr(self, "relative", False) and Y.shape[1] > 1:
            # the prompt's effect: its mean over backends (with missing cells: the two-way model's)
            center = Y.mean(axis=1, keepdims=True) if not np.isnan(Y).any() else two_way(Y)[0][:, None]
            # the registry's ridge (t2iroute.predictors.linear, a subclass of this class), which
            # from_state rebuilds the mean model with too
            ridge = registry.get("predictors", "ridge")
            self.mean_model_ = ridge(alpha=10.0, relative=False).fit(X, center[:, 0])
            single = np.isfinite(Y).sum(axis=1) < 2
            if single.any():
                # a prompt with one cell has no effect of its own apart from its backend's (the
                # two-way model would fit that cell exactly and it would teach nothing but the
                # offset): its effect is the one its features predict, so its cell teaches how
                # backends differ (a served image, bandit feedback, is such a cell)
                center = np.where(single[:, None], self.mean_model_.predict(X)[:, None], center)
            self._fit_core(X, Y - center, texts)
        else:
            self.mean_model_ = None
            self._fit_core(X, Y, texts)

    def predict(self, X, texts=None):
        X = _check_predict_input(self, X)
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
        if not hasattr(self, "n_outputs_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted")
        meta, arrays, texts = self._core_state()
        meta = {
            "type": self.type_name,
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
        """Rebuild a predictor from :meth:`get_state`'s output, checking it first: every count,
        shape and value a prediction relies on (a :class:`StateError` names what is wrong)."""
        if not isinstance(meta, dict):
            raise StateError("predictor meta", f"must be a mapping, got {type(meta).__name__}")
        name = meta.get("type")
        params = meta.get("params")
        if not isinstance(params, dict):
            raise StateError("predictor meta: 'params'", f"must be a mapping, got {params!r:.60}")
        obj = registry.get("predictors", str(name))(**params)
        obj.n_features_in_ = state_int(meta, "n_features_in", 1, MAX_FEATURES)
        obj.n_outputs_ = state_int(meta, "n_outputs", 1, MAX_OUTPUTS)
        one_d = meta.get("one_d")
        if not isinstance(one_d, bool) or (one_d and obj.n_outputs_ != 1):
            raise StateError(
                "predictor meta: 'one_d'",
                f"must be true (one output) or false, got {one_d!r:.60} with {obj.n_outputs_} outputs",
            )
        obj.one_d_ = one_d
        obj.mean_model_ = None
        if "mean_model" in meta:
            mm = load_nested("mean_model", meta["mean_model"], arrays, texts)
            if (mm.n_features_in_, mm.n_outputs_, mm.one_d_) != (obj.n_features_in_, 1, True):
                raise StateError(
                    "predictor meta: 'mean_model'",
                    f"must take the predictor's {obj.n_features_in_} "
                    f"features to one output, takes {mm.n_features_in_} to {mm.n_outputs_}",
                )
            obj.mean_model_ = mm
        if not isinstance(meta.get("core"), dict):
            raise StateError("predictor meta: 'core'", f"must be a mapping, got {meta.get('core')!r:.60}")
        obj._set_core_state(meta["core"], arrays, texts)
        return obj

    def stack_width_(self) -> int:
        """How many columns :meth:`stack_features` returns (what a stacking model takes)."""
        return int(self.n_outputs_)


def mf_fill(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """The shared low-rank model's predictions of every cell of ``Y`` (NaN: missing), what
    predictors that do not handle missing cells are first fitted on in place of those cells."""
    fill = registry.get("predictors", "mf")(rank=3, alpha=1000.0).fit(X, Y)
    return np.asarray(fill.predict(X)).reshape(np.shape(Y)[0], -1)


def two_way(Y: np.ndarray, rounds: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """The additive model ``Y[p, b] ~ mu[p] + off[b]`` fitted on the observed (finite) cells by
    alternating means, ``off`` summing to zero: (mu, off). On a complete ``Y``, ``mu`` is the row
    mean and ``off`` the column means of the centred table. With missing cells, a prompt's effect
    is judged against the backends that saw it, so a prompt seen only by a weak backend is not
    mistaken for a hard prompt (and a backend seen only on hard prompts not for a weak one)."""
    Y = np.asarray(Y, dtype=np.float64)
    obs = np.isfinite(Y)
    Z = np.where(obs, Y, 0.0)
    n_r, n_c = np.maximum(obs.sum(axis=1), 1), np.maximum(obs.sum(axis=0), 1)
    off = np.zeros(Y.shape[1])
    mu = Z.sum(axis=1) / n_r
    for _ in range(int(rounds)):
        off_new = (np.where(obs, Y - mu[:, None], 0.0)).sum(axis=0) / n_c
        off_new -= off_new.mean()
        mu = np.where(obs, Y - off_new[None, :], 0.0).sum(axis=1) / n_r
        done = np.abs(off_new - off).max() < tol
        off = off_new
        if done:
            break
    return mu, off


def backend_means(Y: np.ndarray) -> np.ndarray:
    """Each backend's mean quality over the rows of ``Y``; with missing cells (NaN), the grand
    mean plus the backend's offset in the two-way model (so a backend seen only on hard prompts
    is not judged weak for it)."""
    if not np.isnan(Y).any():
        return Y.mean(axis=0)
    mu, off = two_way(Y)
    return mu.mean() + off


def _sub(d: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}


def _slice(X, sl):
    return X if sl is None else X[:, int(sl[0]) : int(sl[1])]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def resolve_blocks(spec, blocks: dict[str, slice]):
    """Replace ``block: <featurizer name>`` in a predictor spec (recursively) by ``feature_slice``."""
    if isinstance(spec, dict) and spec.get("type") == "auto":
        return resolve_candidates(spec, blocks, resolve_blocks)
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
                raise ConfigError(f"predictor {key} '{missing[0]}' is not a configured featurizer ({sorted(blocks)})")
            sls = [[blocks[n].start, blocks[n].stop] for n in names]
            spec[target] = sls[0] if isinstance(name, str) else sls
        return spec
    if isinstance(spec, list):
        return [resolve_blocks(v, blocks) for v in spec]
    return spec


def build_predictor(spec: dict | None) -> QualityPredictor:
    """``{"type": "lgbm", ...params}`` -> an unfitted predictor (any registered type)."""
    return registry.build("predictors", spec if spec is not None else {"type": "lgbm"})
