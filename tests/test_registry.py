"""One registry: lazy built-ins, close-match suggestions, and a plug-in installed from outside."""

import json
import subprocess
import sys
import textwrap

import pytest

from t2iroute import registry
from tests.contracts import BackendContract
from t2iroute.errors import ConfigError


def test_every_builtin_entry_imports():
    for kind in registry.KINDS:
        for name in registry.BUILTIN[kind]:
            target = registry.get(kind, name)
            # parts are classes; a model source is a function NAME:REF -> a folder or a pipeline
            assert isinstance(target, type) if kind != "model_sources" else callable(target), (kind, name)


def test_model_sources_resolve_the_testbed_and_tiny_and_plug_ins(tmp_path):
    """The generic diffusers loader asks the model_sources registry for NAME:REF; it knows no names itself."""
    from t2iroute.backends.diffusers_backend import resolve_model
    from t2iroute.testbed.models import weights_dir

    assert resolve_model("testbed:big") == str(weights_dir("big"))
    assert resolve_model("org/some-model") == "org/some-model" and resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ConfigError, match="unknown testbed model 'huge'"):
        resolve_model("testbed:huge")
    with pytest.raises(ConfigError, match="is a seed"):
        resolve_model("tiny:x")
    registry.register("model_sources", "zoo", lambda ref: tmp_path / ref)  # a user's own model zoo
    try:
        assert resolve_model("zoo:sd15") == str(tmp_path / "sd15")
    finally:
        registry._EXTRA["model_sources"].pop("zoo")
    assert resolve_model("zoo:sd15") == "zoo:sd15"  # unregistered: a name like any other


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
"""An example t2iroute plug-in: a policy, a scorer and a backend wrapping a pipeline you built."""
import time

import numpy as np
from t2iroute.backends import Generation, import_diffusers
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


class WrappedPipeline:
    """A t2iroute backend around a diffusers text-to-image pipeline: an object you already built
    (``pipeline=``, from Python) or a folder/hub id loaded on first use (``model=``, from a config)."""

    def __init__(self, name, pipeline=None, *, model=None, steps=20, guidance_scale=7.5,
                 height=512, width=512, cost=None):
        if (pipeline is None) == (model is None):
            raise ValueError(f"backend {name!r}: give pipeline= (an object) or model= (a path), one of them")
        self.name, self.model, self._pipe = name, model, pipeline
        self.steps, self.guidance_scale = int(steps), float(guidance_scale)
        self.height, self.width = int(height), int(width)
        self.cost = None if cost is None else float(cost)

    @property
    def pipe(self):
        if self._pipe is None:  # built from a config: no model loads before the first image
            diffusers = import_diffusers()  # safe on CPU-only torch; plain `import diffusers` elsewhere
            self._pipe = diffusers.AutoPipelineForText2Image.from_pretrained(self.model)
        return self._pipe

    def load(self):  # optional: serve's warm-up loads the weights before /ready says so
        self.pipe

    def generate(self, prompts, *, seeds, **opts):
        import torch

        prompts, seeds = list(prompts), [int(s) for s in seeds]
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        t0 = time.perf_counter()
        images = [self.pipe(p, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                            height=self.height, width=self.width,
                            generator=torch.Generator("cpu").manual_seed(s)).images[0]
                  for p, s in zip(prompts, seeds)]  # one call per image: its pixels depend on its seed only
        latency = (time.perf_counter() - t0) / len(prompts)
        return [Generation(image=im, prompt=p, seed=s, backend=self.name, latency_s=latency, cost=self.cost)
                for im, p, s in zip(images, prompts, seeds)]
