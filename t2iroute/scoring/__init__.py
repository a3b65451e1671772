"""Image-text quality scorers behind one protocol."""

from t2iroute.scoring.base import SCORERS, Scorer, build_scorer

__all__ = ["SCORERS", "Scorer", "build_scorer"]
