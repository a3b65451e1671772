"""Image-text quality scorers behind one protocol."""

from t2iroute.scoring.base import Scorer, build_scorer, load_scorer, offline_scorers

__all__ = ["Scorer", "build_scorer", "load_scorer", "offline_scorers"]
