"""Contract tests every part subclasses (in the spirit of diffusers' PipelineTesterMixin).

A new backend, scorer, featurizer, predictor or policy proves itself by subclassing the matching
mixin in a test module and implementing its ``make_*`` method; every ``test_*`` here then runs
against it. The mixins check the contracts of docs/design.md, nothing specific to one implementation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

PROMPTS = ["a red car", "two birds on a wire", "a sign saying 'hello' above three apples"]


class BackendContract:
    """``make_backend()`` -> a backend. ``deterministic``: same (prompt, seed) -> same image."""

    deterministic = True

    def make_backend(self):
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def backend(self):
        return self.make_backend()

    @pytest.fixture(scope="class")
    def gens(self, backend):
        return backend.generate(PROMPTS[:2], seeds=[0, 1])

    def test_name(self, backend):
        assert isinstance(backend.name, str) and backend.name

    def test_one_generation_per_prompt(self, backend, gens):
        from PIL import Image

        from t2iroute.backends import Generation

        assert len(gens) == 2
        for g, p, s in zip(gens, PROMPTS, (0, 1)):
            assert isinstance(g, Generation) and isinstance(g.image, Image.Image)
            assert (g.prompt, g.seed, g.backend) == (p, s, backend.name)
            assert g.latency_s >= 0 and (g.cost is None or g.cost >= 0)

    def test_diffusion_record_is_optional_and_consistent(self, gens):
        from t2iroute.backends import DiffusionInfo

        for g in gens:
            if g.diffusion is None:
                assert g.steps_run is None and g.nfe is None
            else:
                assert isinstance(g.diffusion, DiffusionInfo)
                assert 1 <= g.diffusion.steps_run <= g.diffusion.steps_budget
                assert g.diffusion.nfe >= g.diffusion.steps_run
                assert set(g.diffusion.to_dict()) == {"steps_run", "steps_budget", "nfe", "stopped_early"}

    def test_deterministic_per_seed(self, backend, gens):
        if not self.deterministic:
            pytest.skip("not deterministic by design")
        again = backend.generate(PROMPTS[:1], seeds=[0])[0]
        assert np.array_equal(np.asarray(again.image), np.asarray(gens[0].image))

    def test_prompts_and_seeds_must_pair(self, backend):
        with pytest.raises(ValueError):
            backend.generate(PROMPTS[:2], seeds=[0])


class ScorerContract:
    """``make_scorer()`` -> a scorer; ``images(n)`` -> n PIL images to score."""

    def make_scorer(self):
        raise NotImplementedError

    def images(self, n):
        from PIL import Image

        return [Image.new("RGB", (32, 32), (40 * i % 255, 90, 200 - 30 * i)) for i in range(n)]

    @pytest.fixture(scope="class")
    def scorer(self):
        return self.make_scorer()

    def test_declares_metric_and_direction(self, scorer):
        assert isinstance(scorer.metric, str) and scorer.metric
        assert isinstance(getattr(scorer, "higher_is_better", True), bool)

    def test_one_finite_float_per_image(self, scorer):
        out = scorer.score(self.images(3), PROMPTS)
        assert len(out) == 3 and all(isinstance(float(v), float) and math.isfinite(float(v)) for v in out)

    def test_registered(self, scorer):
        from t2iroute import registry

        assert registry.type_name("scorers", scorer) is not None


class FeaturizerContract:
    """``make_featurizer()`` -> a featurizer."""

    def make_featurizer(self):
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def featurizer(self):
        return self.make_featurizer()

    def test_shape_names_and_finite(self, featurizer):
        X = np.asarray(featurizer.transform(PROMPTS), dtype=float)
        names = featurizer.feature_names_
        assert X.shape == (len(PROMPTS), len(names)) and len(set(names)) == len(names)
        assert np.isfinite(X).all()
        assert featurizer.feature_names_ == names  # stable

    def test_spec_rebuilds_an_equal_featurizer(self, featurizer):
        from t2iroute.features.base import build_one

        spec = featurizer.spec()
        json.dumps(spec)  # an artifact stores it as JSON
        again = build_one(featurizer.name, spec)
        assert again.feature_names_ == featurizer.feature_names_
        np.testing.assert_allclose(again.transform(PROMPTS), featurizer.transform(PROMPTS), rtol=1e-5, atol=1e-6)

    def test_registered(self, featurizer):
        from t2iroute import registry

        assert featurizer.name in registry.names("featurizers")


class PredictorContract:
    """``make_predictor()`` -> an unfitted predictor; ``fit_kwargs`` extra arguments of fit."""

    needs_texts = False

    def make_predictor(self):
        raise NotImplementedError

    def data(self):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(120, 6))
        Y = np.stack([X[:, 0], 0.5 * X[:, 1], -X[:, 0] + 0.1 * rng.normal(size=120)], axis=1) + 10
        texts = [f"prompt {i} {'two birds' if X[i, 0] > 0 else 'a cat'}" for i in range(120)]
        return X, Y, texts

    def fit_kwargs(self):
        return {}

    @pytest.fixture(scope="class")
    def fitted(self):
        X, Y, texts = self.data()
        p = self.make_predictor()
        out = p.fit(X, Y, texts=texts if self.needs_texts else None, **self.fit_kwargs())
        assert out is p  # fit returns self
        return p

    def _predict(self, p, X, texts):
        return np.asarray(p.predict(X, texts=texts if self.needs_texts else None))

    def test_predicts_every_backend(self, fitted):
        X, Y, texts = self.data()
        P = self._predict(fitted, X[:7], texts[:7])
        assert P.shape == (7, 3) and np.isfinite(P).all()

    def test_state_roundtrip_without_pickle(self, fitted):
        from t2iroute.predictors.base import QualityPredictor

        X, Y, texts = self.data()
        meta, arrays, text_files = fitted.get_state()
        json.dumps(meta)
        for v in arrays.values():
            assert np.asarray(v).dtype != object
        assert all(isinstance(t, str) for t in text_files.values())
        again = QualityPredictor.from_state(meta, arrays, text_files)
        np.testing.assert_allclose(
            self._predict(again, X[:9], texts[:9]), self._predict(fitted, X[:9], texts[:9]), rtol=1e-6, atol=1e-6
        )

    def test_registered(self, fitted):
        from t2iroute import registry

        assert fitted.type_name in registry.names("predictors")
        assert registry.get("predictors", fitted.type_name) is type(fitted)

    def test_predict_checks_width(self, fitted):
        X, _, texts = self.data()
        with pytest.raises(ValueError):
            self._predict(fitted, X[:3, :4], texts[:3])


class PolicyContract:
    """``make_policy()`` -> a policy for the backends ``names`` with ``costs``."""

    names = ["fast", "mid", "slow"]
    costs = np.array([0.1, 0.5, 1.0])
    ties_go_cheaper = True

    def make_policy(self):
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def policy(self):
        p = self.make_policy()
        return p.with_backends(self.names) if hasattr(p, "with_backends") else p

    def q(self):
        rng = np.random.default_rng(1)
        return 30 + rng.normal(size=(50, 3))

    def test_choice_is_first_of_order(self, policy):
        q = self.q()
        choice = np.asarray(policy.choose(q, self.costs))
        order = np.asarray(policy.order(q, self.costs))
        assert choice.shape == (50,) and order.shape == (50, 3)
        assert np.issubdtype(choice.dtype, np.integer) and ((0 <= choice) & (choice < 3)).all()
        assert (np.sort(order, axis=1) == np.arange(3)).all()  # a ranking of every backend
        assert (order[:, 0] == choice).all()

    def test_spec_roundtrip(self, policy):
        from t2iroute.router.policy import build_policy

        spec = policy.spec()
        json.dumps(spec)
        again = build_policy(spec)
        again = again.with_backends(self.names) if hasattr(again, "with_backends") else again
        q = self.q()
        assert (np.asarray(again.choose(q, self.costs)) == np.asarray(policy.choose(q, self.costs))).all()

    def test_ties_go_to_the_cheaper_backend(self, policy):
        if not self.ties_go_cheaper:
            pytest.skip("the policy does not decide by quality")
        q = np.full((4, 3), 30.0)
        assert (np.asarray(policy.choose(q, self.costs)) == 0).all()

    def test_routes_through_a_router(self, policy):
        from t2iroute import Router
        from t2iroute.features import build_featurizer
        from t2iroute.predictors import RidgePredictor

        f = build_featurizer({"lexical": {}})
        X = f.transform(PROMPTS)
        router = Router(f, RidgePredictor().fit(X, self.q()[:3]), self.names, self.costs)
        d = router.route(PROMPTS[0], policy=policy)
        assert d.backend in self.names and d.policy["type"] == policy.type_name
        assert sorted(d.ranking) == sorted(self.names) and d.ranking[0] == d.backend
