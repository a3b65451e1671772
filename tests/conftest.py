import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from t2iroute._compat import ensure_torchvision

ensure_torchvision()  # tests import diffusers and open_clip directly

WORDS = [
    "cat",
    "dog",
    "red car",
    "two birds",
    "a castle",
    "blue sky",
    "three apples",
    "city at night",
    "portrait of a woman",
    "robot",
    "forest",
    "a bowl of soup",
    "a sign saying 'hello'",
]


def make_table(n_prompts=120, backends=("fast", "slow", "mid"), costs=(0.1, 1.0, 0.5), seed=0, sources=("A", "B")):
    """A synthetic quality table where 'slow' is better on prompts with 'two'/'three'/'sign'."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        w = WORDS[i % len(WORDS)]
        prompt = f"{w} number {i}"
        hard = any(t in prompt for t in ("two", "three", "sign", "portrait"))
        for b, c in zip(backends, costs):
            base = 30 + rng.normal(0, 0.3)
            bonus = {"fast": 0.0, "mid": 0.5, "slow": 2.0 if hard else 0.2}.get(b, 0.0)
            rows.append(
                dict(
                    prompt_id=f"p{i}",
                    prompt=prompt,
                    backend=b,
                    metric="clip",
                    score=base + bonus,
                    cost_s=c * (1 + rng.normal(0, 0.01)),
                    source=sources[i % len(sources)],
                )
            )
    return pd.DataFrame(rows)


def pytest_collection_modifyitems(config, items):
    """Ray tests start a cluster: heavy, run by `make test-heavy` (.ci/run's second step)."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.heavy)


@pytest.fixture
def table():
    return make_table()


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("T2IROUTE_CACHE", str(tmp_path / "cache"))


TINY = dict(type="diffusers", model="tiny", scheduler="ddim", guidance_scale=5.0, height=64, width=64)
TINY_SPECS = {
    "fast": {**TINY, "steps": 2},
    "mid": {**TINY, "steps": 4},
    "slow": {**TINY, "steps": 8, "early_stop": {"threshold": 0.5, "window": 1, "patience": 1, "min_fraction": 0.25}},
}


def make_tiny_router(*, specs=TINY_SPECS, lam=0.0):
    """A router over the synthetic table (lexical features, ridge) whose backends are tiny
    in-process pipelines at 2, 4 and 8 steps: everything offline, fast."""
    from t2iroute import Router
    from t2iroute.features import build_featurizer
    from t2iroute.predictors import RidgePredictor
    from t2iroute.training.table import pivot

    M = pivot(make_table(), "clip")
    f = build_featurizer({"lexical": {}})
    pred = RidgePredictor().fit(f.transform(list(M.prompts)), M.scores)
    return Router(f, pred, M.backends, M.costs, lam=lam, metric="clip", backend_specs=specs)


class BlankBackend:
    """A local stand-in backend that makes a blank 8 px image per prompt at once (a fallback target)."""

    def __init__(self, name):
        self.name = name

    def generate(self, prompts, *, seeds, **opts):
        from PIL import Image

        from t2iroute.backends.base import Generation

        return [
            Generation(image=Image.new("RGB", (8, 8)), prompt=p, seed=s, backend=self.name, latency_s=0.0)
            for p, s in zip(prompts, seeds)
        ]


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "router"
    make_tiny_router().save(path)
    return path


@pytest.fixture(scope="session")
def routeonly_artifact(tmp_path_factory):
    """An artifact that stores no backend configs: it routes but cannot generate."""
    path = tmp_path_factory.mktemp("artifact") / "router"
    make_tiny_router(specs=None).save(path)
    return path
