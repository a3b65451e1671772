"""``t2iroute mcp``: the router as tools for agents, on the official MCP Python SDK (``mcp``).

Tools:

- ``generate_image(prompt, policy?, seed?)``: the image as MCP image content (PNG), the decision
  as structured content (``id``, ``backend``, ``seed``, ``latency_s``, ``decision``);
- ``route(prompts, policy?)``: one decision per prompt, no image;
- ``list_backends()``: the backends with their costs, the metric and the default policy.

``policy`` is the text form every interface shares (``lam=0.05``, ``budget=0.3``,
``quality_floor=30``, ``max_cost=1.5`` or ``policy={type: NAME, ...}``,
:func:`t2iroute.router.policy.parse_policy`); prompts and seeds have the HTTP API's bounds. A bad
argument is an MCP tool error (``isError``) whose text names the argument.
"""

import base64
import io
import json
import threading
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ImageContent, TextContent
from pydantic import Field

from t2iroute.router.core import MAX_PROMPT_CHARS
from t2iroute.router.policy import MAX_POLICY_CHARS, parse_policy
from t2iroute.serving.models import SEED_MAX, Prompt

POLICY_HELP = (
    "the routing policy as text: lam=X (argmax quality - X * cost), budget=X (a target mean cost), "
    "quality_floor=X (the cheapest backend predicted to reach X), max_cost=X, or "
    "policy={type: NAME, ...}; omitted: the router's default"
)
PolicyText = Annotated[str | None, Field(None, max_length=MAX_POLICY_CHARS, description=POLICY_HELP)]


def _policy_kw(policy: str | None) -> dict[str, Any]:
    if policy is None or not str(policy).strip():
        return {}
    try:
        return parse_policy(policy)
    except (ValueError, TypeError) as e:
        raise ToolError(f"policy: {e}") from None


def _decision(d) -> dict[str, Any]:
    out = d.to_dict() if hasattr(d, "to_dict") else dict(vars(d))
    return json.loads(json.dumps(out, default=str))  # plain JSON: numpy numbers and the like as text


def build_mcp_server(router, *, max_route_prompts: int = 256, name: str = "t2iroute"):
    """An :class:`mcp.server.mcpserver.MCPServer` whose tools route and generate with ``router``.
    Generation runs one image at a time (a lock), off the event loop."""
    from t2iroute.errors import T2IRouteError

    server = MCPServer(
        name,
        instructions=(
            "Text-to-image generation routed across backends by predicted quality and cost. "
            "generate_image makes one image; route says where prompts would go without generating; "
            "list_backends lists the backends and their costs."
        ),
    )
    lock = threading.Lock()
    user_errors = (T2IRouteError, ValueError, TypeError, LookupError)

    @server.tool(description="Generate one image for a prompt with the backend the router chooses.")
    async def generate_image(
        prompt: Annotated[Prompt, Field(description=f"the prompt (not blank, at most {MAX_PROMPT_CHARS} characters)")],
        policy: PolicyText = None,
        seed: Annotated[int, Field(ge=0, le=SEED_MAX, description="the image's seed")] = 0,
    ) -> CallToolResult:
        kw = _policy_kw(policy)

        def run():
            with lock:
                return router.generate(prompt, seed=seed, **kw)

        try:
            res = await anyio.to_thread.run_sync(run)
        except user_errors as e:
            where = "policy" if kw else "prompt"
            raise ToolError(f"{where}: {type(e).__name__}: {e}") from None
        buf = io.BytesIO()
        res.image.save(buf, format="PNG")
        info = {
            "id": res.id,
            "backend": res.backend,
            "seed": res.seed,
            "latency_s": res.latency_s,
            "width": res.image.width,
            "height": res.image.height,
            "decision": _decision(res.decision),
        }
        summary = f"{res.backend} made a {res.image.width}x{res.image.height} image in {res.latency_s:.2f} s"
        return CallToolResult(
            content=[
                ImageContent(type="image", data=base64.b64encode(buf.getvalue()).decode(), mime_type="image/png"),
                TextContent(type="text", text=summary),
            ],
            structured_content=info,
        )

    @server.tool(description="Where each prompt would go (backend, predicted quality, cost), without generating.")
    async def route(
        prompts: Annotated[
            list[Prompt], Field(min_length=1, max_length=max_route_prompts, description="the prompts to route")
        ],
        policy: PolicyText = None,
    ) -> dict[str, Any]:
        kw = _policy_kw(policy)
        try:
            decisions = await anyio.to_thread.run_sync(lambda: router.route(list(prompts), **kw))
        except user_errors as e:
            raise ToolError(f"{'policy' if kw else 'prompts'}: {type(e).__name__}: {e}") from None
        return {"decisions": [_decision(d) for d in decisions]}

    @server.tool(description="The router's backends with their costs, its metric and its default policy.")
    def list_backends() -> dict[str, Any]:
        return {
            "backends": [
                {"name": n, "cost": float(c), "can_generate": n in router.backends}
                for n, c in zip(router.backend_names, router.costs)
            ],
            "cost_unit": getattr(router, "cost_unit", None),
            "metric": router.metric,
            "higher_is_better": bool(router.higher_is_better),
            "default_policy": router.policy.describe(),
        }

    return server
