"""Command line: ``t2iroute <command> [prompts] [key=value ...] [-- prompts]``.

Commands: ``bench`` (train on train+val, evaluate on test, write summary.json + curves.png),
``train`` (fit, calibrate lambda, save a router artifact), ``sweep`` (generate and score),
``route`` and ``generate`` (use an artifact), ``app`` (the Streamlit app). Every command but
``app`` is a Hydra app whose config is the command's typed config (:mod:`t2iroute.cli.schema`)
composed with the config groups of ``conf/`` inside the package; add your own config folder with
``hydra.searchpath=[file:///path/to/conf]``.

Modules: ``args`` (the command line), ``schema`` / ``typed`` / ``checks`` (the keys, one
declaration each), ``hydra_errors`` (checks of the composed config, Hydra's errors as one line),
``help``, ``output``, and one module per command (``route``, ``training``, ``serve``, ``app``)
that calls the library.

The promises: bad input exits with status 2 and ONE line on stderr that names the input (a key,
a value, a prompt, a file), and it is found before any model loads; stdout carries only the
command's JSON result (one compact JSON object per line under ``-m``); stderr shows warnings and
errors only unless ``verbose=true``.

Prompts and settings: an argument ``KEY=VALUE`` whose KEY (letters, digits, ``_ . - / @``) runs
from its first character to its first ``=``, and ``~KEY``, ``+KEY=VALUE``, are settings; every
other argument of ``route`` / ``generate`` is a prompt, and everything after ``--`` is a prompt.
"""

from __future__ import annotations

import logging
import os
import sys

from t2iroute.cli.args import TAKES_PROMPTS, quote, split_prompts
from t2iroute.cli.help import COMMANDS, command_help, usage
from t2iroute.cli.hydra_errors import did_you_mean, explain_hydra, unknown_added_key
from t2iroute.cli.output import OUTPUT, error_line, register

__all__ = ["COMMANDS", "main", "register", "split_prompts"]

log = logging.getLogger("t2iroute")

_ARTIFACT_COMMANDS = ("route", "generate", "serve", "mcp")  # Hydra's logging off: the command logs to stderr itself


def _task(cmd: str):
    from t2iroute.cli import mcp, route, serve, training

    return {
        "bench": training.bench,
        "train": training.train,
        "sweep": training.sweep,
        "replay": training.replay,
        "route": route.route,
        "generate": route.generate,
        "serve": serve.serve,
        "mcp": mcp.mcp,
    }[cmd]


def _version() -> str:
    """The installed distribution's version (package metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("t2iroute")
    except PackageNotFoundError:
        from t2iroute import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    """The ``t2iroute`` command. A reader that stops early (``t2iroute --help | head``) ends it
    quietly with 141 (128 + SIGPIPE, as Unix tools do), not with a traceback."""
    try:
        rc = _main(argv)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # Python flushes stdout again at exit
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        if len(argv) > 1 and argv[0] == "help" and argv[1] in COMMANDS:
            print(command_help(argv[1]))
        else:
            print(usage())
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"t2iroute {_version()}")
        return 0
    cmd = argv.pop(0)
    if cmd == "app":
        from t2iroute.cli import app

        return app.run(argv)
    if cmd not in COMMANDS:
        print(
            f"t2iroute: error: unknown command {quote(cmd)}{did_you_mean(cmd, COMMANDS)}; commands: "
            f"{', '.join(COMMANDS)} (t2iroute --help)",
            file=sys.stderr,
        )
        return 2
    from t2iroute.cli.args import parse_args
    from t2iroute.cli.hydra_errors import check_config, precheck
    from t2iroute.cli.output import quiet_console, save_config, truthy
    from t2iroute.errors import ConfigError, T2IRouteError

    try:
        args = parse_args(cmd, argv)
    except ConfigError as e:
        print(error_line(cmd, e), file=sys.stderr)
        return 2
    if args.help:
        print(command_help(cmd))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    register()
    OUTPUT["compact"] = args.multirun
    status = {"rc": 0, "started": False}
    if cmd in _ARTIFACT_COMMANDS and not args.show and not args.custom_config:
        line = unknown_added_key(cmd, args.overrides)
        if line is not None:
            print(f"t2iroute {cmd}: error: ConfigError: {line}", file=sys.stderr)
            return 2
    if (cmd not in TAKES_PROMPTS or args.multirun) and not args.show and not args.custom_config:
        try:
            precheck(cmd, args)
        except ConfigError as e:
            print(error_line(cmd, e), file=sys.stderr)
            return 2
        except Exception as e:
            line = explain_hydra(e, cmd, args.overrides)
            if line is None:
                raise
            print(f"t2iroute {cmd}: error: ConfigError: {line}", file=sys.stderr)
            return 2

    import hydra
    from omegaconf.errors import OmegaConfBaseException

    def task(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        status["started"] = True
        try:
            OUTPUT["compact"] = HydraConfig.get().mode == RunMode.MULTIRUN
        except Exception:  # noqa: BLE001 -- called without Hydra's context: pretty JSON
            pass
        # route, generate, serve (Hydra logging off): the command's own stderr handler
        quiet_console(truthy(cfg.get("verbose", False)), own_handler=cmd in _ARTIFACT_COMMANDS)
        try:
            check_config(cmd, cfg)
            if cfg.get("threads") is not None:  # torch's CPU threads, before anything loads torch
                os.environ["T2IROUTE_THREADS"] = str(int(cfg.threads))
            if cmd in TAKES_PROMPTS:
                _task(cmd)(cfg, args.prompts)
            else:
                save_config(cfg)
                _task(cmd)(cfg)
        except (T2IRouteError, ValueError, TypeError, OSError, OmegaConfBaseException) as e:
            if os.environ.get("T2IROUTE_DEBUG"):
                raise
            if cmd not in TAKES_PROMPTS:
                log.error("%s", e, extra={"t2iroute_file_only": True})  # into the run's log file
            if isinstance(e, OmegaConfBaseException):
                print(error_line(cmd, ConfigError(explain_hydra(e, cmd, args.overrides))), file=sys.stderr)
            else:
                print(error_line(cmd, e), file=sys.stderr)
            status["rc"] = 2

    from t2iroute.paths import CONF_DIR

    app = hydra.main(config_path=str(CONF_DIR), config_name=cmd, version_base="1.3")(task)
    saved_argv, saved_full = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [f"t2iroute {cmd}"] + args.flags + args.overrides  # argparse wants the overrides together
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors: they become one line here
    try:
        app()
    except Exception as e:
        if os.environ.get("T2IROUTE_DEBUG"):
            raise
        line = explain_hydra(e, cmd, args.overrides)
        if line is None and isinstance(e, OSError) and not status["started"]:
            where = "out_dir" if cmd not in TAKES_PROMPTS and not args.multirun else "the run folder"
            line = f"{where}: cannot create {e.filename!r} ({e.strerror or e})"
        if line is None:
            raise
        print(f"t2iroute {cmd}: error: ConfigError: {line}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
        if saved_full is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full
        OUTPUT["compact"] = False
    return status["rc"]


if __name__ == "__main__":
    sys.exit(main())
