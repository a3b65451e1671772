"""features=[static,...]: averaged static token vectors shipped in the wordllama wheel, read without
its loader (which would go to the hub); predictor=auto weighs speed only with max_route_ms."""

import json
import socket

import numpy as np
import pytest

from t2iroute import Router
from t2iroute.cli import main
from t2iroute.errors import ConfigError
from t2iroute.features import build_featurizer
from t2iroute.features.static import StaticEmbeddingFeaturizer
from t2iroute.predictors.auto import AutoPredictor
from tests.conftest import make_table

pytest.importorskip("wordllama")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the static featurizer tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_static_vectors_load_offline_and_mean_pool(no_network, monkeypatch):
    import t2iroute.features.static as st

    monkeypatch.setattr(st, "_LOADED", {})  # load now, with the network refused
    f = StaticEmbeddingFeaturizer()
    X = f.transform(["a dog", "a puppy", "a skyscraper at night", "", "a dog"])
    assert X.shape == (5, 256) and X.dtype == np.float32
    assert np.allclose(np.linalg.norm(X[[0, 1, 2, 4]], axis=1), 1, atol=1e-5)
    assert (X[3] == 0).all()  # no token: a zero vector, not NaN
    assert (X[0] == X[4]).all()  # deterministic
    assert X[0] @ X[1] > X[0] @ X[2] + 0.3  # a dog is nearer a puppy than a skyscraper
    # the mean of the token vectors, by hand from the package's own files
    matrix, tok = st._load("wordllama:l2_supercat")
    ids = tok.encode("a dog", add_special_tokens=False).ids
    mean = matrix[ids, :256].mean(axis=0)
    assert np.allclose(X[0], mean / np.linalg.norm(mean), atol=1e-6)
    # Matryoshka truncation: the first columns, renormalized
    X64 = StaticEmbeddingFeaturizer(dim=64).transform(["a dog"])
    assert X64.shape == (1, 64) and np.isclose(np.linalg.norm(X64), 1, atol=1e-5)


def test_static_spec_round_trips_and_bad_specs_are_refused():
    f = build_featurizer(["static", "lexical"])
    assert f.spec()["featurizers"][0] == {
        "type": "static",
        "vectors": "wordllama:l2_supercat",
        "dim": 256,
        "max_tokens": 77,
    }
    g = build_featurizer(f.spec())
    p = ["three red kites over a park", "a white wall"]
    assert (f.transform(p) == g.transform(p)).all()
    # predictors' block: embedding reads the static part when no embedding part is configured
    assert f.blocks_["embedding"] == f.blocks_["static"] == slice(0, 256)
    with pytest.raises(ConfigError, match="vectors '/tmp/evil.safetensors'"):
        build_featurizer([{"type": "static", "vectors": "/tmp/evil.safetensors"}])
    with pytest.raises(ConfigError, match="dim must be an integer in 1..256, got 512"):
        build_featurizer([{"type": "static", "dim": 512}])
    with pytest.raises(Exception, match="static featurizer"):
        build_featurizer([{"type": "static", "max_tokens": 0}])


def test_train_and_route_with_static_features(tmp_path, capsys, no_network):
    path = tmp_path / "t.csv"
    make_table(n_prompts=200).to_csv(path, index=False)
    out = tmp_path / "train"
    cand = "predictor.candidates=[{name: knn10, spec: {type: knn, n_neighbors: 10, block: embedding}},{name: ridge, spec: {type: ridge, block: embedding}}]"
    assert main(["train", "data=custom", f"data.path={path}", "features=[static,lexical]", cand, f"out_dir={out}"]) == 0
    capsys.readouterr()
    m = json.loads((out / "router" / "manifest.json").read_text())
    assert [p["type"] for p in m["featurizer"]["featurizers"]] == ["static", "lexical"]
    r = Router.load(out / "router")
    d = r.route(["a cat", "two dogs on a red sofa"])
    assert len(d) == 2 and all(x.backend in r.backend_names for x in d)


def test_auto_weighs_speed_only_when_asked(caplog):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 16)).astype(np.float32)
    Y = np.c_[X[:, 0] + 0.3 * rng.normal(size=400), -X[:, 0] + 0.3 * rng.normal(size=400), np.zeros(400)]
    costs = np.array([1.0, 1.0, 0.5])
    cands = [{"name": "knn", "spec": {"type": "knn", "n_neighbors": 25}}, {"name": "ridge", "spec": {"type": "ridge"}}]
    free = AutoPredictor(candidates=cands).fit(X, Y, costs=costs).selection_
    timed = {c["name"]: c["route_ms"] for c in free["candidates"]}
    assert set(timed) == {"knn", "ridge"} and all(v > 0 for v in timed.values())
    assert free["max_route_ms"] is None and not any("too_slow" in c for c in free["candidates"])
    # a bound between the two: only the faster may be chosen
    fast, slow = sorted(timed, key=timed.get)
    bound = (timed[fast] + timed[slow]) / 2
    sel = AutoPredictor(candidates=cands, max_route_ms=bound).fit(X, Y, costs=costs).selection_
    assert sel["chosen"] == fast and sel["max_route_ms"] == bound
    assert all(c["too_slow"] == (c["name"] == slow and c["shrink"] > 0) for c in sel["candidates"])
    # nothing fast enough: the best single backend, and a warning that says why
    sel = AutoPredictor(candidates=cands, max_route_ms=1e-9).fit(X, Y, costs=costs).selection_
    assert sel["shrink"] == 0.0 and not sel["beats_best_single_cv"]
    assert "max_route_ms" in caplog.text
    with pytest.raises(ValueError, match="max_route_ms must be a positive number"):
        AutoPredictor(max_route_ms=0)


def test_blocks_of_prompts_embed_as_one(monkeypatch):
    """A batch is embedded a block of prompts at a time (bounded temporaries): the same vectors,
    bit for bit, as one block, empty prompts included."""
    f = StaticEmbeddingFeaturizer(dim=64)
    prompts = [f"{i} red kites over a park at dusk" if i % 7 else "" for i in range(40)]
    monkeypatch.setattr(StaticEmbeddingFeaturizer, "BLOCK", 3)
    small = f.transform(prompts)
    monkeypatch.setattr(StaticEmbeddingFeaturizer, "BLOCK", 10**6)
    np.testing.assert_array_equal(small, f.transform(prompts))
    assert not small[0].any() and np.allclose(np.linalg.norm(small[1:7], axis=1), 1.0)
