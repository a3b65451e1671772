import json

import numpy as np
import pytest

from t2iroute import Router, load_router
from t2iroute.errors import ArtifactError, ConfigError
from t2iroute.features import build_featurizer
from t2iroute.router.policy import calibrate_lambda
from t2iroute.predictors import LGBMPredictor, RidgePredictor
from t2iroute.training.table import pivot, split_prompts


@pytest.fixture
def router(table):
    M = pivot(table, "clip")
    f = build_featurizer({"lexical": {}})
    X = f.transform(list(M.prompts))
    pred = LGBMPredictor(params={"n_estimators": 50, "min_child_samples": 5}).fit(X, M.scores)
    return Router(f, pred, M.backends, M.costs, lam=0.0, metric="clip")


def test_route_single_and_batch(router):
    d = router.route("two birds on a wire")
    assert d.backend in router.backend_names
    assert set(d.predicted_quality) == set(router.backend_names)
    assert d.utility[d.backend] == max(d.utility.values())
    ds = router.route(["a cat", "three apples"], lam=1e6)
    assert [x.backend for x in ds] == ["fast", "fast"]  # huge lambda: cheapest
    assert json.loads(json.dumps(ds[0].to_dict()))["lambda"] == 1e6


@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        ("", ValueError, "empty or whitespace"),
        ("   \n", ValueError, "empty or whitespace"),
        ("x" * 10_000, ValueError, "10000 characters"),
        (123, TypeError, "string"),
        ([], ValueError, "empty list"),
        (["ok", None], TypeError, "prompt #1 is NoneType"),
        (b"bytes", TypeError, "string"),
    ],
)
def test_bad_prompts(router, bad, exc, msg):
    with pytest.raises(exc, match=msg):
        router.route(bad)


def test_bad_lambda(router):
    with pytest.raises(ValueError, match="lambda"):
        router.route("a cat", lam=-1)
    with pytest.raises(ValueError, match="at most one policy"):
        router.route("a cat", lam=1, budget=0.5)


def test_calibration_hits_budget_on_held_out_data():
    rng = np.random.default_rng(0)
    n, costs = 4000, np.array([0.1, 0.5, 1.0])
    X = rng.normal(size=(n, 5))
    Y = np.stack([X[:, 0], X[:, 0] + X[:, 1], X[:, 0] + 1.5 * X[:, 1] + 0.5], 1) + rng.normal(0, 0.5, (n, 3))
    pred = RidgePredictor().fit(X[:2000], Y[:2000])
    q_val, q_test = pred.predict(X[2000:3000]), pred.predict(X[3000:])
    for target in (0.2, 0.4, 0.7):
        lam = calibrate_lambda(q_val, costs, target_mean_cost=target)
        val_cost = costs[(q_val - lam * costs).argmax(1)].mean()
        test_cost = costs[(q_test - lam * costs).argmax(1)].mean()
        assert val_cost <= target + 1e-9
        assert abs(test_cost - target) < 0.05, (target, test_cost)
    # a budget above what lambda=0 costs gives lambda 0
    assert calibrate_lambda(q_val, costs, target_mean_cost=5.0) == 0.0
    with pytest.raises(ValueError, match="below the cheapest"):
        calibrate_lambda(q_val, costs, target_mean_cost=0.01)
    # quality floor: the largest lambda keeping validation quality above the floor
    floor = Y[2000:3000].max(1).mean() - 0.8
    lam = calibrate_lambda(q_val, costs, mean_quality_floor=floor, scores=Y[2000:3000])
    ch = (q_val - lam * costs).argmax(1)
    assert Y[2000:3000][np.arange(1000), ch].mean() >= floor - 1e-9


def test_router_calibrate_method(router, table):
    prompts = list(table.prompt.unique())
    lam = router.calibrate(prompts, target_mean_cost=0.3)
    d = router.route(prompts)
    mean_cost = np.mean([x.cost[x.backend] for x in d])
    assert mean_cost <= 0.3 + 1e-9 and router.lam == lam


