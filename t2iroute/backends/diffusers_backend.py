"""Any diffusers text-to-image pipeline as a backend, with optional latent-convergence stopping.

Backends that name the same model (and dtype, device) share ONE loaded pipeline: SD 1.5 at 10,
20, 30 and 50 steps keeps one copy of the weights in memory. Each backend sets its own scheduler
and LoRA adapter on the shared pipeline under its lock before a call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from t2iroute.backends.base import DiffusionInfo, Generation, free_accelerator_memory
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
#: where early stopping gets x0 for each named scheduler: ``step``'s own output (``native``) or
#: derived from eps and ``alphas_cumprod`` (``derived``: the scheduler's samples are unscaled, so
#: x0 = (x_t - sqrt(1-a) eps) / sqrt(a) holds). A pipeline's own scheduler that offers neither
#: (flow matching, sigma-scaled samples without x0) is refused when an early-stopping backend
#: first runs, before any step.
X0_SOURCE = {
    "ddim": "native",
    "euler": "native",
    "euler_a": "native",
    "lcm": "native",
    "ddpm": "native",
    "dpm": "derived",
    "pndm": "derived",
}

_DEFAULT_SCHED_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


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


@contextlib.contextmanager
def weights_only_loads():
    """Every ``torch.load`` inside unpickles plain tensors only (``weights_only=True``), whatever
    the library calling it asks: a ``.bin`` weight file from a stranger's folder never runs code.
    Safetensors files are not pickles and load as usual."""
    import torch

    orig = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return orig(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = orig


_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def check_variant(folder: str | os.PathLike, variant: str, skip: Sequence[str] = ()) -> None:
    """A local pipeline folder must hold ``variant`` weight files for every component that has
    weights (``unet/diffusion_pytorch_model.fp16.safetensors``...): diffusers' own error names
    neither the folder nor the component."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return  # not a pipeline folder: from_pretrained says so itself
    missing = []
    for comp, spec in index.items():
        if comp.startswith("_") or comp in skip or not isinstance(spec, list) or spec[0] is None:
            continue
        d = folder / comp
        weights = [f.name for f in d.iterdir() if f.name.endswith(_WEIGHT_SUFFIXES)] if d.is_dir() else []
        if weights and not any(f".{variant}." in n or n.endswith(f".{variant}.index.json") for n in weights):
            missing.append(f"{comp} (has {', '.join(sorted(weights))})")
    if missing:
        raise ConfigError(
            f"model '{folder}': variant '{variant}' has no weight files in {'; '.join(missing)}; drop "
            f"`variant: {variant}` to load the full-precision files (dtype still casts them)"
        )


def _safety_checker_kwargs(model: str) -> dict:
    """Load SD 1.x folders without their safety checker (a 1.2 GB CLIP-vision model whose images
    the backends never show): ``safety_checker=None`` where ``model_index.json`` names one."""
    try:
        from diffusers import DiffusionPipeline

        index = DiffusionPipeline.load_config(model)
    except Exception:  # noqa: BLE001 -- from_pretrained reports an unreadable folder itself
        return {}
    spec = index.get("safety_checker")
    if isinstance(spec, (list, tuple)) and spec and spec[0] is not None:
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


def _dtype_keyword() -> str:
    """``dtype`` where diffusers takes it (there ``torch_dtype`` is deprecated, with a warning on
    every load); older diffusers know ``torch_dtype`` only."""
    try:
        from diffusers.pipelines import pipeline_utils
    except Exception:  # noqa: BLE001 -- from_pretrained reports a broken install itself
        return "torch_dtype"
    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def pipeline_key(spec: Mapping[str, Any]) -> tuple:
    """The weights a diffusers backend's spec needs, with :class:`DiffusersBackend`'s defaults:
    backends with one key share one loaded pipeline (in a process, and one worker on Ray)."""
    return (
        str(spec.get("model")),
        spec.get("dtype", "float32"),
        spec.get("device", "cpu"),
        spec.get("variant"),
        spec.get("use_safetensors"),
    )


def resolve_model(model: str):
    """``NAME:REF`` (or ``NAME``) where NAME is a registered model source (``tiny``, ``testbed``,
    plug-ins under the entry-point group ``t2iroute.model_sources``): what the source gives for
    REF, a local pipeline folder or a pipeline object. Anything else (a hub id, a folder) as is."""
    from t2iroute import registry

    name, _, ref = str(model).partition(":")
    if name not in registry.names("model_sources"):
        return model
    try:
        got = registry.get("model_sources", name)(ref)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    return str(got) if isinstance(got, os.PathLike) else got


