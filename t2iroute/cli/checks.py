"""Checks of config values, each raising a ConfigError that names ``KEY=VALUE`` and what is
needed. The schema (:mod:`t2iroute.cli.schema`) picks one for every key from its type and range;
a key may name its own (a folder the command writes, a URL, an environment variable)."""

from __future__ import annotations

import math
import os
from pathlib import Path

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; the router keeps seeds in [0, 2**63)


def show(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(show(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {show(x)}" for k, x in v.items()) + "}"
    text = str(v)
    return text if len(text) <= 240 else text[:237] + "..."  # whole paths; only absurd values are cut


def bad(key: str, value, need: str):
    from t2iroute.errors import ConfigError

    return ConfigError(f"{key}={show(value)}: {need}")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(lo: int, hi: int | None = None, *, optional: bool = False):
    rng = f"in [{lo}, 2**63-1]" if hi == SEED_MAX else (f">= {lo}" if hi is None else f"in [{lo}, {hi}]")

    def check(key, v):
        if v is None and optional:
            return
        if not is_int(v) or v < lo or (hi is not None and v > hi):
            raise bad(key, v, f"an integer {rng} is needed" + (" (or null)" if optional else ""))

    return check


def number(*, optional: bool = True, minimum: float | None = None):
    def check(key, v):
        if v is None and optional:
            return
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
            or (minimum is not None and v < minimum)
        ):
            bound = f" >= {minimum:g}" if minimum is not None else ""
            raise bad(key, v, f"a finite number{bound} is needed")

    return check


def boolean(key, v):
    if not isinstance(v, bool):
        raise bad(key, v, "true or false is needed")


def text(*, optional: bool = False):
    def check(key, v):
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or not str(v).strip():
            raise bad(key, v, "a non-empty text or path is needed" + (" (or null)" if optional else ""))
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise bad(
                    key, v.encode("utf-8", "backslashreplace").decode(), "not valid text (bytes that are not UTF-8?)"
                ) from None

    return check


def list_of(item, *, min_len: int = 1, length: int | None = None):
    def check(key, v):
        if not isinstance(v, list) or len(v) < min_len or (length is not None and len(v) != length):
            n = f"{length}" if length is not None else f"at least {min_len}"
            raise bad(key, v, f"a list of {n} items is needed, e.g. {key}=[0,1]")
        for i, x in enumerate(v):
            try:
                item(f"{key}[{i}]", x)
            except Exception as e:  # noqa: BLE001 -- name the whole list and the item
                raise bad(key, v, str(e)) from None

    return check


def choice(*options):
    def check(key, v):
        if v not in options or isinstance(v, bool) != any(isinstance(o, bool) and o == v for o in options):
            raise bad(key, v, "one of " + ", ".join(show(o) for o in options) + " is needed")

    return check


def out_folder(key, v):
    """A folder the command will create (or fill): refused early if it cannot be one."""
    text()(key, v)
    p = Path(os.path.abspath(str(v)))
    if p.exists() and not p.is_dir():
        raise bad(key, v, "a file is there, not a folder")
    anc = p
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc != p and not anc.is_dir():
        raise bad(key, v, f"{anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise bad(key, v, f"cannot write in {anc} (permission denied)")
    probe(key, v, anc)


def probe(key, v, folder: Path) -> None:
    """Create and remove a temp file in ``folder`` (where the first new folder or file goes): what
    permissions do not tell (a read-only or special file system, root's rights)."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".t2iroute-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise bad(key, v, f"cannot write in {folder} ({e.strerror or e})") from None


def image_path(key, v):
    """generate's out=: a writable image file path, checked (and probed) before any model loads."""
    text()(key, v)
    out = Path(os.path.abspath(str(v)))
    if out.is_dir():
        raise bad(key, v, "a folder is there, not an image file")
    anc = out.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise bad(key, v, f"{anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise bad(key, v, f"cannot write in {anc} (permission denied)")
    probe(key, v, anc)


def positive(key, v):
    """An optional number > 0 (a deadline, a timeout)."""
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise bad(key, v, "a finite number > 0 is needed (or null)")


def url(*, scheme_optional: bool = False):
    def check(key, v):
        from t2iroute.features.llm import check_url

        if v is None:
            return
        try:
            check_url(v if isinstance(v, str) else str(v), key, scheme_optional=scheme_optional)
        except ValueError as e:
            from t2iroute.errors import ConfigError

            raise ConfigError(str(e)) from None

    return check


def env_var_with_key(key, v):
    """The name of an environment variable that holds a key."""
    if v is None:
        return
    text()(key, v)
    if not os.environ.get(str(v), "").strip():
        raise bad(key, v, "that environment variable is not set or holds no key")
