import numpy as np
import pytest

from t2iroute.backends import build_backend, build_backends
from t2iroute.backends.diffusers_backend import loaded_pipelines, unload_pipeline
from t2iroute.backends.stopping import StopConfig
from t2iroute.errors import ConfigError

SMALL = {"model": "tiny", "height": 32, "width": 32}


def _count_unet(backend):
    calls = []
    h = backend.pipe.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls, h


def test_steps_and_nfe_are_exact():
    b = build_backend("t", {**SMALL, "steps": 7, "guidance_scale": 5.0})
    calls, h = _count_unet(b)
    try:
        g = b.generate(["a red car"], seeds=[0])[0]
    finally:
        h.remove()
    assert g.steps_run == 7 == len(calls) and not g.stopped_early
    assert g.nfe == 14 and calls == [2] * 7  # the guidance pair is one batch of 2
    nog = build_backend("u", {**SMALL, "steps": 5, "guidance_scale": 1.0}).generate(["x"], seeds=[0])[0]
    assert nog.nfe == 5


def test_deterministic_per_seed():
    b = build_backend("t", {**SMALL, "steps": 5})
    a1, a2 = b.generate(["a cat", "a cat"], seeds=[3, 3])
    c = b.generate(["a cat"], seeds=[4])[0]
    assert np.array_equal(np.asarray(a1.image), np.asarray(a2.image))
    assert not np.array_equal(np.asarray(a1.image), np.asarray(c.image))


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "lcm", "pndm"])
def test_stop_decodes_x0_of_the_stopping_step(scheduler):
    b = build_backend(
        "t",
        {
            **SMALL,
            "steps": 20,
            "scheduler": scheduler,
            "early_stop": {"threshold": 10.0, "patience": 1, "window": 1, "min_fraction": 0.25},
        },
    )
    pipe = b.pipe
    seen = {}
    orig = pipe.vae.decode

    def decode(z, *a, **k):
        seen["z"] = z.clone()
        return orig(z, *a, **k)

    pipe.vae.decode = decode
    captured = {}
    from t2iroute.backends import stopping

    orig_call = stopping.ConvergenceStopper.__call__

    def spy(self, pipe_, i, t, kw):
        out = orig_call(self, pipe_, i, t, kw)
        if self.stop_step is not None and "x0" not in captured:
            captured["x0"] = self.decoded_x0.clone()
            captured["xt"] = kw["latents"].clone()
        return out

    stopping.ConvergenceStopper.__call__ = spy
    try:
        g = b.generate(["a cat"], seeds=[0])[0]
    finally:
        stopping.ConvergenceStopper.__call__ = orig_call
        del pipe.vae.decode
    assert g.stopped_early and g.steps_run == 5  # ceil(0.25 * 20)
    z = seen["z"] * pipe.vae.config.scaling_factor
    assert torch_allclose(z, captured["x0"])
    assert not torch_allclose(captured["xt"], captured["x0"])  # x_t was really different


def torch_allclose(a, b):
    import torch

    return bool(torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4))


def test_pixel_signal_is_the_share_of_decoded_pixels_that_changed(monkeypatch):
    import torch

    from t2iroute.backends import stopping

    b = build_backend(
        "t",
        {
            **SMALL,
            "steps": 8,
            "early_stop": {
                "signal": "pixel",
                "pixel_delta": 0.05,
                "threshold": 1.01,
                "patience": 1,
                "window": 1,
                "min_fraction": 0.5,
            },
        },
    )
    pipe = b.pipe
    n_decodes, orig = [], pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda z, *a, **k: (n_decodes.append(1), orig(z, *a, **k))[1])
    checks = []
    orig_call = stopping.ConvergenceStopper.__call__

    def spy(self, pipe_, i, t, kw):
        before = None if self.prev is None else self.prev.clone()
        out = orig_call(self, pipe_, i, t, kw)
        if before is not None:  # the signal, recomputed from the two decodes it compared
            want = ((self.prev - before).abs().amax(dim=1) > 0.1).float().mean().item()
            checks.append((self.history[-1].item(), want))
        return out

    monkeypatch.setattr(stopping.ConvergenceStopper, "__call__", spy)
    g = b.generate(["a cat"], seeds=[0])[0]
    monkeypatch.undo()
    assert g.stopped_early and g.steps_run == 4  # any share is below 1.01: stops at 0.5 * 8
    assert len(n_decodes) == 4 + 1  # one decode per step run, then the pipeline's own of x0
    assert len(checks) == 3 and all(0.0 <= got <= 1.0 and abs(got - want) < 1e-6 for got, want in checks)
    assert any(got > 0 for got, _ in checks)  # a random model's x0 really moves
    never = build_backend("n", {**SMALL, "steps": 6, "early_stop": {"signal": "pixel", "threshold": 0.0}})
    assert never.generate(["a cat"], seeds=[0])[0].steps_run == 6
    with pytest.raises(ValueError, match="signal must be one of"):
        StopConfig(signal="pixels")
    with pytest.raises(ValueError, match="pixel_delta must be in"):
        StopConfig(signal="pixel", pixel_delta=0)
    assert torch.is_tensor(pipe.vae.decode(torch.zeros(1, 4, 4, 4)).sample)  # decode restored


