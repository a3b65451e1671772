"""Where bundled data and ../shared live."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DATA = PACKAGE_DIR / "data"
CONF_DIR = PACKAGE_DIR / "conf"


def bundled(rel: str = "") -> str:
    """Path of a file shipped with the package (``t2iroute/data``)."""
    return str(BUNDLED_DATA / rel)


def shared(rel: str = "") -> str:
    """Path under the shared data folder.

    ``T2IROUTE_SHARED_DATA`` wins; else the first ``shared/data`` found beside the working
    directory or beside the source checkout (``../shared/data`` from the project root).
    """
    env = os.environ.get("T2IROUTE_SHARED_DATA")
    if env:
        return str(Path(env) / rel)
    for base in (Path.cwd(), PACKAGE_DIR.parent):
        for cand in (base / "../shared/data", base / "shared/data"):
            if cand.is_dir():
                return str((cand / rel).resolve())
    return str(Path("../shared/data") / rel)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (temp files name their writer's pid, so a
    later run removes only those whose writer is gone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
