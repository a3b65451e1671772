"""Latent-convergence early stopping for diffusers pipelines.

The signal is the relative change of the scheduler's clean-image estimate x0 between successive
steps, ``||x0_t - x0_{t-1}|| / ||x0_{t-1}||`` (per image), averaged over the last ``window``
steps. It is scale-free across schedulers (DDIM, Euler's sigma-scaled latents, LCM's zig-zag),
unlike the change of the noisy latents. Stopping needs the smoothed signal below ``threshold``
for ``patience`` consecutive steps, and never happens before ``min_fraction`` of the budget
(x0 barely moves at the highest noise levels, so a bare threshold fires at step 2).

``signal: pixel`` measures the change in image terms instead: every step the pipeline's own VAE
decodes x0, and the signal is the fraction of pixels whose colour moved by more than
``pixel_delta`` (on a 0-1 scale, largest channel) since the previous step's decode -- the checker's
question "did the picture change?" rather than "did the latents move?". It costs one VAE decode
per step (cheap for the testbed's f2 VAE, a large share of a step for SD's 512 px decoder), so
``latent`` stays the default.

On stop the callback hands x0 back as the latents and sets ``pipe._interrupt``: the pipeline
skips the remaining steps and the VAE decodes x0, never the still-noisy x_t.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a pipeline runs, not when a backend is configured
    import torch


class X0Capture:
    """Wraps ``scheduler.step`` to keep the x0 estimate the pipeline throws away.

    Uses the step's own x0 (``pred_original_sample`` for DDIM/Euler, ``denoised`` for LCM) and
    otherwise derives it from the model output and ``alphas_cumprod`` (epsilon or
    v-prediction). A scheduler offering neither is refused at construction.
    """

    def __init__(self, scheduler, need_x0: bool = True):
        self.scheduler = scheduler
        self.x0: torch.Tensor | None = None
        self.steps = 0
        self._orig = scheduler.step
        probe = _step_returns_x0(scheduler)
        self._derive = not probe and can_derive_x0(scheduler)
        if need_x0 and not probe and not self._derive:
            raise ValueError(
                f"early stopping: scheduler {type(scheduler).__name__} exposes no x0 estimate and "
                "x0 cannot be derived from its steps (no alphas_cumprod, or sigma-scaled samples); "
                "set `scheduler:` to ddim, euler, euler_a, lcm, ddpm, dpm or pndm, or drop early_stop"
            )

        @functools.wraps(self._orig)
        def step(model_output, timestep, sample, *args, **kwargs):
            out = self._orig(model_output, timestep, sample, *args, **kwargs)
            self.steps += 1
            x0 = None
            if isinstance(out, tuple):
                x0 = out[1] if len(out) > 1 else None
            else:
                x0 = getattr(out, "pred_original_sample", None)
                if x0 is None:
                    x0 = getattr(out, "denoised", None)
            if x0 is None and self._derive:
                x0 = self._derive_x0(model_output, timestep, sample)
            self.x0 = x0
            return out

        scheduler.step = step

    def _derive_x0(self, eps, t, x_t):
        s = self.scheduler
        a = s.alphas_cumprod.to(x_t.device)[int(t)].to(x_t.dtype)
        pred = s.config.get("prediction_type", "epsilon")
        if pred == "epsilon":
            return (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        if pred == "v_prediction":
            return a.sqrt() * x_t - (1 - a).sqrt() * eps
        if pred == "sample":
            return eps
        raise ValueError(f"cannot derive x0 for prediction_type {pred!r}")

    def restore(self):
        self.scheduler.step = self._orig


def can_derive_x0(scheduler) -> bool:
    """x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) holds for schedulers on the variance-preserving
    samples (DPM-Solver, PNDM, UniPC...: ``init_noise_sigma`` 1), not for sigma-scaled ones."""
    try:
        sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    except (TypeError, ValueError):
        return False
    return hasattr(scheduler, "alphas_cumprod") and abs(sigma - 1.0) < 1e-6


def _step_returns_x0(scheduler) -> bool:
    name = type(scheduler).__name__
    if name.startswith(("DDIM", "Euler", "LCM", "DDPM", "TCD", "HeunDiscrete")):
        return True
    try:
        src = inspect.getsource(type(scheduler).step)
    except (OSError, TypeError):
        return False
    return "pred_original_sample=" in src or "denoised=" in src


SIGNALS = ("latent", "pixel")


@dataclass
class StopConfig:
    threshold: float = 0.01
    window: int = 2
    patience: int = 2
    min_fraction: float = 0.3
    signal: str = "latent"  # latent: relative change of x0; pixel: share of decoded pixels that changed
    pixel_delta: float = 0.1  # signal=pixel: a pixel changed when a channel moved more than this (0-1 scale)

    def __post_init__(self):
        if self.signal not in SIGNALS:
            raise ValueError(f"early stopping signal must be one of {list(SIGNALS)}, got {self.signal!r}")
        if not 0.0 < self.pixel_delta <= 1.0:
            raise ValueError(f"early stopping pixel_delta must be in (0, 1], got {self.pixel_delta}")
        if self.threshold < 0:
            raise ValueError(f"early stopping threshold must be >= 0, got {self.threshold}")
        if self.window < 1 or self.patience < 1:
            raise ValueError("early stopping window and patience must be >= 1")
        if not 0.0 <= self.min_fraction <= 1.0:
            raise ValueError(f"early stopping min_fraction must be in [0, 1], got {self.min_fraction}")


def _decode(pipe, latents):
    """x0 latents -> images in [-1, 1] (float32) with the pipeline's own VAE, as it decodes at the end."""
    vae = pipe.vae
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        z = z + shift
    return vae.decode(z, return_dict=False)[0].float().clamp(-1, 1)


