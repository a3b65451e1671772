"""``t2iroute mcp``: the router's tools for MCP clients, over stdio or streamable HTTP."""

from __future__ import annotations

import sys

from t2iroute.cli.common import load_router, require_artifact


def mcp(cfg) -> None:
    """Serve the tools until the client closes stdin (stdio) or SIGINT/SIGTERM (http). Nothing but
    the protocol goes to stdout: status lines go to stderr."""
    from t2iroute.errors import ConfigError

    require_artifact(cfg)
    try:
        from t2iroute.serving.mcp import build_mcp_server
    except ImportError as e:
        raise ConfigError(f"mcp needs the MCP Python SDK: pip install 't2iroute[mcp]' ({e})") from None
    router = load_router(cfg)
    server = build_mcp_server(router, max_route_prompts=int(cfg.max_route_prompts))
    if cfg.transport == "stdio":
        print(f"t2iroute mcp: serving {len(router.backend_names)} backends on stdio", file=sys.stderr, flush=True)
        server.run("stdio")
        return
    print(
        f"t2iroute mcp: serving {len(router.backend_names)} backends at http://{cfg.host}:{cfg.port}/mcp",
        file=sys.stderr,
        flush=True,
    )
    server.run("streamable-http", host=str(cfg.host), port=int(cfg.port))
