"""Runtime routing: Router, RouteDecision, lambda calibration, artifacts."""

from t2iroute.router.core import GenerateResult, RouteDecision, Router, calibrate_lambda

__all__ = ["GenerateResult", "RouteDecision", "Router", "calibrate_lambda"]
