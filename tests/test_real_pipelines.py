"""Every shipped hub-model backend config, run against its real pipeline class.

No hub here: each config's model is stood in for by a random-weight pipeline of the same
pipeline and component classes and the repo's own scheduler config, saved in the hub repo's
folder layout (fp16 variant files where configs ask for ``variant``, a LoRA adapter file where
one is loaded). The test builds each backend from the shipped config ITSELF, overriding only
where the model lives (``model``, ``lora``) and the device: a key a real pipeline rejects fails here.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from t2iroute.backends import build_backend
from t2iroute.backends import diffusers_backend as db
from t2iroute.testing import pipelines as fixtures
from t2iroute.errors import ConfigError
from t2iroute.paths import CONF_DIR
from tests.test_cli import _compose

# the hub repo each shipped config names -> the family of random-weight pipeline that stands in
FAMILY_OF = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "stabilityai/sd-turbo": "sd21",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "stabilityai/sdxl-turbo": "sdxl_turbo",
    "nota-ai/bk-sdm-small": "bk_sdm",
}
LORAS = {"latent-consistency/lcm-lora-sdv1-5": "sd15"}

# fp16 pipelines at real sizes: minutes on CPUs without AVX-512 FP16 (../shared/ENVIRONMENT.md)
pytestmark = pytest.mark.heavy


def _spec(name):
    cfg = _compose("sweep", [f"backends=[{name}]"])
    return OmegaConf.to_container(cfg.backends, resolve=True)[name]


def _hub_configs():
    names = sorted(p[:-5] for p in os.listdir(os.path.join(CONF_DIR, "backends")) if p.endswith(".yaml"))
    return [n for n in names if not str(_spec(n)["model"]).startswith(("tiny", "testbed:"))]


HUB_CONFIGS = _hub_configs()


def test_every_hub_config_has_a_stand_in():
    """A new config naming a model no family stands for fails here, not on a user's GPU."""
    assert len(HUB_CONFIGS) >= 11
    for name in HUB_CONFIGS:
        spec = _spec(name)
        assert spec["model"] in FAMILY_OF, f"{name}: no random-weight stand-in for {spec['model']}"
        assert spec.get("lora") is None or spec["lora"] in LORAS, f"{name}: no stand-in adapter for {spec['lora']}"


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """One hub-layout folder per family (fp16 variant files where any config asks for them), made
    on first use."""
    root = tmp_path_factory.mktemp("hub")
    made = {}
    variants = {FAMILY_OF[_spec(n)["model"]] for n in HUB_CONFIGS if _spec(n).get("variant")}

    def get(family):
        if family not in made:
            made[family] = fixtures.save_snapshot(family, root / family, variant="fp16" if family in variants else None)
        return made[family]

    def lora(repo):
        path = root / ("lora-" + LORAS[repo])
        if not path.exists():
            fixtures.save_lcm_lora(path, family=LORAS[repo])
        return path

    get.lora = lora
    yield get
    for key in list(db._PIPELINES):
        if str(key[0]).startswith(str(root)):
            del db._PIPELINES[key]


def _local(name, snapshots, **extra):
    """The shipped config with only the model's location (and the device) changed."""
    spec = _spec(name)
    spec["model"] = str(snapshots(FAMILY_OF[spec["model"]]))
    if spec.get("lora"):
        spec["lora"] = str(snapshots.lora(spec["lora"]))
    spec["device"] = "cpu"
    spec.update(extra)
    return spec


class _Spy:
    """Counts the UNet's calls (and the rows each saw) and keeps what the VAE last decoded."""

    def __init__(self, pipe):
        self.calls, self.rows, self.decoded = 0, 0, None
        self._hooks = [pipe.unet.register_forward_pre_hook(self._unet, with_kwargs=True)]
        self._vae, self._orig = pipe.vae, pipe.vae.decode

        def decode(z, *a, **k):
            self.decoded = z.detach().float().clone()
            return self._orig(z, *a, **k)

        pipe.vae.decode = decode

    def _unet(self, module, args, kwargs):
        self.calls += 1
        self.rows += int((args[0] if args else kwargs["sample"]).shape[0])

    def close(self):
        for h in self._hooks:
            h.remove()
        self._vae.decode = self._orig