'''

PYPROJECT = """
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

[project.entry-points."t2iroute.backends"]
wrapped_pipeline = "t2iroute_example_plugin:WrappedPipeline"

[tool.setuptools]
py-modules = ["t2iroute_example_plugin"]
"""


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
    return subprocess.run(
        exe + list(args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.heavy
def test_plugin_adds_a_policy_and_a_scorer_used_from_the_cli(plugin, tiny_artifact, tmp_path):
    # a fresh process sees the new entry points
    r = _cli(
        "route",
        "two birds on a wire",
        f"artifact={tiny_artifact}",
        "policy={type: cheapest_within, slack: 100}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["policy"] == {"type": "cheapest_within", "slack": 100.0} and d["backend"] == "fast"
    r = _cli(
        "route",
        "two birds on a wire",
        f"artifact={tiny_artifact}",
        "policy={type: cheapest_within, slack: 0}",
        cwd=tmp_path,
    )
    assert json.loads(r.stdout)["backend"] == "slow", r.stderr  # no slack: the best predicted
    out = tmp_path / "img.png"
    r = _cli(
        "generate",
        "a red car",
        f"artifact={tiny_artifact}",
        f"out={out}",
        "+scorer.type=brightness",
        "+scorer.scale=2.0",
        "lam=1000",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)
    assert set(g["score"]) == {"brightness"} and 0 <= g["score"]["brightness"] <= 2.0 and out.is_file()
    # listed among the known names, with a suggestion for a typo
    r = _cli("route", "a cat", f"artifact={tiny_artifact}", "policy={type: cheapest_withn}", cwd=tmp_path)
    assert r.returncode == 2 and "did you mean 'cheapest_within'" in r.stderr


@pytest.mark.heavy
def test_plugin_scorer_in_a_sweep(plugin, tmp_path):
    r = _cli(
        "sweep",
        "backends=[tiny_10]",
        "prompts=partiprompts",
        "limit=2",
        "seeds=[0]",
        "~scorer",
        "+scorer.type=brightness",
        f"out_dir={tmp_path / 'sw'}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    import pandas as pd

    from t2iroute.training.table import read_table

    t = read_table(tmp_path / "sw" / "quality.parquet")
    assert set(t.metric) == {"brightness"} and len(t) == 2 and t.higher_is_better.all()
    assert isinstance(t, pd.DataFrame)


# --- a backend plug-in wrapping a pipeline object the user built (README "Plug-ins") ----------------

TINY_OPTS = {"steps": 2, "height": 64, "width": 64, "guidance_scale": 5.0}


def _plugin_backend_class():
    import importlib

    importlib.invalidate_caches()  # the plug-in was installed after this process started
    return registry.get("backends", "wrapped_pipeline")


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    from t2iroute.backends.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "my-pipeline")


def test_import_diffusers_is_a_no_op_where_torchvision_imports():
    """Where torchvision's operators register (a matching torch/torchvision install, as on a GPU
    machine) nothing is declared. (On this CPU machine the plug-in CLI test below shows that a fresh
    process gets diffusers' pipeline classes through it.)"""
    code = (
        "import torch\nfrom t2iroute import _compat\n"
        "lib = torch.library.Library('torchvision', 'DEF')  # what a matching torchvision registers\n"
        "for s in _compat._SCHEMAS: lib.define(s)\n"
        "from t2iroute.backends import import_diffusers\n"
        "d = import_diffusers(); import torchvision\n"
        "assert d.__name__ == 'diffusers' and _compat._LIB is None\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_plugin_backend_wraps_a_users_pipeline_from_python(plugin, tiny_artifact, saved_pipeline):
    from t2iroute import Router
    from t2iroute.backends import Backend
    from t2iroute.backends.tiny import tiny_pipeline

    WrappedPipeline = _plugin_backend_class()
    pipe = tiny_pipeline(seed=1)  # the user's own pipeline object, built however they like
    fast = WrappedPipeline("fast", pipeline=pipe, cost=0.1, **TINY_OPTS)
    assert isinstance(fast, Backend)
    # an object for one backend, a config (the plug-in's type) for another
    r = Router.load(
        tiny_artifact,
        backends={"fast": fast, "mid": {"type": "wrapped_pipeline", "model": str(saved_pipeline), **TINY_OPTS}},
    )
    assert r.backends["fast"] is fast and r.backends["mid"].name == "mid" and r.backends["mid"]._pipe is None
    r.backends["mid"].load()  # what serve's warm-up calls
    assert r.backends["mid"]._pipe is not None
    outs = r.generate(["a red car", "two birds on a wire"], seed=[0, 1], backend="fast")
    assert [o.backend for o in outs] == ["fast", "fast"] and outs[0].image.size == (64, 64)
    again = r.generate("a red car", seed=0, backend="fast")
    assert again.image.tobytes() == outs[0].image.tobytes()  # seeded
    m = r.generate("a red car", seed=0, backend="mid")
    assert m.backend == "mid" and m.image.size == (64, 64)
    with pytest.raises(ConfigError, match="wrapped_pipeline.*bad parameters"):
        registry.build("backends", {"type": "wrapped_pipeline", "modle": "x"}, name="x")


@pytest.mark.heavy  # ~10 s: a fresh process imports torch and diffusers
def test_plugin_backend_from_the_cli(plugin, tiny_artifact, saved_pipeline, tmp_path):
    # a fresh process: the plug-in's import_diffusers() is all that makes diffusers' pipelines import here
    out = tmp_path / "img.png"
    spec = f"{{type: wrapped_pipeline, model: '{saved_pipeline}', steps: 2, height: 64, width: 64}}"
    r = _cli(
        "generate",
        "a red car",
        f"artifact={tiny_artifact}",
        f"+backends.fast={spec}",
        "backend=fast",
        f"out={out}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["backend"] == "fast" and out.is_file()
    from PIL import Image

    assert Image.open(out).size == (64, 64)


class TestPluginBackendContract(BackendContract):
    """The plug-in backend passes the contract every backend passes."""

    @pytest.fixture(scope="class")
    def backend(self, plugin):
        from t2iroute.backends.tiny import tiny_pipeline

        return _plugin_backend_class()("wrapped", pipeline=tiny_pipeline(), **TINY_OPTS)


@pytest.mark.heavy  # a fresh process imports torch and diffusers
def test_tiny_pipeline_builds_in_a_fresh_process():
    """The how-to's stand-in for a user's pipeline: built before anything else imported diffusers."""
    code = "from t2iroute.backends.tiny import tiny_pipeline\nassert tiny_pipeline().unet is not None\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
