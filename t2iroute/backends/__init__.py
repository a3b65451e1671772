"""Text-to-image backends: protocol, diffusers backend, early stopping, tiny models.

A backend plug-in that builds diffusers pipelines imports diffusers through
:func:`import_diffusers` (see docs/plugins.md).
"""

from t2iroute.backends.base import Backend, DiffusionInfo, Generation, build_backend, build_backends

__all__ = ["Backend", "DiffusionInfo", "Generation", "build_backend", "build_backends", "import_diffusers"]


def import_diffusers():
    """``import diffusers``, safely on every install; returns the ``diffusers`` module.

    PyPI's torchvision is a CUDA build: beside a CPU build of torch its C operators fail to
    register and diffusers' pipeline classes (``diffusers.StableDiffusionPipeline``...) raise
    ``RuntimeError: operator torchvision::nms does not exist``. Only where that happens are the
    missing operator schemas declared (no kernels; diffusers never calls them) before diffusers
    is imported. On a matching torch/torchvision install (a GPU machine) torchvision imports
    as it is and this is plain ``import diffusers``. It also sets torch's CPU threads as every
    t2iroute backend does (``T2IROUTE_THREADS``). Call it before the first diffusers import::

        from t2iroute.backends import import_diffusers

        diffusers = import_diffusers()
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(...)
    """
    from t2iroute._compat import ensure_torchvision

    ensure_torchvision()
    import diffusers

    return diffusers
