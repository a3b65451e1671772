"""Every built-in part against its contract (tests/contracts.py)."""

import pytest

from tests.contracts import (
    BackendContract,
    FeaturizerContract,
    PolicyContract,
    PredictorContract,
    ScorerContract,
)
from tests.conftest import TINY

TINY_CLIP = {
    "type": "clip",
    "model": "tiny-clip",
    "pretrained": None,
    "model_config": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
}


# -- backends -------------------------------------------------------------------------------
class TestDiffusersBackend(BackendContract):
    def make_backend(self):
        from t2iroute.backends import build_backend

        return build_backend("tiny_3", {**TINY, "steps": 3})


class TestDiffusersBackendEarlyStop(BackendContract):
    def make_backend(self):
        from t2iroute.backends import build_backend

        return build_backend(
            "tiny_8_es",
            {**TINY, "steps": 8, "early_stop": {"threshold": 0.5, "window": 1, "patience": 1, "min_fraction": 0.25}},
        )


# -- scorers --------------------------------------------------------------------------------
class TestCLIPScorer(ScorerContract):
    def make_scorer(self):
        from t2iroute.scoring import build_scorer

        return build_scorer(TINY_CLIP)


# -- featurizers ----------------------------------------------------------------------------
class TestLexical(FeaturizerContract):
    def make_featurizer(self):
        from t2iroute.features.base import build_one

        return build_one("lexical")


class TestEmbedding(FeaturizerContract):
    def make_featurizer(self):
        from t2iroute.features.base import build_one

        return build_one("embedding", {"cache": False})


class TestLLMUnreachable(FeaturizerContract):
    """No server: lexical estimates stand in (the contract holds while the LLM is down)."""

    def make_featurizer(self):
        from t2iroute.features.base import build_one

        return build_one(
            "llm", {"base_url": "http://127.0.0.1:9/v1", "cache": False, "retries": 0, "timeout": 1, "progress": False}
        )


# -- predictors -----------------------------------------------------------------------------
class TestRidge(PredictorContract):
    def make_predictor(self):
        from t2iroute.predictors import build_predictor

        return build_predictor({"type": "ridge"})


class TestKNN(PredictorContract):
    def make_predictor(self):
        from t2iroute.predictors import build_predictor

        return build_predictor({"type": "knn", "n_neighbors": 10})


class TestLGBM(PredictorContract):
    def make_predictor(self):
        from t2iroute.predictors import build_predictor

        return build_predictor({"type": "lgbm", "params": {"n_estimators": 20, "min_child_samples": 5}})


class TestMF(PredictorContract):
    def make_predictor(self):
        from t2iroute.predictors import build_predictor

        return build_predictor({"type": "mf", "rank": 2, "alpha": 10.0})


class TestTfidfRidge(PredictorContract):
    needs_texts = True

    def make_predictor(self):
        from t2iroute.predictors import build_predictor

        return build_predictor({"type": "tfidf_ridge"})


class TestStack(PredictorContract):
    def make_predictor(self):
        from t2iroute.predictors import build_predictor

        return build_predictor(
            {
                "type": "stack",
                "n_folds": 3,
                "base": [{"type": "knn", "n_neighbors": 10, "relative": False}, {"type": "ridge", "relative": False}],
                "final": [{"type": "ridge", "alpha": 1.0}],
            }
        )


class TestAuto(PredictorContract):
    def make_predictor(self):
        from t2iroute.predictors import build_predictor

        return build_predictor(
            {
                "type": "auto",
                "n_folds": 3,
                "candidates": [
                    {"name": "knn10", "spec": {"type": "knn", "n_neighbors": 10}},
                    {"name": "ridge", "spec": {"type": "ridge"}},
                ],
            }
        )

    def fit_kwargs(self):
        return {"costs": [0.1, 0.5, 1.0]}


# -- policies -------------------------------------------------------------------------------
class TestLambdaPolicy(PolicyContract):
    def make_policy(self):
        from t2iroute.router.policy import build_policy

        return build_policy({"type": "lam", "lam": 0.5})


class TestBudgetPolicy(PolicyContract):
    def make_policy(self):
        from t2iroute.router.policy import build_policy

        return build_policy({"type": "budget", "budget": 0.4})


class TestQualityFloorPolicy(PolicyContract):
    def make_policy(self):
        from t2iroute.router.policy import build_policy

        return build_policy({"type": "quality_floor", "quality_floor": 30.0})


class TestMaxCostPolicy(PolicyContract):
    def make_policy(self):
        from t2iroute.router.policy import build_policy

        return build_policy({"type": "max_cost", "max_cost": 0.6})


class TestFixedPolicy(PolicyContract):
    ties_go_cheaper = False

    def make_policy(self):
        from t2iroute.router.policy import build_policy

        return build_policy({"type": "fixed", "backend": "mid"})


@pytest.mark.parametrize(
    "mixin", [BackendContract, ScorerContract, FeaturizerContract, PredictorContract, PolicyContract]
)
def test_mixins_are_not_collected_on_their_own(mixin):
    assert not mixin.__name__.startswith("Test")
