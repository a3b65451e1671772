"""Text-to-image backends: protocol, diffusers backend, early stopping, tiny models."""

from t2iroute.backends.base import Backend, DiffusionInfo, Generation, build_backend, build_backends

__all__ = ["Backend", "DiffusionInfo", "Generation", "build_backend", "build_backends"]
