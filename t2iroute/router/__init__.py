"""Runtime routing: Router, RouteDecision, policies, artifacts. Imports nothing from training."""

from t2iroute.router.core import GenerateResult, RouteDecision, Router
from t2iroute.router.policy import (
    BudgetPolicy,
    FixedPolicy,
    LambdaPolicy,
    MaxCostPolicy,
    Policy,
    QualityFloorPolicy,
    build_policy,
    calibrate_lambda,
    route_scores,
)

__all__ = [
    "GenerateResult",
    "RouteDecision",
    "Router",
    "Policy",
    "LambdaPolicy",
    "BudgetPolicy",
    "QualityFloorPolicy",
    "MaxCostPolicy",
    "FixedPolicy",
    "build_policy",
    "calibrate_lambda",
    "route_scores",
]