def test_artifact_roundtrip(router, tmp_path):
    router.lam = 0.37
    router.save(tmp_path / "r", metrics={"x": 1.0})
    again = Router.load(tmp_path / "r")
    prompts = ["two birds", "a cat", "portrait of a woman"]
    a, b = router.route(prompts), again.route(prompts)
    assert [x.backend for x in a] == [x.backend for x in b]
    np.testing.assert_allclose(
        [list(x.predicted_quality.values()) for x in a], [list(x.predicted_quality.values()) for x in b]
    )
    assert again.lam == 0.37 and again.manifest["metrics"] == {"x": 1.0}
    assert load_router(tmp_path / "r").backend_names == router.backend_names
    # saving over an existing artifact replaces it whole
    router.lam = 1.0
    router.save(tmp_path / "r")
    assert Router.load(tmp_path / "r").lam == 1.0


def test_artifact_has_no_pickle(router, tmp_path):
    router.save(tmp_path / "r")
    with np.load(tmp_path / "r" / "predictor" / "arrays.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    files = sorted(p.name for p in (tmp_path / "r").rglob("*") if p.is_file())
    assert all(f.endswith((".json", ".npz", ".txt")) for f in files)


def test_damaged_artifacts_fail_clearly(router, tmp_path):
    path = tmp_path / "r"
    with pytest.raises(ArtifactError, match="no such folder"):
        Router.load(path)
    router.save(path)
    booster = next((path / "predictor").glob("booster_*.txt"))
    text = booster.read_text()
    booster.write_text(text.replace("tree", "treX", 1))
    with pytest.raises(ArtifactError, match="booster_0_0.txt is damaged"):
        Router.load(path)
    booster.unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        Router.load(path)
    router.save(path)
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format version 99"):
        Router.load(path)
    from t2iroute.router.artifact import manifest_digest

    m["format_version"] = 3
    m["n_features"] = 5
    m["manifest_sha256"] = manifest_digest(m)  # an edit that keeps the manifest consistent
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="featurizer gives 24 features"):
        Router.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json is damaged"):
        Router.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        Router.load(path)


def test_generate_needs_configured_backends(router, tmp_path):
    router.save(tmp_path / "r")
    loaded = Router.load(tmp_path / "r")  # the artifact stores no backend configs
    assert loaded.route("a cat").backend in loaded.backend_names  # routing still works
    with pytest.raises(ConfigError, match="is not configured .*pass backends= to Router.load"):
        loaded.generate("a cat")


def test_split_then_route_has_no_leak(table):
    M = pivot(table, "clip")
    tr, va, te = split_prompts(M.prompts, M.sources, seed=0)
    assert not set(M.prompts[tr]) & set(M.prompts[te])


def test_api_bad_input_is_named(router):
    with pytest.raises(ValueError, match="budget must be a finite number"):
        router.route("a cat", budget=float("nan"))
    with pytest.raises(ValueError, match="mean_quality_floor must be a finite number"):
        router.calibrate(["a cat", "a dog"], mean_quality_floor=float("nan"))
    with pytest.raises(ValueError, match="budget .*finite"):
        router.calibrate(["a cat", "a dog"], target_mean_cost=float("inf"))
    with pytest.raises(ValueError, match=r"prompt #0 \('caf\\udce9'\) is not valid text"):
        router.route("caf\udce9")
    with pytest.raises(ValueError, match="3 seeds for 2 prompts"):
        router.generate(["a cat", "a dog"], seed=[0, 1, 2])
    with pytest.raises(TypeError, match=r"seed must be an integer, got float \(seed 1\)"):
        router.generate(["a cat", "a dog"], seed=[0, 1.5])
    with pytest.raises(TypeError, match="seed must be an integer or a list"):
        router.generate(["a cat", "a dog"], seed="7")
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*63\)"):
        router.generate("a cat", seed=2**70)
    with pytest.raises(TypeError, match="seed must be an integer"):
        router.generate("a cat", seed=1.5)
