"""``t2iroute app``: the Streamlit app (``streamlit run``), on 127.0.0.1 by default."""

from __future__ import annotations

import os
import sys

from t2iroute.cli.args import quote
from t2iroute.cli.help import APP_KEYS, command_help
from t2iroute.cli.hydra_errors import did_you_mean


def run(argv: list[str]) -> int:
    """Serve the Streamlit app until it is stopped (the process becomes ``streamlit run``)."""
    import importlib.util

    if any(a in ("-h", "--help") for a in argv):
        print(command_help("app"))
        return 0
    opts = {k: d for k, (d, _) in APP_KEYS.items()}
    for a in argv:
        k, eq, v = a.partition("=")
        if not eq or k not in opts:
            more = did_you_mean(k, opts) if eq else ""
            use = ", ".join(k + "=..." for k in opts)
            print(f"t2iroute app: error: unknown argument {quote(a)}{more} (use {use})", file=sys.stderr)
            return 2
        opts[k] = v
    if not str(opts["port"]).isdigit() or not 0 < int(opts["port"]) < 65536:
        print(f"t2iroute app: error: port={opts['port']}: a port number in [1, 65535] is needed", file=sys.stderr)
        return 2
    if importlib.util.find_spec("streamlit") is None:
        print("t2iroute app: error: streamlit is not installed (pip install 't2iroute[app]')", file=sys.stderr)
        return 2
    from t2iroute.app import APP_FILE

    env = dict(os.environ)
    for k in ("artifact", "bench", "log_dir"):
        if opts[k]:
            env[f"T2IROUTE_APP_{k.upper()}"] = os.path.abspath(opts[k])
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_FILE),
        "--server.headless",
        "true",
        "--server.address",
        opts["address"],
        "--server.port",
        str(opts["port"]),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--server.fileWatcherType",
        "none",
    ]
    print(f"t2iroute app: http://{opts['address']}:{opts['port']}", file=sys.stderr)
    os.execve(sys.executable, cmd, env)
    return 0  # not reached
