"""Where bundled data and ../shared live, and writing a file so that readers never see half of it."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


@contextmanager
def atomic_path(path: str | os.PathLike, *, prefix: str = ".tmp-", mode: int | None = None) -> Iterator[Path]:
    """A temporary file beside ``path`` to write: when the block ends without an error it replaces
    ``path`` in one rename (a reader sees the old file or the new one, never a part); on any error
    it is removed and ``path`` is left as it was. Its name is ``PREFIX{pid}-{random}-{name}``, so
    a cleaner can tell a dead process's leftovers. ``mode``: chmod before the rename (``None``: as
    created, 0600 for ``tempfile``-made files, 0644 for ``open``'s with the usual umask).

        with atomic_path(out) as tmp:
            df.to_parquet(tmp)
    """
    path = Path(path)
    tmp = path.with_name(f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` with :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def bundled_config(group: str, name: str) -> dict | None:
    """The bundled config ``conf/<group>/<name>.yaml`` as a dict (e.g. ``("scorer", "clip")``), or None."""
    from omegaconf import OmegaConf

    path = Path(CONF_DIR) / group / f"{name}.yaml"
    if "/" in name or not path.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
