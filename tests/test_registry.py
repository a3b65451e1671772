"""One registry: lazy built-ins, close-match suggestions, and a plug-in installed from outside."""

import json
import subprocess
import sys
import textwrap

import pytest

from t2iroute import registry
from t2iroute.errors import ConfigError


def test_every_builtin_entry_imports():
    for kind in registry.KINDS:
        for name in registry.BUILTIN[kind]:
            cls = registry.get(kind, name)
            assert isinstance(cls, type), (kind, name)


def test_unknown_names_suggest_and_list():
    with pytest.raises(ConfigError, match=r"unknown predictor type 'knnn'; did you mean 'knn'\? known: \["):
        registry.build("predictors", {"type": "knnn"})
    with pytest.raises(ConfigError, match="unknown policy type 'zzz' known:"):
        registry.build("policies", {"type": "zzz"})
    with pytest.raises(ConfigError, match="discriminator key is 'type', not 'kind'"):
        registry.build("scorers", {"kind": "clip"})


def test_register_in_process():
    from t2iroute.router.policy import LambdaPolicy

    class Half(LambdaPolicy):
        type_name = "half_lam"

    registry.register("policies", "half_lam", Half)
    try:
        assert "half_lam" in registry.names("policies")
        assert isinstance(registry.build("policies", {"type": "half_lam", "lam": 1}), Half)
    finally:
        registry._EXTRA["policies"].pop("half_lam")


PLUGIN_PY = '''
"""An example t2iroute plug-in: a policy and a scorer."""
import numpy as np
from t2iroute.router.policy import Policy, _order


class CheapestWithin(Policy):
    """The cheapest backend predicted within ``slack`` of the prompt's best prediction."""
    type_name = "cheapest_within"

    def __init__(self, slack: float = 0.5):
        self.slack = float(slack)

    def order(self, q_hat, costs):
        q = np.asarray(q_hat, float)
        ok = q >= q.max(axis=1, keepdims=True) - self.slack
        return _order((~ok).astype(int), np.asarray(costs, float), np.where(ok, np.asarray(costs)[None, :], -q))

    def params(self):
        return {"slack": self.slack}


class Brightness:
    """Mean pixel brightness in [0, 1]: a toy image metric."""
    metric = "brightness"
    higher_is_better = True

    def __init__(self, scale: float = 1.0):
        self.scale = float(scale)

    def score(self, images, prompts):
        return [self.scale * float(np.asarray(im.convert("L"), float).mean() / 255.0) for im in images]
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "t2iroute-example-plugin"
version = "0.1.0"
dependencies = []

[project.entry-points."t2iroute.policies"]
cheapest_within = "t2iroute_example_plugin:CheapestWithin"

[project.entry-points."t2iroute.scorers"]
brightness = "t2iroute_example_plugin:Brightness"

[tool.setuptools]
py-modules = ["t2iroute_example_plugin"]
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """Install a plug-in distribution (its own pyproject and entry points) into this venv."""
    src = tmp_path_factory.mktemp("plugin")
    (src / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (src / "t2iroute_example_plugin.py").write_text(textwrap.dedent(PLUGIN_PY))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["install", "--no-deps", "--no-build-isolation", "--no-index", str(src)], check=True)
    try:
        yield src
    finally:
        subprocess.run(pip + ["uninstall", "-y", "t2iroute-example-plugin"], check=False)


def _cli(*args, cwd):
    exe = [sys.executable, "-c", "import sys; from t2iroute.cli import main; sys.exit(main())"]
    return subprocess.run(exe + list(args), cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.heavy
def test_plugin_adds_a_policy_and_a_scorer_used_from_the_cli(plugin, tiny_artifact, tmp_path):
    # a fresh process sees the new entry points
    r = _cli("route", "two birds on a wire", f"artifact={tiny_artifact}",
             "policy={type: cheapest_within, slack: 100}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["policy"] == {"type": "cheapest_within", "slack": 100.0} and d["backend"] == "fast"
    r = _cli("route", "two birds on a wire", f"artifact={tiny_artifact}",
             "policy={type: cheapest_within, slack: 0}", cwd=tmp_path)
    assert json.loads(r.stdout)["backend"] == "slow", r.stderr  # no slack: the best predicted
    out = tmp_path / "img.png"
    r = _cli("generate", "a red car", f"artifact={tiny_artifact}", f"out={out}", "+scorer.type=brightness",
             "+scorer.scale=2.0", "lam=1000", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)
    assert set(g["score"]) == {"brightness"} and 0 <= g["score"]["brightness"] <= 2.0 and out.is_file()
    # listed among the known names, with a suggestion for a typo
    r = _cli("route", "a cat", f"artifact={tiny_artifact}", "policy={type: cheapest_withn}", cwd=tmp_path)
    assert r.returncode == 2 and "did you mean 'cheapest_within'" in r.stderr


@pytest.mark.heavy
def test_plugin_scorer_in_a_sweep(plugin, tmp_path):
    r = _cli("sweep", "backends=[tiny_10]", "prompts=partiprompts", "limit=2", "seeds=[0]", "~scorer",
             "+scorer.type=brightness", f"out_dir={tmp_path / 'sw'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import pandas as pd

    from t2iroute.training.table import read_table

    t = read_table(tmp_path / "sw" / "quality.parquet")
    assert set(t.metric) == {"brightness"} and len(t) == 2 and t.higher_is_better.all()
    assert isinstance(t, pd.DataFrame)