@pytest.fixture
def stoppers(monkeypatch):
    """Every ConvergenceStopper a backend makes, to compare what it stopped on with what was decoded."""
    made = []

    class Recording(db.ConvergenceStopper):
        def __post_init__(self):
            super().__post_init__()
            made.append(self)

    monkeypatch.setattr(db, "ConvergenceStopper", Recording)
    return made


# a rule that surely stops once allowed (half the budget): the test is about what happens on a stop
FORCE_STOP = {"threshold": 1e9, "window": 1, "patience": 1, "min_fraction": 0.5}


@pytest.mark.parametrize("name", HUB_CONFIGS)
def test_shipped_config_generates_with_its_real_pipeline(name, snapshots, stoppers):
    spec = _spec(name)
    family = FAMILY_OF[spec["model"]]
    plain = build_backend(name, _local(name, snapshots, early_stop=None))
    pipe = plain.pipe
    expected = "StableDiffusionXLPipeline" if family.startswith("sdxl") else "StableDiffusionPipeline"
    assert type(pipe).__name__ == expected
    assert pipe.unet.dtype == getattr(torch, spec.get("dtype", "float32"))
    assert getattr(pipe, "safety_checker", None) is None  # never loaded, though the sd15 repo has one
    if spec.get("scheduler") is None:  # the repo's own scheduler, as its snapshot ships it
        assert type(pipe.scheduler).__name__ == fixtures.SCHEDULER_CONFIGS[family][0]

    spy = _Spy(pipe)
    try:
        g = plain.generate(["a red cube on a blue floor"], seeds=[3])[0]
        assert g.image.size == (plain.width, plain.height)
        assert not g.stopped_early and g.steps_budget == spec["steps"]
        assert g.steps_run == spy.calls  # one UNet call per step run (PNDM's PLMS warm-up repeats one)
        assert spy.calls in (spec["steps"], spec["steps"] + 1)
        assert g.nfe == spy.rows  # a guidance pair counts 2: the UNet saw both rows
        assert g.nfe == g.steps_run * (2 if spec["guidance_scale"] > 1 else 1)

        stop = build_backend(name + "_stop", _local(name, snapshots, early_stop=FORCE_STOP))
        assert stop.pipe is pipe  # one model, one pipeline
        spy.calls = spy.rows = 0
        s = stop.generate(["a red cube on a blue floor"], seeds=[3])[0]
        stopper = stoppers[-1]
        if spec["steps"] == 1:  # nothing to stop: the one step is the budget
            assert not s.stopped_early and s.steps_run == spy.calls == 1
        else:
            assert s.stopped_early and stopper.stop_step == s.steps_run
            assert s.steps_run == spy.calls and 0.5 * spec["steps"] <= s.steps_run < spec["steps"]
            assert s.nfe == spy.rows
            # what the VAE decoded on the stop is the step's x0, not the still-noisy latents
            x0 = stopper.decoded_x0.float() / pipe.vae.config.scaling_factor
            np.testing.assert_allclose(spy.decoded.cpu().numpy(), x0.cpu().numpy(), rtol=1e-2, atol=1e-2)
    finally:
        spy.close()


