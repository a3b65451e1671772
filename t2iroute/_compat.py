"""Import guards for the CPU-only test machines.

PyPI's torchvision is a CUDA build; beside a CPU build of torch its C operators fail to
register and ``import torchvision`` (hence open_clip, timm, sentence-transformers, diffusers'
pipelines) raises ``RuntimeError: operator torchvision::nms does not exist``. Where, and only
where, that happens we declare the missing operator schemas (no kernels: nothing here calls
nms or roi ops) and import again. On a matching torch/torchvision install the first import
succeeds and this does nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

log = logging.getLogger(__name__)
_LIB = None  # keep the torch.library.Library alive
_DONE = False

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
)


def ensure_torchvision() -> None:
    """Make ``import torchvision`` work (see module docstring); a no-op where it already does."""
    global _LIB, _DONE
    if _DONE or importlib.util.find_spec("torchvision") is None:
        if not _DONE:
            _threads()
        _DONE = True
        return
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _LIB = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            try:
                _LIB.define(schema)
            except RuntimeError:
                pass  # already defined
        log.info(
            "torchvision's C operators are missing (CUDA torchvision beside CPU torch); "
            "declared their schemas so that torchvision imports"
        )
        import torchvision  # noqa: F401
    _threads()
    _DONE = True


def _threads() -> None:
    """Torch is about to run: set its CPU threads (see :mod:`t2iroute.threads`)."""
    from t2iroute.threads import configure

    configure()
