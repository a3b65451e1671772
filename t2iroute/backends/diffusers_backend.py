"""Any diffusers text-to-image pipeline as a backend, with optional latent-convergence stopping.

Backends that name the same model (and dtype, device) share ONE loaded pipeline: SD 1.5 at 10,
20, 30 and 50 steps keeps one copy of the weights in memory. Each backend sets its own scheduler
and LoRA adapter on the shared pipeline under its lock before a call.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

from t2iroute.backends.base import DiffusionInfo, Generation
from t2iroute.backends.stopping import ConvergenceStopper, StopConfig, X0Capture
from t2iroute.errors import ConfigError

log = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "lcm": "LCMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
}

_DEFAULT_SCHED_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                             steps_offset=1)


def make_scheduler(name: str | None, base_config: dict | None):
    """A scheduler by short name, from the pipeline's own scheduler config where given."""
    import diffusers

    if name is None:
        return None
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler '{name}'; known: {sorted(SCHEDULERS)}")
    cls = getattr(diffusers, SCHEDULERS[name])
    if base_config is None:
        return cls.from_config({k: v for k, v in _DEFAULT_SCHED_CONFIG.items()})
    return cls.from_config(base_config)


class _Shared:
    """One loaded pipeline and the lock that serializes calls on it."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.lock = threading.Lock()
        self.base_scheduler_cls = type(pipe.scheduler)
        self.base_scheduler_config = dict(pipe.scheduler.config)
        self.adapters: set[str] = set()


_PIPELINES: dict[tuple, _Shared] = {}
_PIPELINES_LOCK = threading.Lock()


def _load_pipeline(model: str, dtype: str, device: str, variant: str | None) -> _Shared:
    key = (model, dtype, device, variant)
    with _PIPELINES_LOCK:
        if key not in _PIPELINES:
            from t2iroute._compat import ensure_torchvision

            ensure_torchvision()
            import torch

            if model.startswith("tiny"):  # tiny, tiny:SEED -- random weights built in process
                from t2iroute.backends.tiny import tiny_pipeline

                seed = int(model.split(":", 1)[1]) if ":" in model else 0
                pipe = tiny_pipeline(seed)
            else:
                from diffusers import AutoPipelineForText2Image

                if model.startswith("testbed:"):  # testbed:big, testbed:small -- trained, shipped
                    from t2iroute.testbed.models import weights_dir

                    try:
                        model = str(weights_dir(model.split(":", 1)[1]))
                    except (ValueError, FileNotFoundError) as e:
                        raise ConfigError(str(e)) from e
                kw: dict[str, Any] = {"torch_dtype": getattr(torch, dtype)}
                if variant:
                    kw["variant"] = variant
                try:
                    pipe = AutoPipelineForText2Image.from_pretrained(model, **kw)
                except Exception as e:
                    raise RuntimeError(f"cannot load diffusers pipeline '{model}': {type(e).__name__}: {e}") from e
                if getattr(pipe, "safety_checker", None) is not None:
                    pipe.safety_checker = None
            pipe = pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
            _PIPELINES[key] = _Shared(pipe)
        return _PIPELINES[key]


def loaded_pipelines() -> int:
    """How many distinct pipelines (weight copies) are loaded in this process."""
    return len(_PIPELINES)


class DiffusersBackend:
    """A diffusers text-to-image pipeline at one step budget.

    ``model``: a hub id or a local folder (``from_pretrained``), ``testbed:big``/``testbed:small``
    for the trained testbed pipelines shipped in the package (loaded the same way, from their
    folder), or ``tiny``/``tiny:SEED`` for a random-weight in-process pipeline. ``early_stop``: None, or a dict of
    :class:`~t2iroute.backends.stopping.StopConfig` fields.
    """

    def __init__(self, name: str, model: str, *, steps: int = 50, guidance_scale: float = 7.5,
                 height: int = 512, width: int = 512, negative_prompt: str | None = None,
                 scheduler: str | None = None, dtype: str = "float32", device: str = "cpu",
                 variant: str | None = None, batch_size: int = 1, lora: str | None = None,
                 lora_scale: float = 1.0, early_stop: dict | None = None, cost_s: float | None = None):
        if int(steps) < 1:
            raise ConfigError(f"backend '{name}': steps must be >= 1, got {steps}")
        if int(height) % 8 or int(width) % 8 or int(height) < 8 or int(width) < 8:
            raise ConfigError(f"backend '{name}': height and width must be positive multiples of 8")
        if int(batch_size) < 1:
            raise ConfigError(f"backend '{name}': batch_size must be >= 1")
        if scheduler is not None and scheduler not in SCHEDULERS:
            raise ConfigError(f"backend '{name}': unknown scheduler '{scheduler}'; known: {sorted(SCHEDULERS)}")
        self.name = name
        self.model = str(model)
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.height, self.width = int(height), int(width)
        self.negative_prompt = negative_prompt
        self.scheduler = scheduler
        self.dtype, self.device, self.variant = dtype, device, variant
        self.batch_size = int(batch_size)
        self.lora, self.lora_scale = lora, float(lora_scale)
        self.stop_config = StopConfig(**early_stop) if early_stop else None
        self.cost_s = cost_s
        self._shared: _Shared | None = None

    def config(self) -> dict:
        return {
            "model": self.model, "steps": self.steps, "guidance_scale": self.guidance_scale,
            "height": self.height, "width": self.width, "scheduler": self.scheduler,
            "dtype": self.dtype, "device": self.device, "lora": self.lora,
            "early_stop": None if self.stop_config is None else vars(self.stop_config),
        }

    @property
    def pipe(self):
        if self._shared is None:
            self._shared = _load_pipeline(self.model, self.dtype, self.device, self.variant)
        return self._shared.pipe

    def _prepare(self):
        shared = self._shared
        pipe = shared.pipe
        sched = make_scheduler(self.scheduler, shared.base_scheduler_config) if self.scheduler else \
            shared.base_scheduler_cls.from_config(shared.base_scheduler_config)
        pipe.scheduler = sched
        if self.lora:
            if self.name not in shared.adapters:
                pipe.load_lora_weights(self.lora, adapter_name=self.name)
                shared.adapters.add(self.name)
            pipe.enable_lora()
            pipe.set_adapters([self.name], adapter_weights=[self.lora_scale])
        elif shared.adapters:
            pipe.disable_lora()
        return pipe

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], **opts) -> list[Generation]:
        import torch

        prompts = [str(p) for p in prompts]
        seeds = [int(s) for s in seeds]
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        self.pipe  # load
        out: list[Generation] = []
        for i in range(0, len(prompts), self.batch_size):
            ps, ss = prompts[i:i + self.batch_size], seeds[i:i + self.batch_size]
            with self._shared.lock:
                pipe = self._prepare()
                gens = [torch.Generator(device="cpu").manual_seed(s) for s in ss]
                kwargs = dict(prompt=ps, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                              height=self.height, width=self.width, generator=gens, output_type="pil")
                if self.negative_prompt:
                    kwargs["negative_prompt"] = [self.negative_prompt] * len(ps)
                kwargs.update(opts)
                capture = X0Capture(pipe.scheduler)  # counts the steps actually run
                stopper = None
                try:
                    if self.stop_config is not None:
                        inputs = ("latents",) + (("denoised",) if "denoised" in getattr(
                            pipe, "_callback_tensor_inputs", []) else ())
                        stopper = ConvergenceStopper(capture, self.steps, self.stop_config, inputs)
                        kwargs["callback_on_step_end"] = stopper
                        kwargs["callback_on_step_end_tensor_inputs"] = list(inputs)
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        images = pipe(**kwargs).images
                    dt = time.perf_counter() - t0
                finally:
                    capture.restore()
            steps_run = capture.steps
            cfg = self.guidance_scale > 1.0 and not getattr(pipe.unet.config, "time_cond_proj_dim", None)
            for p, s, img in zip(ps, ss, images):
                out.append(Generation(
                    image=img, prompt=p, seed=s, backend=self.name, latency_s=dt / len(ps),
                    diffusion=DiffusionInfo(
                        steps_run=steps_run, steps_budget=self.steps, nfe=steps_run * (2 if cfg else 1),
                        stopped_early=bool(stopper is not None and stopper.stop_step is not None)),
                    config=self.config()))
        return out
