"""Backend protocol, the Generation record and a lazy registry of backend types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from t2iroute.errors import ConfigError


@dataclass
class DiffusionInfo:
    """What an iterative diffusion backend did for one image (absent for other backends)."""

    steps_run: int
    steps_budget: int
    nfe: int  # denoiser evaluations actually run for this image (a guidance pair counts 2)
    stopped_early: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps_run": int(self.steps_run),
            "steps_budget": int(self.steps_budget),
            "nfe": int(self.nfe),
            "stopped_early": bool(self.stopped_early),
        }


class DiffusionShortcuts:
    """Read-only shortcuts to a ``diffusion`` record (None where the backend has none)."""

    diffusion: DiffusionInfo | None

    @property
    def steps_run(self) -> int | None:
        return None if self.diffusion is None else self.diffusion.steps_run

    @property
    def steps_budget(self) -> int | None:
        return None if self.diffusion is None else self.diffusion.steps_budget

    @property
    def nfe(self) -> int | None:
        return None if self.diffusion is None else self.diffusion.nfe

    @property
    def stopped_early(self) -> bool | None:
        return None if self.diffusion is None else self.diffusion.stopped_early


@dataclass
class Generation(DiffusionShortcuts):
    """One generated image and what it cost: what every backend has.

    ``diffusion`` carries the denoising details of diffusion backends (steps run, budget, NFE,
    early stop); a remote API model or a GAN leaves it None. ``cost`` is the backend's cost for
    this image in the table's unit (None: the latency is the cost).
    """

    image: Any  # PIL.Image.Image
    prompt: str
    seed: int
    backend: str
    latency_s: float  # wall time of the call divided by the images it made
    cost: float | None = None
    diffusion: DiffusionInfo | None = None
    config: dict = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What the router calls. A backend with weights to load may also have ``load()`` (no
    arguments): load them now rather than on the first ``generate`` (``serve warmup=true`` calls
    it for every backend before the server reports ready)."""

    name: str

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], **opts) -> list[Generation]: ...


def free_accelerator_memory(device: str | None = None) -> None:
    """After a failed generation (often out of memory): drop the failed call's tensors and give
    cached GPU memory back before the next try. ``device``: the backend's (a CPU one frees only
    Python's garbage); None: any CUDA device torch has. Never imports torch."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and (device is None or str(device).startswith("cuda")) and torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_backends(backends: Mapping[str, Any]) -> dict[str, Any]:
    """Call ``load()`` on each backend that has one (backends sharing weights load them once).

    Returns ``{name: seconds}`` for the backends that loaded, and ``{name: "Error: message"}``
    for those whose load raised (the error is not raised: such a backend fails again when asked
    for an image, and the router falls back, as without a warm-up)."""
    import logging
    import time

    log = logging.getLogger(__name__)
    out: dict[str, Any] = {}
    for name, b in backends.items():
        load = getattr(b, "load", None)
        if not callable(load):
            continue
        t0 = time.perf_counter()
        try:
            load()
        except Exception as e:  # noqa: BLE001 -- reported, as a generation would report it
            out[name] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            log.warning("backend %s: cannot load: %s", name, out[name])
            continue
        out[name] = time.perf_counter() - t0
        log.info("backend %s: loaded in %.2f s", name, out[name])
    return out


def build_backend(name: str, spec: Mapping[str, Any]) -> Backend:
    """``{"type": "diffusers", ...}`` -> a backend named ``name`` (any registered type)."""
    from t2iroute import registry

    spec = dict(spec)
    spec.setdefault("type", "diffusers")
    try:
        return registry.build("backends", spec, name=name)
    except ConfigError as e:
        raise ConfigError(f"backend '{name}': {e}") from e


def build_backends(specs: Mapping[str, Mapping[str, Any]], names: Sequence[str] | None = None) -> dict[str, Backend]:
    """Build the named backends out of ``specs`` (name -> spec). Unknown names list the known."""
    names = list(specs) if names is None else list(names)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ConfigError(f"unknown backend(s) {unknown}; known: {sorted(specs)}")
    return {n: build_backend(n, specs[n]) for n in names}
