"""Artifacts written by t2iroute before format 2 (tests/data/v1-*, made by the previous main)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from t2iroute import Router
from t2iroute.errors import ArtifactError
from t2iroute.router.artifact import FORMAT_VERSION

DATA = Path(__file__).parent / "data"
V1 = json.loads((DATA / "v1-predictions.json").read_text())


@pytest.mark.parametrize("name", ["ridge", "stack"])
def test_format_1_artifacts_load_and_predict_the_same(name):
    r = Router.load(DATA / f"v1-{name}-router")
    assert r.manifest["upgraded_from_version"] == 1
    assert r.higher_is_better is True
    Q, _ = r.predict(V1["prompts"])
    np.testing.assert_allclose(Q, V1[name], rtol=1e-9)


def test_format_1_lambda_becomes_the_default_policy():
    r = Router.load(DATA / "v1-ridge-router")
    assert r.policy.spec() == {"type": "lam", "lam": 0.5} and r.lam == 0.5
    d = r.route("two birds on a wire")
    assert d.policy == {"type": "lam", "lam": 0.5} and d.lam == 0.5
    assert r.route("two birds on a wire", max_cost=0.6).backend in ("fast", "mid")


def test_resaving_a_format_1_artifact_writes_the_current_format(tmp_path):
    r = Router.load(DATA / "v1-stack-router")
    r.save(tmp_path / "r2")
    m = json.loads((tmp_path / "r2" / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION and m["policy"]["type"] == "lam" and "lambda" not in m
    assert "kind" not in json.dumps(m["predictor"]) and "kind" not in json.dumps(m["featurizer"])
    again = Router.load(tmp_path / "r2")
    np.testing.assert_allclose(again.predict(V1["prompts"])[0], V1["stack"], rtol=1e-9)


def test_unknown_format_version_and_bad_policy_are_artifact_errors(tmp_path):
    path = tmp_path / "r"
    shutil.copytree(DATA / "v1-ridge-router", path)
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format version 99"):
        Router.load(path)
    from t2iroute.router.artifact import upgrade_v1

    m = {**upgrade_v1(m), "format_version": 2, "policy": {"type": "nonsense"}}
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="unknown policy type 'nonsense'"):
        Router.load(path)
