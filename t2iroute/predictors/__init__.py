"""Quality predictors: prompt features -> predicted quality of every backend.

``knn``, ``ridge``, ``tfidf_ridge``, ``lgbm``, ``stack`` and ``auto`` (picks among the others by
cross-validation on the routing objective). Classes load lazily; build one from a spec with
:func:`build_predictor` (``{"type": "knn", "n_neighbors": 50}``).
"""

from __future__ import annotations

_CLASSES = {
    "QualityPredictor": "t2iroute.predictors.base",
    "RidgePredictor": "t2iroute.predictors.linear",
    "TfidfRidgePredictor": "t2iroute.predictors.linear",
    "KNNPredictor": "t2iroute.predictors.knn",
    "LGBMPredictor": "t2iroute.predictors.lgbm",
    "StackPredictor": "t2iroute.predictors.stack",
    "AutoPredictor": "t2iroute.predictors.auto",
    "build_predictor": "t2iroute.predictors.base",
    "resolve_blocks": "t2iroute.predictors.base",
}

__all__ = list(_CLASSES)


def __getattr__(name):
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 't2iroute.predictors' has no attribute {name!r}")