@dataclass
class ConvergenceStopper:
    """``callback_on_step_end`` object. Stops when every image in the batch has converged."""

    capture: X0Capture
    budget: int
    config: StopConfig = field(default_factory=StopConfig)
    tensor_inputs: tuple = ("latents",)

    def __post_init__(self):
        self.prev: torch.Tensor | None = None
        self.history: list[torch.Tensor] = []  # per-step relative change, one value per image
        self.below = 0
        self.stop_step: int | None = None
        self.decoded_x0: torch.Tensor | None = None

    def __call__(self, pipe, step_index, timestep, callback_kwargs):
        x0 = self.capture.x0
        if x0 is None:
            return callback_kwargs
        # what successive steps compare: the decoded image (pixel) or x0 itself (latent)
        x0 = _decode(pipe, x0) if self.config.signal == "pixel" else x0.detach().float()
        if self.config.signal == "pixel":
            if self.prev is not None:  # share of pixels whose largest channel change exceeds the delta
                moved = (x0 - self.prev).abs().amax(dim=1) > 2 * self.config.pixel_delta  # images in [-1, 1]
                self.history.append(moved.flatten(1).float().mean(dim=1))
        elif self.prev is not None:
            diff = (x0 - self.prev).flatten(1).norm(dim=1)
            base = self.prev.flatten(1).norm(dim=1).clamp_min(1e-8)
            self.history.append(diff / base)
        self.prev = x0
        if len(self.history) >= self.config.window:
            import torch

            smooth = torch.stack(self.history[-self.config.window :]).mean(0)
            self.below = self.below + 1 if bool((smooth < self.config.threshold).all()) else 0
        steps_done = step_index + 1
        if (
            self.below >= self.config.patience
            and steps_done < self.budget
            and steps_done >= self.config.min_fraction * self.budget
        ):
            self.stop_step = steps_done
            pipe._interrupt = True
            out = self.capture.x0
            self.decoded_x0 = out
            callback_kwargs = dict(callback_kwargs)
            callback_kwargs["latents"] = out
            if "denoised" in self.tensor_inputs:  # LCM pipelines decode `denoised`
                callback_kwargs["denoised"] = out
        return callback_kwargs
