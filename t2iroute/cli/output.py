"""What the commands print and log: the JSON result on stdout (one compact line per run under
``-m``), warnings and errors on stderr (INFO too with ``verbose=true``), one error line."""

from __future__ import annotations

import json
import logging
import os
import sys

OUTPUT = {"compact": False}  # a multirun prints JSON Lines: one compact object per run


def emit(obj, *, compact: bool = False) -> None:
    compact = compact or OUTPUT["compact"]
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=2)
    print(text, flush=True)


def save_config(cfg) -> None:
    """OUT/config.yaml: the composed config of the run, interpolations resolved."""
    from omegaconf import OmegaConf

    out = cfg.get("out_dir")
    if out:
        os.makedirs(str(out), exist_ok=True)
        try:
            text = OmegaConf.to_yaml(cfg, resolve=True)
        except Exception:  # noqa: BLE001 -- a missing value (???) fails later with its own message
            text = OmegaConf.to_yaml(cfg)
        with open(os.path.join(str(out), "config.yaml"), "w") as fh:
            fh.write(text)


class _ConsoleFilter(logging.Filter):
    """Drops, on the console only, what the run's log file keeps: records marked file-only (an
    error the command prints itself as its one line) and open_clip's notice that a model built with
    ``pretrained: null`` (asked for: clip_tiny) has random weights."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "t2iroute_file_only", False):
            return False
        if record.levelno < logging.ERROR and record.getMessage().startswith("No pretrained weights loaded for model"):
            return False
        return True


class _StderrHandler(logging.StreamHandler):
    """A console handler on whatever ``sys.stderr`` is when it writes (not the one it was made
    with: a stream replaced since, e.g. a closed capture, would fail every later log line)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def quiet_console(verbose: bool, *, own_handler: bool) -> None:
    from t2iroute.quiet import quiet_libraries

    quiet_libraries(verbose)  # diffusers' / transformers' bars and warnings (Ray workers get the flag too)
    root = logging.getLogger()
    if own_handler and not root.handlers:  # route, generate: no Hydra logging; in-process callers keep theirs
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
        root.setLevel(logging.INFO if verbose else logging.WARNING)
    for h in root.handlers:  # the console: a stream handler on stderr (not a log file, not a test's capture)
        if (
            isinstance(h, logging.StreamHandler)
            and getattr(h, "stream", None) in (sys.stderr, sys.__stderr__)
            and not any(isinstance(f, _ConsoleFilter) for f in h.filters)
        ):
            h.addFilter(_ConsoleFilter())


def error_line(cmd: str, e: BaseException, kind: str | None = None) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"t2iroute {cmd}: error: {kind or type(e).__name__}: {msg}"


def register() -> None:
    """The commands' configs (Hydra's ConfigStore) and the resolvers they use (``${t2i.bundled:...}``)."""
    from omegaconf import OmegaConf

    from t2iroute import paths
    from t2iroute.cli.schema import register as register_configs

    register_configs()

    if not OmegaConf.has_resolver("t2i.bundled"):
        OmegaConf.register_new_resolver("t2i.bundled", paths.bundled)
        OmegaConf.register_new_resolver("t2i.shared", paths.shared)
    if not OmegaConf.has_resolver("t2i.log_level"):
        # the console's log level: warnings and errors only unless verbose=true (conf/hydra/default.yaml)
        OmegaConf.register_new_resolver("t2i.log_level", lambda v: "INFO" if truthy(v) else "WARNING")


def truthy(v) -> bool:
    return v is True or str(v).strip().lower() in ("true", "1", "yes", "on")
