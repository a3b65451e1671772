"""RouterPipeline: a router called like a diffusers pipeline (t2iroute.router.pipeline)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from t2iroute import Router, RouterPipeline, RouterPipelineOutput  # noqa: E402
from t2iroute.errors import ConfigError  # noqa: E402

# a diffusers user's script; only CLASS (and the folder it loads) differ between the two runs
SCRIPT = """
import torch
from {module} import {cls} as Pipeline

pipe = Pipeline.from_pretrained({path!r}, torch_dtype=torch.float32)
pipe = pipe.to("cpu")
pipe.set_progress_bar_config(disable=True)
generator = torch.Generator("cpu").manual_seed(0)
out = pipe(["a red circle", "two blue squares"], num_images_per_prompt=2, generator=generator, guidance_scale=5.0)
image = out.images[0]
image.save({png!r})
print(len(out.images), image.size)
"""


@pytest.fixture(scope="module")
def pipe(tiny_artifact):
    p = RouterPipeline.from_pretrained(tiny_artifact)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.heavy  # ~30-45 s on 2 cores: in `make test-heavy` (.ci/run), keeping `make test` under 10 min
def test_a_diffusers_script_runs_unchanged_but_for_the_class_name(tmp_path, tiny_artifact):
    from t2iroute.testing.pipelines import build_pipeline

    sd = tmp_path / "sd"
    build_pipeline("sd15").save_pretrained(sd)
    runs = {
        "diffusers": dict(module="diffusers", cls="StableDiffusionPipeline", path=str(sd)),
        "t2iroute": dict(module="t2iroute", cls="RouterPipeline", path=str(tiny_artifact)),
    }
    for name, kw in runs.items():
        png = tmp_path / f"{name}.png"
        # this environment's CPU torch needs the torchvision shim (../shared/ENVIRONMENT.md) before
        # diffusers imports; both runs get the same prelude, the script itself is unchanged
        prelude = "from t2iroute._compat import ensure_torchvision; ensure_torchvision()\n"
        code = prelude + textwrap.dedent(SCRIPT).format(png=str(png), **kw)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.split()[0] == "4" and png.exists(), r.stdout
    assert (tmp_path / "t2iroute.png").stat().st_size > 0


def test_the_output_holds_images_and_the_decisions_in_order(pipe):
    out = pipe(["a red circle", "three small striped blue squares"], num_images_per_prompt=2, generator=None)
    assert isinstance(out, RouterPipelineOutput) and len(out.images) == 4 and len(out.decisions) == 4
    assert [d.prompt for d in out.decisions] == ["a red circle"] * 2 + ["three small striped blue squares"] * 2
    assert [r.backend for r in out.results] == [d.backend for d in out.decisions]
    assert out.images[0].size == (64, 64) and out[0] is out.images and out[1] is out.decisions
    images, decisions = pipe("a red circle", return_dict=False, seed=3)
    assert len(images) == 1 and decisions[0].backend in pipe.router.backend_names


def test_a_seeded_generator_gives_the_same_images_and_maps_to_documented_seeds(pipe):
    a = pipe("a red circle", num_images_per_prompt=2, generator=torch.Generator().manual_seed(7))
    b = pipe("a red circle", num_images_per_prompt=2, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    want = [int(torch.randint(0, 2**31 - 1, (1,), generator=g).item()) for _ in range(2)]
    assert [r.seed for r in a.results] == want == [r.seed for r in b.results]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
    # a list: one generator per image; an explicit seed is used as is
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    c = pipe(["a red circle", "a blue square"], generator=gens)
    assert [r.seed for r in c.results] == [
        int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(s)).item()) for s in (1, 2)
    ]
    assert [r.seed for r in pipe("a red circle", seed=11, num_images_per_prompt=2).results] == [11, 11]


@pytest.mark.parametrize("kind", ["np", "pt"])
def test_output_types(pipe, kind):
    out = pipe(["a red circle", "a blue square"], output_type=kind, seed=0)
    arr = out.images
    if kind == "np":
        assert isinstance(arr, np.ndarray) and arr.shape == (2, 64, 64, 3) and arr.dtype == np.float32
    else:
        assert isinstance(arr, torch.Tensor) and tuple(arr.shape) == (2, 3, 64, 64)
    assert 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0
    pil = pipe(["a red circle", "a blue square"], seed=0).images
    ref = np.asarray(pil[0], dtype=np.float32) / 255.0
    got = arr[0] if kind == "np" else arr[0].permute(1, 2, 0).numpy()
    assert np.allclose(got, ref)


def test_callback_on_step_end_reaches_the_backend_beside_early_stopping(pipe):
    seen = []

    def cb(p, step, timestep, kwargs):
        seen.append((step, tuple(sorted(kwargs))))
        return kwargs

    out = pipe(
        "a red circle",
        backend="slow",  # the early-stopping backend: its stopper and the user's callback both run
        seed=0,
        callback_on_step_end=cb,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    r = out.results[0]
    assert [s for s, _ in seen] == list(range(r.steps_run)) and all("latents" in k for _, k in seen)
    plain = []
    pipe("a red circle", backend="fast", seed=0, callback_on_step_end=lambda p, s, t, k: plain.append(s) or k)
    assert plain == [0, 1]


def test_to_from_pretrained_overrides_and_a_router_instance(tiny_artifact):
    p = RouterPipeline.from_pretrained(tiny_artifact, torch_dtype=torch.float32)
    assert p.to("cpu") is p and p.device == "cpu"
    assert all(b.config()["dtype"] == "float32" for b in p.router.backends.values())
    router = Router.load(tiny_artifact)
    q = RouterPipeline.from_pretrained(
        router, extra={"type": "diffusers", "model": "tiny", "steps": 1, "height": 64, "width": 64}
    )
    assert q.router is router and "extra" in router.backends
    q.set_progress_bar_config(disable=True)
    assert q("a red circle", backend="extra", seed=0).results[0].backend == "extra"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(output_type="latent"), "output_type='latent'"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(generator=[torch.Generator()] * 3), "generator: a list of 1"),
        (dict(generator="0"), "generator: a torch.Generator"),
        (dict(seed=[1, 2]), "seed: an integer or 1 integers"),
        (dict(num_inference_steps=20), "num_inference_steps"),
    ],
)
def test_bad_arguments_are_refused_naming_them(pipe, kwargs, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("[", r"\[")):
        pipe("a red circle", **kwargs)
    with pytest.raises(ConfigError, match="prompt"):
        pipe([])
    with pytest.raises(ConfigError, match="from_pretrained\\(fast=...\\)"):
        RouterPipeline.from_pretrained(pipe.router, fast="tiny")
