"""LightGBM predictor: one booster per backend (lightgbm is imported only when fitting or loading)."""

from __future__ import annotations

import numpy as np

from t2iroute.errors import ConfigError
from t2iroute.predictors.base import QualityPredictor


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
