"""``RouterPipeline``: a router with the shape of a diffusers pipeline.

A diffusers script::

    pipe = StableDiffusionPipeline.from_pretrained("...").to("cuda")
    image = pipe("a red car", generator=torch.Generator().manual_seed(0)).images[0]

runs on a router with only the class name changed::

    pipe = RouterPipeline.from_pretrained("outputs/train/run/router").to("cuda")
    out = pipe("a red car", generator=torch.Generator().manual_seed(0), budget=0.3)
    out.images[0], out.decisions[0].backend

**Seeds.** t2iroute seeds each image with an integer (its backend draws the noise from
``torch.Generator("cpu").manual_seed(seed)``). A ``generator`` maps to those seeds by drawing:
image ``i``'s seed is ``torch.randint(0, 2**31 - 1, (1,), generator=g)`` with ``g`` the list's
``i``-th generator, or the one generator drawn once per image in order. So a generator seeded the
same way gives the same images, and, as in diffusers, a generator used again continues its
stream. Without a generator the seeds come from torch's global generator (``torch.manual_seed``
makes them repeatable). ``seed=`` (an int or one per image) skips the generator and is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from t2iroute.errors import ConfigError

SEED_HIGH = 2**31 - 1
OUTPUT_TYPES = ("pil", "np", "pt")
#: keyword overrides applied to every backend whose config has the key (diffusers' names first)
SHARED_OVERRIDES = {"torch_dtype": "dtype", "dtype": "dtype", "variant": "variant", "device": "device"}


@dataclass
class RouterPipelineOutput:
    """What :class:`RouterPipeline` returns: ``images`` (PIL images, or an array/tensor by
    ``output_type``), one :class:`~t2iroute.router.core.RouteDecision` per image, and each image's
    full :class:`~t2iroute.router.core.GenerateResult` (backend, seed, latency, steps, id)."""

    images: Any
    decisions: list = field(default_factory=list)
    results: list = field(default_factory=list)

    def __getitem__(self, i):  # diffusers' outputs index like tuples: out[0] is the images
        return (self.images, self.decisions)[i]


def _dtype_name(v) -> str:
    name = str(v)
    return name.split(".", 1)[1] if name.startswith("torch.") else name


class RouterPipeline:
    """A :class:`~t2iroute.router.core.Router` called like a diffusers pipeline (see the module)."""

    def __init__(self, router):
        self.router = router
        self._progress_bar_config: dict = {}

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, artifact_or_router, *, local=None, expected_sha256=None, **backend_overrides):
        """A pipeline over a router artifact folder (or a loaded ``Router``).

        ``backend_overrides``: a backend's name with a config mapping replaces or adds that
        backend (``sd15_20={"type": "diffusers", ...}``); ``torch_dtype`` (a torch dtype or its
        name), ``variant`` and ``device`` apply to every backend whose config has that key
        (diffusion backends). ``local`` and ``expected_sha256`` as in ``Router.load``."""
        from t2iroute.router.core import Router

        shared = {SHARED_OVERRIDES[k]: v for k, v in backend_overrides.items() if k in SHARED_OVERRIDES}
        named = {k: v for k, v in backend_overrides.items() if k not in SHARED_OVERRIDES}
        for name, spec in named.items():
            if not isinstance(spec, dict):
                raise ConfigError(
                    f"from_pretrained({name}=...): a backend's config mapping, or one of "
                    f"{sorted(SHARED_OVERRIDES)}; got {type(spec).__name__}"
                )
        if isinstance(artifact_or_router, Router):
            router = artifact_or_router
            if named:
                from t2iroute.backends import build_backend

                for name, spec in named.items():
                    router.backends[name] = build_backend(name, spec)
        else:
            router = Router.load(
                artifact_or_router, backends=named or None, local=local, expected_sha256=expected_sha256
            )
        pipe = cls(router)
        if shared:
            pipe._override(shared)
        return pipe

    def _override(self, values: dict) -> None:
        """Rebuild every backend whose config has one of ``values``' keys, with those values."""
        from t2iroute.backends import build_backend

        if "dtype" in values:
            values = {**values, "dtype": _dtype_name(values["dtype"])}
        specs = dict(getattr(self.router, "backend_specs", {}) or {})
        for name, b in list(self.router.backends.items()):
            spec = specs.get(name)
            if spec is None:
                config = getattr(b, "config", None)
                spec = config() if callable(config) else None
            if not isinstance(spec, dict):
                continue
            config = getattr(b, "config", None)
            full = config() if callable(config) else {}
            keys = {k: v for k, v in values.items() if k in spec or k in (full or {})}
            if not keys:
                continue
            new = {**spec, **keys}
            self.router.backends[name] = build_backend(name, new)
            if hasattr(self.router, "backend_specs") and name in self.router.backend_specs:
                self.router.backend_specs[name] = new

    def to(self, device=None, dtype=None) -> "RouterPipeline":
        """Run diffusion backends on ``device`` (and in ``dtype``): their configs are rebuilt
        with it, and models load there on first use. Returns the pipeline, as diffusers does."""
        values = {}
        if device is not None:
            values["device"] = str(device)
        if dtype is not None:
            values["dtype"] = dtype
        if values:
            self._override(values)
        return self

    @property
    def device(self) -> str | None:
        devices = {getattr(b, "device", None) for b in self.router.backends.values()} - {None}
        return next(iter(devices)) if len(devices) == 1 else None

    # -- progress bars ---------------------------------------------------------------------------
    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm settings of the bar over a call's images (``disable=True`` hides it)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable=None, total=None):
        from tqdm.auto import tqdm

        return tqdm(iterable=iterable, total=total, **self._progress_bar_config)

    # -- a call ----------------------------------------------------------------------------------
    def __call__(
        self,
        prompt: str | Sequence[str],
        num_images_per_prompt: int = 1,
        generator=None,
        *,
        seed: int | Sequence[int] | None = None,
        lam: float | None = None,
        budget: float | None = None,
        quality_floor: float | None = None,
        max_cost: float | None = None,
        policy=None,
        explore: float | None = None,
        backend: str | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        **backend_kwargs,
    ):
        """Route each prompt (policy keywords as in ``Router.route``), make
        ``num_images_per_prompt`` images of each, and return a :class:`RouterPipelineOutput`
        (or ``(images, decisions)`` with ``return_dict=False``). ``output_type``: ``pil`` (a
        list of PIL images), ``np`` (float32 in [0, 1], N x H x W x 3) or ``pt`` (a torch
        tensor, N x 3 x H x W); images of different sizes (backends at different resolutions)
        come as a list of arrays/tensors. ``callback_on_step_end`` (and its tensor inputs) and
        other ``backend_kwargs`` go to the backends' pipelines (diffusion backends run the
        callback after early stopping's own, on the same step)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else None
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError(f"prompt: a string or a non-empty list of strings, got {prompt!r:.80}")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int):
            raise ConfigError(f"num_images_per_prompt: a positive integer, got {num_images_per_prompt!r}")
        if num_images_per_prompt < 1:
            raise ConfigError(f"num_images_per_prompt: a positive integer, got {num_images_per_prompt}")
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"output_type={output_type!r}: use one of {list(OUTPUT_TYPES)}")
        if "num_inference_steps" in backend_kwargs:
            raise ConfigError(
                "num_inference_steps: the router chooses each prompt's backend and so its steps; "
                "steer it with a policy (lam=, budget=, quality_floor=, max_cost=) or backend=NAME"
            )
        items = [p for p in prompts for _ in range(num_images_per_prompt)]
        seeds = self._seeds(len(items), generator, seed)
        opts = dict(backend_kwargs)
        if callback_on_step_end is not None:
            opts["callback_on_step_end"] = callback_on_step_end
            if callback_on_step_end_tensor_inputs is not None:
                opts["callback_on_step_end_tensor_inputs"] = list(callback_on_step_end_tensor_inputs)
        results: list = [None] * len(items)
        bar = self.progress_bar(total=len(items))
        try:
            for i, res in self.router.generate_iter(
                items,
                seed=seeds,
                lam=lam,
                budget=budget,
                quality_floor=quality_floor,
                max_cost=max_cost,
                policy=policy,
                explore=explore,
                backend=backend,
                **opts,
            ):
                results[i] = res
                bar.update(1)
        finally:
            bar.close()
        images = _convert([r.image for r in results], output_type)
        decisions = [r.decision for r in results]
        if not return_dict:
            return images, decisions
        return RouterPipelineOutput(images=images, decisions=decisions, results=results)

    @staticmethod
    def _seeds(n: int, generator, seed) -> list[int]:
        if seed is not None:
            seeds = [seed] * n if isinstance(seed, (int, np.integer)) else list(seed)
            if len(seeds) != n or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
                raise ConfigError(f"seed: an integer or {n} integers (one per image), got {seed!r:.80}")
            return [int(s) for s in seeds]
        import torch

        if generator is None:
            return [int(torch.randint(0, SEED_HIGH, (1,)).item()) for _ in range(n)]
        if isinstance(generator, (list, tuple)):
            if len(generator) != n:
                raise ConfigError(f"generator: a list of {n} generators (one per image), got {len(generator)}")
            gens = list(generator)
        else:
            gens = [generator] * n
        for g in gens:
            if not isinstance(g, torch.Generator):
                raise ConfigError(f"generator: a torch.Generator or a list of them, got {type(g).__name__}")
        # drawn on the generator's own device, so a CUDA generator works as in diffusers
        return [int(torch.randint(0, SEED_HIGH, (1,), generator=g, device=g.device).item()) for g in gens]


def _convert(images: list, output_type: str):
    if output_type == "pil":
        return images
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    same = len({a.shape for a in arrays}) == 1
    if output_type == "np":
        return np.stack(arrays) if same else arrays
    import torch

    tensors = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays]
    return torch.stack(tensors) if same else tensors
