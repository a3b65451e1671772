"""The stacked predictor and its text-reading base (TF-IDF ridge)."""

import json

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from t2iroute import Router
from t2iroute.features import build_featurizer
from t2iroute.predictors import (
    KNNPredictor,
    QualityPredictor,
    StackPredictor,
    TfidfRidgePredictor,
    resolve_blocks,
)
from t2iroute.training.table import pivot

FAST_FINAL = [
    {"type": "lgbm", "params": {"n_estimators": 30, "learning_rate": 0.3, "num_leaves": 4, "min_child_samples": 2}},
    {"type": "ridge", "alpha": 1.0},
]


@parametrize_with_checks(
    [StackPredictor(base=[{"type": "knn", "n_neighbors": 3}, {"type": "ridge", "alpha": 1.0}], final=FAST_FINAL)]
)
def test_stack_passes_sklearn_checks(estimator, check):
    check(estimator)


def _texts_and_targets(n=300, seed=0):
    rng = np.random.default_rng(seed)
    words = ["cat", "dog", "castle", "robot", "forest", "river", "tiger", "lamp"]
    texts, Y = [], []
    for i in range(n):
        w = [words[j] for j in rng.choice(len(words), 3, replace=False)]
        t = " ".join(w) + (" by greg rutkowski" if i % 3 == 0 else "")
        texts.append(t)
        y_slow = 2.0 * ("rutkowski" in t) + 1.0 * ("castle" in t)
        Y.append([0.0, y_slow] + rng.normal(0, 0.3, 2))
    return texts, np.array(Y)


def test_tfidf_ridge_learns_words_and_roundtrips():
    texts, Y = _texts_and_targets()
    X = np.zeros((len(texts), 1))
    p = TfidfRidgePredictor(alphas=[1.0, 10.0], word_alpha=1.0, char_alpha=3.0).fit(X[:250], Y[:250], texts=texts[:250])
    rel = p.predict_relative(X[250:], texts=texts[250:])
    true = Y[250:] - Y[250:].mean(1, keepdims=True)
    assert np.corrcoef(rel[:, 1], true[:, 1])[0, 1] > 0.9
    assert p.stack_features(X[250:], texts=texts[250:]).shape == (50, 2 * 4)
    meta, arrays, txt = p.get_state()
    again = QualityPredictor.from_state(json.loads(json.dumps(meta)), arrays, txt)
    np.testing.assert_allclose(
        again.stack_features(X[250:], texts=texts[250:]),
        p.stack_features(X[250:], texts=texts[250:]),
        rtol=1e-9,
        atol=1e-12,
    )
    with pytest.raises(ValueError, match="needs the prompt texts"):
        p.predict(X[250:])
    with pytest.raises(ValueError, match="texts has 3 entries for 50"):
        p.predict(X[250:], texts=texts[:3])


def test_tfidf_ridge_refit_predicts_from_the_new_coefficients():
    """The transposed coefficients are cached for speed; a refit (or a loaded state) replaces them."""
    texts, Y = _texts_and_targets()
    X = np.zeros((len(texts), 1))
    p = TfidfRidgePredictor(alphas=[1.0]).fit(X[:250], Y[:250], texts=texts[:250])
    first = p.predict(X[250:], texts=texts[250:])
    p.fit(X[:250], -Y[:250], texts=texts[:250])
    fresh = TfidfRidgePredictor(alphas=[1.0]).fit(X[:250], -Y[:250], texts=texts[:250])
    np.testing.assert_array_equal(p.predict(X[250:], texts=texts[250:]), fresh.predict(X[250:], texts=texts[250:]))
    assert not np.allclose(first, fresh.predict(X[250:], texts=texts[250:]))


def test_tfidf_char_ngrams_by_word_are_scikit_learns_matrix(monkeypatch):
    """The character TF-IDF is built from per-word n-gram counts (cached): the same matrix as the
    vectorizer's own transform, bit for bit, on text with odd spacing, short words and non-ASCII,
    with the word cache full or empty."""
    texts, Y = _texts_and_targets()
    X = np.zeros((len(texts), 1))
    p = TfidfRidgePredictor(alphas=[1.0], char_ngrams=[1, 5]).fit(X[:250], Y[:250], texts=texts[:250])
    odd = ["", "  ", "a", "ab cd\u00a0ef\tgh\n\nij", "İstanbul ÉCOLE straße ﬁne", "x" * 40, "a castle, a castle", ""]
    docs = texts[250:] + odd
    want = p.char_vec_.transform(docs)
    for cap in (0, 3, 10**6):
        monkeypatch.setattr(TfidfRidgePredictor, "WORD_CACHE", cap)
        p._word_grams = (None, {})
        for _ in range(2):  # cold, then from the cache
            got = p._char_tfidf(docs)
            assert (got.indptr == want.indptr).all() and (got.indices == want.indices).all()
            assert (got.data == want.data).all() and got.shape == want.shape
        assert len(p._word_grams[1]) <= cap


