"""Runtime routing: Router, RouteDecision, lambda calibration, artifacts."""

from t2iroute.router.core import RouteDecision, Router, calibrate_lambda

__all__ = ["RouteDecision", "Router", "calibrate_lambda"]
