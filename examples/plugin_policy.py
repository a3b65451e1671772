"""A routing policy of your own, registered in process, chosen by its text form.

    python examples/plugin_policy.py outputs/demo/testbed/router

A package would declare it as an entry point instead (pyproject):
    [project.entry-points."t2iroute.policies"]
    cheapest_within = "my_pkg.policies:CheapestWithin"
and then `model="router:policy={type: cheapest_within, slack: 0.05}"` works over HTTP too.
"""

import sys

import numpy as np

from t2iroute import Router, registry
from t2iroute.router.policy import Policy


class CheapestWithin(Policy):
    """The cheapest backend predicted within ``slack`` of the prompt's best prediction."""

    type_name = "cheapest_within"

    def __init__(self, slack: float = 0.05):
        self.slack = float(slack)

    def order(self, q_hat, costs):
        """Every backend per prompt, most preferred first (the router falls back along it): those
        within the slack cheapest first, then the rest best predicted first."""
        q_hat, costs = np.asarray(q_hat, float), np.asarray(costs, float)
        ok = q_hat >= q_hat.max(axis=1, keepdims=True) - self.slack
        return np.lexsort((-q_hat, np.where(ok, costs[None, :], np.inf)))

    def params(self):
        return {"slack": self.slack}


registry.register("policies", "cheapest_within", CheapestWithin)
router = Router.load(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo/testbed/router")
for slack in (0.0, 0.05, 1.0):
    d = router.route("two dotted red squares", policy=f"policy={{type: cheapest_within, slack: {slack}}}")
    print(f"slack {slack}: {d.backend} (policy {d.policy})")
