"""Route prompts and generate one image with a router artifact.

python examples/route_and_generate.py outputs/demo/testbed/router [OUT.png]
"""

import sys

from t2iroute import Router
from t2iroute.quiet import quiet_libraries

quiet_libraries()  # diffusers' loading bars and deprecation warnings off (the CLI does this unless verbose=true)

artifact = sys.argv[1] if len(sys.argv) > 1 else "outputs/demo/testbed/router"  # made by `make demo`
out_png = sys.argv[2] if len(sys.argv) > 2 else "routed.png"

router = Router.load(artifact)  # backends come from the artifact; nothing loads until the first image
prompts = ["a red circle", "three small striped blue squares left of a dotted green triangle"]
for d in router.route(prompts, policy="lam=0.5"):  # a policy's text form, as on the CLI and over HTTP
    print(f"{d.backend:>20}  predicted {d.predicted_quality[d.backend]:.3f}  cost {d.cost[d.backend]:.3f}  {d.prompt}")

out = router.generate(prompts[1], seed=0, policy="lam=0.5")
out.image.save(out_png)
print(f"generated with {out.backend} in {out.latency_s:.2f} s -> {out_png}")
