"""Linear predictors: ridge on the features, ridge on TF-IDF of the prompt text."""

from __future__ import annotations

import numpy as np

from t2iroute.errors import ConfigError
from t2iroute.predictors.base import (
    QualityPredictor,
    StateError,
    _slice,
    slice_width,
    state_array,
    state_int,
)


class RidgePredictor(QualityPredictor):
    """Multi-output ridge regression on standardized features (closed form)."""

    type_name = "ridge"
    missing_rounds = 3  # cheap: refit on its own fill (EM) a few times

    def __init__(self, alpha: float = 10.0, relative: bool = True, feature_slice: tuple[int, int] | None = None):
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
        d, k = slice_width(self.feature_slice, self.n_features_in_), self.n_outputs_
        self.x_mean_ = state_array(arrays, "x_mean", (d,))
        self.x_scale_ = state_array(arrays, "x_scale", (d,), positive=True)
        self.y_mean_ = state_array(arrays, "y_mean", (k,))
        self.coef_ = state_array(arrays, "coef", (d, k))


def _word_ngram_indices(word: str, lo: int, hi: int, vocab: dict) -> np.ndarray:
    """Vocabulary indices of the ``char_wb`` n-grams of one word that are in ``vocab``, repeats
    kept: the n-grams of the word padded with a space each side, as scikit-learn's
    ``_char_wb_ngrams`` makes them (a word shorter than an n counts once, padded, and stops the
    longer n)."""
    w = " " + word + " "
    size = len(w)
    grams = []
    for n in range(lo, hi + 1):
        grams += [w[i : i + n] for i in range(max(1, size - n + 1))]
        if size <= n:
            break
    return np.array([j for j in map(vocab.get, grams) if j is not None], dtype=np.int32)


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

    def __init__(
        self,
        alphas: tuple = (3.0,),
        word_ngrams: tuple = (1, 2),
        char_ngrams: tuple = (2, 5),
        word_min_df: int = 2,
        char_min_df: int = 3,
        max_features: int = 100_000,
        word_alpha: float | None = None,
        char_alpha: float | None = None,
        relative: bool = True,
    ):
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
            TfidfVectorizer(
                ngram_range=tuple(self.word_ngrams),
                min_df=1 if small else int(self.word_min_df),
                sublinear_tf=True,
                dtype=np.float64,
            ),
            TfidfVectorizer(
                analyzer="char_wb",
                ngram_range=tuple(self.char_ngrams),
                min_df=1 if small else int(self.char_min_df),
                sublinear_tf=True,
                max_features=int(self.max_features),
                dtype=np.float64,
            ),
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
        C = self._char_tfidf(texts)
        return {"word": W, "char": C, "both": sparse.hstack([W, C]).tocsr()}

    #: words whose character n-grams are kept (a prompt's words repeat across prompts)
    WORD_CACHE = 50_000

    def _char_tfidf(self, texts):
        """``char_vec_.transform(texts)``, the same matrix, from each word's n-grams looked up
        once: ``char_wb`` n-grams never cross a word boundary, so a prompt's counts are the sum of
        its words'. Generating n-grams in Python was most of the time of routing a batch."""
        from scipy import sparse

        vec = self.char_vec_
        tfidf = getattr(vec, "_tfidf", None)  # scikit-learn's TF-IDF step of a fitted vectorizer
        if tfidf is None or vec.analyzer != "char_wb" or not vec.lowercase or vec.strip_accents or vec.binary:
            return vec.transform(texts)
        if not texts or not all(isinstance(doc, str) for doc in texts):
            return vec.transform(texts)  # scikit-learn's own answer for no text and what is not text
        if getattr(self, "_word_grams", (None,))[0] is not vec.vocabulary_:
            self._word_grams = (vec.vocabulary_, {})
        vocab, cache = self._word_grams
        lo, hi = vec.ngram_range
        parts, words_per_doc = [], []
        for doc in texts:
            words = doc.lower().split()
            words_per_doc.append(len(words))
            for w in words:
                grams = cache.get(w)
                if grams is None:
                    grams = _word_ngram_indices(w, lo, hi, vocab)
                    if len(cache) < self.WORD_CACHE:
                        cache[w] = grams
                parts.append(grams)
        cols = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        per_word = np.fromiter(map(len, parts), np.int64, len(parts))
        rows = np.repeat(np.repeat(np.arange(len(texts)), words_per_doc), per_word)
        # COO to CSR sums the repeated (row, column) pairs: the counts, in canonical order
        X = sparse.coo_matrix((np.ones(len(cols), vec.dtype), (rows, cols)), shape=(len(texts), len(vocab))).tocsr()
        X.sort_indices()
        return tfidf.transform(X, copy=False)

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
        if getattr(self, "_coefs_t", (None,))[0] is not self.coefs_:  # a C-ordered (terms, outputs) copy,
            # made once: scipy copies a transposed operand on every sparse product (~3 MB a call)
            self._coefs_t = (self.coefs_, [np.ascontiguousarray(c.T) for c in self.coefs_])
        ct = self._coefs_t[1]
        return [blocks[b] @ c + i for (b, _), c, i in zip(self._models(), ct, self.intercepts_)]

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
        for key in ("word_ngrams", "char_ngrams"):
            ng = getattr(self, key)
            if not (
                isinstance(ng, (list, tuple))
                and len(ng) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in ng)
                and 1 <= ng[0] <= ng[1] <= 20
            ):
                raise StateError(
                    f"predictor param '{key}'", f"must be [min, max] with 1 <= min <= max <= 20, got {ng!r:.60}"
                )
        try:
            models = self._models()
        except (TypeError, ValueError) as e:
            raise StateError(
                "predictor params 'alphas', 'word_alpha', 'char_alpha'", f"must be numbers ({e})"
            ) from None
        n = state_int(meta, "n_models", 1, 1000)
        if n != len(models):
            raise StateError("predictor meta: 'n_models'", f"is {n}, the params name {len(models)} models")
        self.word_vec_, self.char_vec_ = self._vectorizers(10**6)
        width = {}
        for name, vec in (("word", self.word_vec_), ("char", self.char_vec_)):
            raw = arrays.get(f"{name}_terms")
            terms = [str(t) for t in state_array(arrays, f"{name}_terms", (None,), kind="U")]
            if len(set(terms)) != len(terms):
                raise StateError(f"array '{name}_terms'", "lists a term twice", raw)
            vec.set_params(vocabulary={t: i for i, t in enumerate(terms)}, max_features=None, min_df=1)
            vec.idf_ = state_array(arrays, f"{name}_idf", (len(terms),))
            width[name] = len(terms)
        width["both"] = width["word"] + width["char"]
        k = self.n_outputs_
        self.coefs_ = [state_array(arrays, f"coef{m}", (k, width[block])) for m, (block, _) in enumerate(models)]
        self.intercepts_ = [state_array(arrays, f"intercept{m}", (k,)) for m in range(n)]

    def stack_width_(self) -> int:
        return len(self.coefs_) * int(self.n_outputs_)
