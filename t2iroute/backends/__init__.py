"""Text-to-image backends: protocol, registry, diffusers backend, early stopping, tiny models."""

from t2iroute.backends.base import BACKEND_TYPES, Backend, Generation, build_backend, build_backends

__all__ = ["BACKEND_TYPES", "Backend", "Generation", "build_backend", "build_backends"]