def _load_pipeline(
    model: str, dtype: str, device: str, variant: str | None, use_safetensors: bool | None = None
) -> _Shared:
    key = pipeline_key(
        {"model": model, "dtype": dtype, "device": device, "variant": variant, "use_safetensors": use_safetensors}
    )
    with _PIPELINES_LOCK:
        if key not in _PIPELINES:
            from t2iroute._compat import ensure_torchvision

            ensure_torchvision()
            import torch

            from t2iroute import quiet

            from diffusers import AutoPipelineForText2Image

            # after importing diffusers: its progress switches are module state
            quiet.apply()  # the loading bars and warnings: only with verbose=true (CLI, workers)
            resolved = resolve_model(model)
            if not isinstance(resolved, str):  # a model source built the pipeline itself
                pipe = resolved
            else:
                model = resolved
                kw: dict[str, Any] = {_dtype_keyword(): getattr(torch, dtype), **_safety_checker_kwargs(model)}
                if variant:
                    if os.path.isdir(model):
                        check_variant(model, variant, skip=[k for k, v in kw.items() if v is None])
                    kw["variant"] = variant
                if use_safetensors is not None:
                    kw["use_safetensors"] = bool(use_safetensors)
                try:
                    with weights_only_loads():
                        pipe = AutoPipelineForText2Image.from_pretrained(model, **kw)
                except Exception as e:
                    hint = ""
                    if "weights_only" in str(e) or "Unpickl" in str(e) or ".bin" in str(e):
                        hint = (
                            "; .bin weight files are unpickled with torch.load(weights_only=True) only "
                            "(plain tensors): convert them to safetensors"
                        )
                    raise RuntimeError(
                        f"cannot load diffusers pipeline '{model}': {type(e).__name__}: {e}{hint}"
                    ) from e
                if getattr(pipe, "safety_checker", None) is not None:
                    pipe.safety_checker = None
            pipe = pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
            _PIPELINES[key] = _Shared(pipe)
        return _PIPELINES[key]


