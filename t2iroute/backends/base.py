"""Backend protocol, the Generation record and a lazy registry of backend types."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from t2iroute.errors import ConfigError


@dataclass
class Generation:
    """One generated image and what it cost."""

    image: Any  # PIL.Image.Image
    prompt: str
    seed: int
    backend: str
    latency_s: float  # wall time of the call divided by the images it made
    nfe: int  # UNet evaluations actually run for this image (a guidance pair counts 2)
    steps_run: int
    steps_budget: int
    stopped_early: bool
    config: dict = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], **opts) -> list[Generation]: ...


#: backend type -> "module:Class"; imported only when built.
BACKEND_TYPES: dict[str, str] = {
    "diffusers": "t2iroute.backends.diffusers_backend:DiffusersBackend",
}


def build_backend(name: str, spec: Mapping[str, Any]) -> Backend:
    spec = dict(spec)
    spec.pop("_target_", None)
    kind = spec.pop("type", "diffusers")
    if kind not in BACKEND_TYPES:
        raise ConfigError(f"backend '{name}': unknown type '{kind}'; known: {sorted(BACKEND_TYPES)}")
    mod, _, cls = BACKEND_TYPES[kind].partition(":")
    cls = getattr(importlib.import_module(mod), cls)
    spec.setdefault("name", name)
    try:
        return cls(**spec)
    except TypeError as e:
        raise ConfigError(f"backend '{name}': bad parameters {sorted(spec)}: {e}") from e


def build_backends(specs: Mapping[str, Mapping[str, Any]], names: Sequence[str] | None = None) -> dict[str, Backend]:
    """Build the named backends out of ``specs`` (name -> spec). Unknown names list the known."""
    names = list(specs) if names is None else list(names)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ConfigError(f"unknown backend(s) {unknown}; known: {sorted(specs)}")
    return {n: build_backend(n, specs[n]) for n in names}
