"""``t2iroute --help``, ``t2iroute <command> --help`` and the CLI reference page, generated from
the typed configs (:mod:`t2iroute.cli.schema`)."""

from __future__ import annotations

from t2iroute.cli.args import PROMPT_RULE, TAKES_PROMPTS
from t2iroute.cli.checks import show
from t2iroute.cli.hydra_errors import group_options
from t2iroute.cli.schema import CONFIGS
from t2iroute.cli.typed import keys

#: ``t2iroute app``'s keys (it is no Hydra app): default, description
APP_KEYS = {
    "artifact": (
        None,
        "a router artifact folder for the Route page (default: make demo's outputs/demo/testbed/router)",
    ),
    "bench": (None, "a t2iroute bench folder for the Benchmark page (default: outputs/demo/testbed-bench)"),
    "log_dir": (
        None,
        "a decision log folder: images generated on the Route page are logged there and can be rated "
        "(feedback for t2iroute train feedback=DIR)",
    ),
    "port": ("8501", "the port to serve on"),
    "address": ("127.0.0.1", "the address to serve on (loopback by default)"),
}
COMMANDS = {
    **{c: cls.ABOUT for c, cls in CONFIGS.items()},
    "app": "the Streamlit app: t2iroute app [artifact=DIR] [bench=DIR] [port=8501]",
}


def usage() -> str:
    lines = ["usage: t2iroute <command> [PROMPT ...] [KEY=VALUE ...] [-- PROMPT ...]", "", "commands:"]
    lines += [f"  {k:9s} {v}" for k, v in COMMANDS.items()]
    lines += [
        "",
        "t2iroute <command> --help lists the command's keys with their defaults; t2iroute --version",
        "prints the version; python -m t2iroute is the same command.",
        "",
        "e.g. t2iroute bench data=agiqa3k metric=mos_align seed=0 out_dir=outputs/agiqa",
        '     t2iroute route "a red circle" artifact=outputs/demo/testbed/router lam=0.1   (make demo makes it)',
        "     t2iroute bench data=agiqa3k --cfg job     (print the composed config)",
        "     t2iroute bench data=agiqa3k -m seed=0,1,2  (a multirun: one JSON line per run)",
        "",
        PROMPT_RULE,
        "Bad input exits with status 2 and one line on stderr; stdout carries only the JSON result.",
    ]
    return "\n".join(lines)


def _row(left: str, desc: str, width: int = 30) -> str:
    left = f"  {left}"
    if not desc:
        return left
    return f"{left:{width}s} {desc}" if len(left) < width else f"{left}  {desc}"


def _default(v) -> str:
    return "[" + ", ".join(show(x) for x in v) + "]" if isinstance(v, list) else show(v)


def command_help(cmd: str) -> str:
    if cmd == "app":
        lines = ["usage: t2iroute app [KEY=VALUE ...]", COMMANDS["app"], "", "keys:"]
        lines += [_row(f"{k}={d if d is not None else 'null'}", desc) for k, (d, desc) in APP_KEYS.items()]
        return "\n".join(lines)
    cls = CONFIGS[cmd]
    prompts = " [PROMPT ...]" if cmd in TAKES_PROMPTS else ""
    tail = " [-- PROMPT ...]" if cmd in TAKES_PROMPTS else ""
    lines = [f"usage: t2iroute {cmd}{prompts} [KEY=VALUE ...]{tail}", cls.ABOUT, "", f"e.g. {cls.EXAMPLE}", ""]
    if cls.GROUPS:
        lines.append("config groups (GROUP=OPTION; a list group takes [A,B]; an option's own keys: GROUP.KEY=VALUE):")
        for g in cls.GROUPS:
            opts = ", ".join(group_options(g.name))
            lines.append(_row(f"{g.name}={_default(g.default)}", f"{g.help + ' ' if g.help else ''}(options: {opts})"))
        lines.append("")
    lines.append("keys (KEY=DEFAULT):")
    for k in keys(cls):
        if not k.section:
            lines.append(_row(f"{k.name}={_default(k.default)}", k.help))
        elif k.help:  # a section shows when it says something of its keys
            lines.append(_row(f"{k.name}.*", k.help))
    lines += [
        "",
        "flags: -m / --multirun (sweep KEY=A,B: one run and one JSON line per combination),",
        "       --cfg job (print the composed config), --hydra-help,",
        "       hydra.searchpath=[file:///DIR] (a config folder of your own)",
    ]
    if cmd in TAKES_PROMPTS:
        lines += ["", PROMPT_RULE]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """docs/reference/cli.md: every command's groups and keys (``make cli-reference`` writes it)."""
    out = [
        "# CLI reference",
        "",
        "Generated from the typed configs (`t2iroute/cli/schema.py`) by `make cli-reference` "
        "(a test fails when it is stale); `t2iroute <command> --help` prints the same. Any key is set as "
        "`KEY=VALUE`; a config group as `GROUP=OPTION` (its options are the files of `t2iroute/conf/GROUP/`).",
        "",
    ]
    for cmd, cls in CONFIGS.items():
        out += [f"## t2iroute {cmd}", "", cls.ABOUT, "", f"    {cls.EXAMPLE}", ""]
        if cls.GROUPS:
            out += ["| group | default | options | |", "|---|---|---|---|"]
            out += [
                f"| `{g.name}` | `{_default(g.default)}` | {', '.join(group_options(g.name))} | {_cell(g.help)} |"
                for g in cls.GROUPS
            ]
            out.append("")
        out += ["| key | default | |", "|---|---|---|"]
        out += [
            f"| `{k.name}` | `{_cell(_default(k.default))}` | {_cell(k.help)} |" for k in keys(cls) if not k.section
        ]
        out.append("")
    out += ["## t2iroute app", "", COMMANDS["app"], "", "| key | default | |", "|---|---|---|"]
    out += [f"| `{k}` | `{d if d is not None else 'null'}` | {_cell(desc)} |" for k, (d, desc) in APP_KEYS.items()]
    return "\n".join(out) + "\n"