def test_sd15_budgets_share_one_pipeline_and_the_lora_stays_with_its_backend(snapshots):
    names = [n for n in HUB_CONFIGS if _spec(n)["model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"]
    assert {"sd15_10", "sd15_50_es", "sd15_lcm_4"} <= set(names)
    before = db.loaded_pipelines()
    bs = {n: build_backend(n, _local(n, snapshots)) for n in names}
    pipes = {id(b.pipe) for b in bs.values()}
    assert len(pipes) == 1 and db.loaded_pipelines() <= before + 1
    base = np.asarray(bs["sd15_10"].generate(["a cat"], seeds=[0])[0].image, dtype=float)
    lcm = bs["sd15_lcm_4"].generate(["a cat"], seeds=[0])[0]
    assert lcm.nfe == 4 and type(bs["sd15_lcm_4"].pipe.scheduler).__name__ == "LCMScheduler"
    # with the adapter off, the same budget again: the same image (the adapter did not leak)
    again = np.asarray(bs["sd15_10"].generate(["a cat"], seeds=[0])[0].image, dtype=float)
    np.testing.assert_array_equal(base, again)
    # and the adapter is really applied for its backend: same steps with and without it differ
    no_lora = build_backend("lcm_no_lora", {**_local("sd15_lcm_4", snapshots), "lora": None})
    img_no = np.asarray(no_lora.generate(["a cat"], seeds=[0])[0].image, dtype=float)
    assert np.abs(np.asarray(lcm.image, dtype=float) - img_no).mean() > 0.5


def test_a_scheduler_without_x0_is_refused_before_any_step(snapshots, tmp_path):
    """small_sd_25 runs the repo's own scheduler; a repo whose scheduler has no x0 (IPNDM: no
    alphas_cumprod) refuses early stopping with the backend's name, without running the UNet."""
    src = snapshots("bk_sdm")
    folder = tmp_path / "bk-ipndm"
    shutil.copytree(src, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "IPNDMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "_class_name": "IPNDMScheduler"}))
    spec = {**_local("small_sd_25", snapshots), "model": str(folder), "dtype": "float32"}
    b = build_backend("small_sd_25", {**spec, "early_stop": {"threshold": 0.01}})
    spy = _Spy(b.pipe)
    try:
        with pytest.raises(ConfigError, match=r"backend 'small_sd_25'.*IPNDMScheduler.*no x0"):
            b.generate(["a cat"], seeds=[0])
        assert spy.calls == 0
    finally:
        spy.close()
    # without early stopping the same scheduler runs (it only has no x0 to stop on)
    g = build_backend("small_sd_25_fixed", {**spec, "steps": 3}).generate(["a cat"], seeds=[0])[0]
    assert g.steps_run >= 3 and not g.stopped_early
    db.unload_pipeline(str(folder))


# -- hub snapshot layouts ------------------------------------------------------------------------


def test_safetensors_only_snapshot_loads(snapshots):
    folder = snapshots("sd21")
    files = [f for _, _, fs in os.walk(folder) for f in fs]
    assert any(f.endswith(".fp16.safetensors") for f in files) and not any(f.endswith(".bin") for f in files)
    g = build_backend("sd_turbo_1", _local("sd_turbo_1", snapshots)).generate(["a cat"], seeds=[0])[0]
    assert g.nfe == 1


def test_a_missing_variant_names_the_folder_and_components(tmp_path):
    folder = fixtures.save_snapshot("sd21", tmp_path / "no-fp16", variant=None)
    spec = {**_spec("sd_turbo_1"), "model": str(folder), "device": "cpu"}
    with pytest.raises(ConfigError, match=r"variant 'fp16' has no weight files in .*unet.*drop `variant: fp16`"):
        build_backend("sd_turbo_1", spec).generate(["a cat"], seeds=[0])
    # the same folder without `variant:` loads its full-precision files as float16
    g = build_backend("sd_turbo_1", {**spec, "variant": None}).generate(["a cat"], seeds=[0])[0]
    assert g.steps_run == 1
    db.unload_pipeline(str(folder))


def test_bin_only_snapshot_loads_tensors_and_never_runs_a_pickle(tmp_path):
    folder = fixtures.save_snapshot("sd21", tmp_path / "bin", variant=None, bin_only=True)
    files = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
    assert "unet/diffusion_pytorch_model.bin" in files and "text_encoder/pytorch_model.bin" in files
    assert not any(f.endswith(".safetensors") for f in files)
    spec = {**_spec("sd_turbo_1"), "model": str(folder), "device": "cpu", "variant": None, "dtype": "float32"}
    g = build_backend("old_repo", spec).generate(["a cat"], seeds=[0])[0]  # plain tensors: loads
    assert g.steps_run == 1
    db.unload_pipeline(str(folder))

    with pytest.raises(RuntimeError, match="cannot load diffusers pipeline"):  # safetensors asked for: refused
        build_backend("strict", {**spec, "use_safetensors": True}).pipe

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for weights in ("unet/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin"):
        evil = tmp_path / ("evil-" + weights.split("/")[0])
        shutil.copytree(folder, evil)
        torch.save({"w": Evil()}, evil / weights)
        with pytest.raises(RuntimeError, match=r"(?s)cannot load diffusers pipeline.*weights_only=True"):
            build_backend("evil", {**spec, "model": str(evil)}).pipe
        assert not marker.exists()


def test_weights_only_loads_forces_weights_only_whatever_the_caller_asks(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": Evil()}, tmp_path / "x.bin")
    with db.weights_only_loads():
        with pytest.raises(Exception):
            torch.load(tmp_path / "x.bin", weights_only=False)
    assert not marker.exists()
    assert torch.load is not None and torch.load.__name__ == "load"  # restored