def test_threshold_zero_never_stops():
    b = build_backend("t", {**SMALL, "steps": 12, "early_stop": {"threshold": 0.0, "min_fraction": 0.0}})
    g = b.generate(["a cat"], seeds=[0])[0]
    assert g.steps_run == 12 and not g.stopped_early


def test_step_budgets_share_one_pipeline(tmp_path):
    from t2iroute.backends.tiny import save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path / "tiny-sd")
    before = loaded_pipelines()
    bs = build_backends({f"sd_{n}": {"model": str(folder), "steps": n, "height": 32, "width": 32} for n in (2, 3, 4)})
    gens = {n: b.generate(["a cat"], seeds=[0])[0] for n, b in bs.items()}  # loads via from_pretrained
    assert loaded_pipelines() == before + 1
    assert len({id(b.pipe) for b in bs.values()}) == 1
    assert [g.steps_run for g in gens.values()] == [2, 3, 4]
    unload_pipeline(str(folder))


def test_bad_backend_configs():
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        build_backend("x", {**SMALL, "steps": 0})
    with pytest.raises(ConfigError, match="unknown scheduler 'foo'"):
        build_backend("x", {**SMALL, "scheduler": "foo"})
    with pytest.raises(ConfigError, match="multiples of 8"):
        build_backend("x", {**SMALL, "height": 30})
    with pytest.raises(ConfigError, match=r"unknown backend\(s\) \['nope'\]; known: \['a'\]"):
        build_backends({"a": SMALL}, ["nope"])
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        StopConfig(threshold=-1)
    with pytest.raises(RuntimeError, match="cannot load diffusers pipeline"):
        build_backend("x", {"model": "/nonexistent/model"}).generate(["a"], seeds=[0])


def test_lora_backend_shares_weights_and_switches_adapter(tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from t2iroute.backends.tiny import tiny_pipeline

    donor = tiny_pipeline(0)
    donor.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for n, p in donor.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a fresh LoRA is a no-op (B = 0); make it change the output
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(donor.unet))
    spec = {"model": "tiny:7", "height": 32, "width": 32, "steps": 3}
    bs = build_backends({"base": spec, "lora": {**spec, "lora": str(tmp_path / "lora")}})
    base1 = np.asarray(bs["base"].generate(["a cat"], seeds=[0])[0].image, dtype=float)
    with_lora = np.asarray(bs["lora"].generate(["a cat"], seeds=[0])[0].image, dtype=float)
    base2 = np.asarray(bs["base"].generate(["a cat"], seeds=[0])[0].image, dtype=float)
    assert bs["base"].pipe is bs["lora"].pipe  # one copy of the base weights
    assert np.abs(with_lora - base1).mean() > 1.0  # the adapter is active for its backend
    np.testing.assert_array_equal(base1, base2)  # and off again for the plain one


def test_scheduler_without_x0_is_refused():
    from t2iroute.backends.stopping import X0Capture

    class NoX0:
        config = {}

        def step(self, model_output, timestep, sample):
            return (sample,)

    with pytest.raises(ValueError, match="exposes no x0 estimate"):
        X0Capture(NoX0())
