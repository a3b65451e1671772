"""t2iroute: cost-aware routing across text-to-image backends.

Public API (imports nothing heavy until used)::

    from t2iroute import Router
    router = Router.load("outputs/train/.../router")
    decision = router.route("a red car on a beach", lam=0.5)
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = [
    "Router",
    "RouteDecision",
    "GenerateResult",
    "RouterPipeline",
    "RouterPipelineOutput",
    "load_router",
    "__version__",
]


def __getattr__(name):
    if name in ("Router", "RouteDecision", "GenerateResult"):
        from t2iroute.router import core

        return getattr(core, name)
    if name in ("RouterPipeline", "RouterPipelineOutput"):
        from t2iroute.router import pipeline

        return getattr(pipeline, name)
    if name == "load_router":
        from t2iroute.router.artifact import load_router

        return load_router
    raise AttributeError(f"module 't2iroute' has no attribute {name!r}")
