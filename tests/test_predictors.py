import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from t2iroute.errors import ConfigError
from t2iroute.predictors import (
    KNNPredictor,
    LGBMPredictor,
    QualityPredictor,
    RidgePredictor,
    build_predictor,
)

SMALL_LGBM = {"n_estimators": 30, "learning_rate": 0.3, "num_leaves": 4, "min_child_samples": 2}


@parametrize_with_checks(
    [RidgePredictor(), KNNPredictor(n_neighbors=3), LGBMPredictor(params=SMALL_LGBM)],
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _data(n=400, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8))
    offset = rng.normal(0, 5, size=(n, 1))  # large per-prompt offset common to all backends
    Y = offset + np.stack([X[:, 0], -X[:, 0], 0.5 * X[:, 1]], axis=1)[:, :k] + rng.normal(0, 0.1, (n, k))
    return X, Y


@pytest.mark.parametrize(
    "pred", [RidgePredictor(alpha=1.0), KNNPredictor(n_neighbors=10), LGBMPredictor(params={"n_estimators": 200})]
)
def test_relative_targets_learn_backend_differences(pred):
    X, Y = _data()
    pred.fit(X[:300], Y[:300])
    P = pred.predict(X[300:])
    assert P.shape == (100, 3)
    rel_true = Y[300:] - Y[300:].mean(1, keepdims=True)
    rel_pred = pred.predict_relative(X[300:])
    assert np.corrcoef(rel_true[:, 0], rel_pred[:, 0])[0, 1] > 0.8


@pytest.mark.parametrize(
    "pred",
    [
        RidgePredictor(),
        KNNPredictor(n_neighbors=5, temperature=0.1),
        LGBMPredictor(params=SMALL_LGBM),
        RidgePredictor(relative=False),
    ],
)
def test_state_roundtrip_is_exact(pred):
    X, Y = _data(200)
    pred.fit(X, Y)
    meta, arrays, texts = pred.get_state()
    import json

    json.dumps(meta)  # JSON-able
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    again = QualityPredictor.from_state(json.loads(json.dumps(meta)), arrays, texts)
    np.testing.assert_allclose(again.predict(X), pred.predict(X), rtol=1e-6)


def test_build_predictor_errors():
    with pytest.raises(ConfigError, match="unknown predictor type 'xgb'"):
        build_predictor({"type": "xgb"})
    with pytest.raises(ConfigError, match="bad parameters"):
        build_predictor({"type": "ridge", "alpah": 1})
    assert isinstance(build_predictor({"type": "knn", "n_neighbors": 3}), KNNPredictor)


def test_knn_neighbors_exclude_self():
    X = np.eye(5)
    Y = np.arange(10.0).reshape(5, 2)
    p = KNNPredictor(n_neighbors=1, relative=False).fit(X, Y)
    sims, idx = p.neighbors(X, 1)
    assert idx[:, 0].tolist() == [0, 1, 2, 3, 4]
    _, idx2 = p.neighbors(X, 1, exclude_self=True)
    assert (idx2[:, 0] != np.arange(5)).all()