def register_pipeline(
    model: str,
    pipe,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> None:
    """Make backends naming ``model`` (with this dtype, device...) use an already built ``pipe``
    (benchmarks of random-weight pipelines of a real architecture)."""
    pipe.set_progress_bar_config(disable=True)
    key = pipeline_key(
        {"model": model, "dtype": dtype, "device": device, "variant": variant, "use_safetensors": use_safetensors}
    )
    with _PIPELINES_LOCK:
        _PIPELINES[key] = _Shared(pipe)


def unload_pipeline(model: str, **key) -> None:
    """Forget the pipelines loaded for ``model`` (all of them, or the one matching ``key``'s fields)."""
    with _PIPELINES_LOCK:
        for k in [k for k in _PIPELINES if k[0] == model]:
            if all(k[("dtype", "device", "variant", "use_safetensors").index(f) + 1] == v for f, v in key.items()):
                del _PIPELINES[k]


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

    def __init__(
        self,
        name: str,
        model: str,
        *,
        steps: int = 50,
        guidance_scale: float = 7.5,
        height: int = 512,
        width: int = 512,
        negative_prompt: str | None = None,
        scheduler: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        variant: str | None = None,
        batch_size: int = 1,
        lora: str | None = None,
        lora_scale: float = 1.0,
        early_stop: dict | None = None,
        cost_s: float | None = None,
        use_safetensors: bool | None = None,
    ):
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
        self.use_safetensors = use_safetensors
        self.batch_size = int(batch_size)
        self.lora, self.lora_scale = lora, float(lora_scale)
        self.stop_config = StopConfig(**early_stop) if early_stop else None
        self.cost_s = cost_s
        self._shared: _Shared | None = None

    def config(self) -> dict:
        return {
            "model": self.model,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "scheduler": self.scheduler,
            "dtype": self.dtype,
            "device": self.device,
            "lora": self.lora,
            "early_stop": None if self.stop_config is None else vars(self.stop_config),
        }

    @property
    def pipe(self):
        if self._shared is None:
            self._shared = _load_pipeline(self.model, self.dtype, self.device, self.variant, self.use_safetensors)
        return self._shared.pipe

    def load(self) -> None:
        """Load the pipeline (shared with the backends naming the same model) and this backend's
        LoRA adapter now, not on the first ``generate``."""
        self.pipe
        if self.lora:
            with self._shared.lock:
                self._prepare()

    def _prepare(self):
        shared = self._shared
        pipe = shared.pipe
        sched = (
            make_scheduler(self.scheduler, shared.base_scheduler_config)
            if self.scheduler
            else shared.base_scheduler_cls.from_config(shared.base_scheduler_config)
        )
        pipe.scheduler = sched
        if self.lora:
            if self.name not in shared.adapters:
                with weights_only_loads():
                    pipe.load_lora_weights(self.lora, adapter_name=self.name)
                shared.adapters.add(self.name)
            pipe.enable_lora()
            pipe.set_adapters([self.name], adapter_weights=[self.lora_scale])
        elif shared.adapters:
            pipe.disable_lora()
        return pipe

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], **opts) -> list[Generation]:
        """Images for ``prompts`` (one seed each), in batches of at most ``batch_size``.

        Each image has its own ``torch.Generator`` seeded with its seed, so its noise does not
        depend on its batch. A batch that runs out of accelerator memory is split in halves and
        retried (down to one image) before the error reaches the caller.

        Early stopping in a batch: the batch stops at the first step where EVERY image's signal
        has converged (or at the budget); every image then decodes its own x0 of that step.
        Images that converged earlier keep denoising with the batch, so each image's ``steps_run``
        and ``nfe`` are the batch's (NFE counts a guidance pair as 2), and an early-stopping
        backend's images can depend on their batch companions (batch_size 1 makes them not).
        ``latency_s`` is the batch's wall time divided by its images.
        """
        prompts = [str(p) for p in prompts]
        seeds = [int(s) for s in seeds]
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        self.pipe  # load
        out: list[Generation] = []
        for i in range(0, len(prompts), self.batch_size):
            out += self._generate_batch(prompts[i : i + self.batch_size], seeds[i : i + self.batch_size], opts)
        return out

    def _generate_batch(self, ps: list[str], ss: list[int], opts: dict) -> list[Generation]:
        import torch

        try:
            return self._run(ps, ss, opts)
        except torch.OutOfMemoryError:
            if len(ps) == 1:
                raise
            log.warning("backend %s: out of memory at batch %d; retrying as two batches", self.name, len(ps))
        free_accelerator_memory(self.device)  # past the except block: the failed call's tensors are dropped
        h = len(ps) // 2
        return self._generate_batch(ps[:h], ss[:h], opts) + self._generate_batch(ps[h:], ss[h:], opts)

    def _run(self, ps: list[str], ss: list[int], opts: dict) -> list[Generation]:
        import torch

        with self._shared.lock:
            pipe = self._prepare()
            gens = [torch.Generator(device="cpu").manual_seed(s) for s in ss]
            kwargs = dict(
                prompt=ps,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                height=self.height,
                width=self.width,
                generator=gens,
                output_type="pil",
            )
            if self.negative_prompt:
                kwargs["negative_prompt"] = [self.negative_prompt] * len(ps)
            kwargs.update(opts)
            try:  # counts the steps actually run; keeps x0 for early stopping
                capture = X0Capture(pipe.scheduler, need_x0=self.stop_config is not None)
            except ValueError as e:
                raise ConfigError(f"backend '{self.name}': {e}") from None
            stopper = None
            try:
                if self.stop_config is not None:
                    inputs = ("latents",) + (
                        ("denoised",) if "denoised" in getattr(pipe, "_callback_tensor_inputs", []) else ()
                    )
                    stopper = ConvergenceStopper(capture, self.steps, self.stop_config, inputs)
                    user = kwargs.get("callback_on_step_end")
                    wanted = list(inputs) + [
                        t for t in kwargs.get("callback_on_step_end_tensor_inputs") or [] if t not in inputs
                    ]
                    kwargs["callback_on_step_end"] = stopper if user is None else _chain(stopper, user)
                    kwargs["callback_on_step_end_tensor_inputs"] = wanted
                t0 = time.perf_counter()
                with torch.inference_mode():
                    images = pipe(**kwargs).images
                dt = time.perf_counter() - t0
            finally:
                capture.restore()
            # the pipeline's own rule (guidance > 1 and no guidance embedding), as it ran
            cfg = bool(getattr(pipe, "do_classifier_free_guidance", self.guidance_scale > 1.0))
        steps_run = capture.steps
        return [
            Generation(
                image=img,
                prompt=p,
                seed=s,
                backend=self.name,
                latency_s=dt / len(ps),
                diffusion=DiffusionInfo(
                    steps_run=steps_run,
                    steps_budget=self.steps,
                    nfe=steps_run * (2 if cfg else 1),
                    stopped_early=bool(stopper is not None and stopper.stop_step is not None),
                ),
                config=self.config(),
            )
            for p, s, img in zip(ps, ss, images)
        ]


def _chain(first, then):
    """A step-end callback running ``first`` (early stopping) and then the caller's ``then`` on
    the same step, each seeing the tensors the other returned."""

    def callback(pipe, step, timestep, callback_kwargs):
        out = dict(callback_kwargs)
        out.update(first(pipe, step, timestep, out) or {})
        out.update(then(pipe, step, timestep, out) or {})
        return out

    return callback
