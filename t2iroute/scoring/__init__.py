"""Image-text quality scorers behind one protocol."""

from t2iroute.scoring.base import Scorer, build_scorer

__all__ = ["Scorer", "build_scorer"]
