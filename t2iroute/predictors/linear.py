"""Linear predictors: ridge on the features, ridge on TF-IDF of the prompt text."""

from __future__ import annotations

import numpy as np

from t2iroute.errors import ConfigError
from t2iroute.predictors.base import QualityPredictor, _slice


class RidgePredictor(QualityPredictor):
    """Multi-output ridge regression on standardized features (closed form)."""

    type_name = "ridge"

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



class TfidfRidgePredictor(QualityPredictor):
    """Ridge regression on TF-IDF of the prompt text (word n-grams + character n-grams).

    Reads the prompts (``texts=``), not the feature matrix: it catches the exact words (artist
    names, style tags, rare objects) that a sentence embedding smooths over. ``alphas`` are the
    ridge strengths on both blocks; ``word_alpha`` / ``char_alpha`` add one model per block.
    ``predict`` uses the first alpha; ``stack_features`` returns every model's predictions.
    State: vocabularies, idf weights and coefficients as arrays (no pickle).
    """

    type_name = "tfidf_ridge"
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