def test_knn_stack_kernels_match_each_kernel_computed_alone():
    """stack_features gathers the neighbours' rows once for every kernel: each column equals the
    kernel computed on its own (the softmax ones are the plain prediction at that T and k)."""
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(300, 6)), rng.normal(size=(300, 2))
    kern = {"softmax": [[0.1, 20], [0.3, 50]], "inverse": [5]}
    p = KNNPredictor(n_neighbors=10, relative=False, stack_kernels=kern).fit(X[:250], Y[:250])
    F = p.stack_features(X[250:])
    for j, (T, k) in enumerate(kern["softmax"]):
        alone = KNNPredictor(n_neighbors=k, temperature=T, relative=False).fit(X[:250], Y[:250])
        np.testing.assert_array_equal(F[:, 2 * j : 2 * j + 2], alone.predict(X[250:]))
    sims, idx = p.neighbors(X[250:], 5)
    w = 1.0 / (1.0 - sims + 1e-3)
    np.testing.assert_allclose(F[:, 4:6], np.einsum("nk,nkj->nj", w / w.sum(1, keepdims=True), Y[:250][idx]))


def test_knn_stack_kernels_shape():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(100, 5)), rng.normal(size=(100, 3))
    kern = {"softmax": [[0.1, 20], [0.3, 50]], "inverse": [5], "density": [0.1], "distance": [1, 10]}
    p = KNNPredictor(n_neighbors=10, relative=False, stack_kernels=kern).fit(X, Y)
    F = p.stack_features(X[:7])
    assert F.shape == (7, 3 * 3 + 1 + 2)
    assert (F[:, -2] < 1e-6).all()  # the nearest training row of a training row is itself


def test_resolve_blocks():
    spec = {"type": "stack", "passthrough_block": "lexical", "base": [{"type": "knn", "block": "embedding"}]}
    out = resolve_blocks(spec, {"embedding": slice(0, 384), "lexical": slice(384, 408)})
    assert out["passthrough_slice"] == [384, 408] and out["base"][0]["feature_slice"] == [0, 384]
    from t2iroute.errors import ConfigError

    with pytest.raises(ConfigError, match="'llm' is not a configured featurizer"):
        resolve_blocks({"type": "knn", "block": "llm"}, {"embedding": slice(0, 3)})


def test_router_with_text_stack_roundtrips(table, tmp_path):
    M = pivot(table, "clip")
    f = build_featurizer({"lexical": {}})
    X = f.transform(list(M.prompts))
    spec = resolve_blocks(
        {
            "type": "stack",
            "passthrough_block": "lexical",
            "n_folds": 3,
            "base": [
                {
                    "type": "knn",
                    "relative": False,
                    "n_neighbors": 10,
                    "block": "lexical",
                    "stack_kernels": {"softmax": [[0.1, 10]], "distance": [1]},
                },
                {"type": "tfidf_ridge", "relative": False, "alphas": [1.0]},
            ],
            "final": FAST_FINAL,
        },
        f.blocks_,
    )
    pred = StackPredictor(**{k: v for k, v in spec.items() if k != "type"}).fit(X, M.scores, texts=list(M.prompts))
    r = Router(f, pred, M.backends, M.costs, metric="clip")
    r.save(tmp_path / "r")
    again = Router.load(tmp_path / "r")
    prompts = ["two birds number 3", "a cat", "a sign saying 'hello' on a wall"]
    np.testing.assert_allclose(
        [list(d.predicted_quality.values()) for d in r.route(prompts)],
        [list(d.predicted_quality.values()) for d in again.route(prompts)],
        rtol=1e-9,
    )


def test_batch_speedups_change_no_prediction(monkeypatch):
    """A big batch computes the stack's bases in parallel threads and selects each kNN's
    neighbours 256 query rows at a time: the predictions are those of one base after another and
    of one selection over the whole batch, bit for bit."""
    from t2iroute.predictors import knn

    texts, Y = _texts_and_targets()
    rng = np.random.default_rng(3)
    X = rng.normal(size=(len(texts), 8))
    base = [
        {
            "type": "knn",
            "n_neighbors": 20,
            "relative": False,
            "stack_kernels": {"softmax": [[0.1, 20]], "inverse": [5]},
        },
        {"type": "tfidf_ridge", "relative": False, "alphas": [1.0]},
        {"type": "ridge", "relative": False, "alpha": 1.0},
    ]
    p = StackPredictor(base=base, final=FAST_FINAL, n_folds=3).fit(X[:200], Y[:200], texts=texts[:200])
    Xq = np.vstack([X[200:]] * 6)  # 600 rows: parallel, three selection blocks
    tq = texts[200:] * 6
    fast = p.predict(Xq, texts=tq)
    monkeypatch.setattr(StackPredictor, "PARALLEL_ROWS", 10**9)
    monkeypatch.setattr(knn, "CHUNK", 10**9)
    np.testing.assert_array_equal(fast, p.predict(Xq, texts=tq))
