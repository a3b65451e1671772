"""Past one machine, on Ray: sweeps (``launcher=ray``) and serving replicas (``engine=ray``).

Ray is optional (``pip install 't2iroute[ray]'``); nothing here imports it until it is used.
"""

from t2iroute.distributed.common import RayOptions, model_group
from t2iroute.distributed.sweep import run_sweep_ray

__all__ = ["RayOptions", "model_group", "run_sweep_ray"]
