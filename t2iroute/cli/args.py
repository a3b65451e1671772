"""The command line split into prompts, Hydra's flags and overrides.

An argument ``KEY=VALUE`` whose KEY (letters, digits, ``_ . - / @``) runs from its first
character to its first ``=``, and ``~KEY``, ``+KEY=VALUE``, are settings; every other argument of
``route`` / ``generate`` is a prompt, and everything after ``--`` is a prompt.
"""

from __future__ import annotations

import difflib
import re

from t2iroute.errors import ConfigError

TAKES_PROMPTS = ("route", "generate")

PROMPT_RULE = (
    "Prompts: an argument KEY=VALUE whose KEY (letters, digits, _ . - / @) runs from its start to its\n"
    "first '=' is a setting, as are ~KEY and +KEY=VALUE; any other argument of route/generate is a\n"
    "prompt, and every argument after -- is a prompt:\n"
    '  t2iroute route artifact=DIR -- "style=oil painting" "--no-text logo"'
)

_OVERRIDE = re.compile(r"^(~|\+{1,2})?[A-Za-z_][\w.@/-]*(=|$)")
_HYDRA_FLAGS_WITH_VALUE = {
    "--cfg": ("job", "hydra", "all"),
    "-c": ("job", "hydra", "all"),
    "--package": None,
    "-p": None,
    "--config-path": None,
    "-cp": None,
    "--config-name": None,
    "-cn": None,
    "--config-dir": None,
    "-cd": None,
    "--experimental-rerun": None,
}
_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
_HYDRA_FLAGS = {
    "--hydra-help",
    "--version",
    "--resolve",
    "--run",
    "-r",
    "--multirun",
    "-m",
    "--shell-completion",
    "-sc",
    "--info",
    "-i",
} | set(_HYDRA_FLAGS_WITH_VALUE)


def _is_override(a: str) -> bool:
    return bool(_OVERRIDE.match(a)) and ("=" in a or a.startswith("~"))


class Args:
    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.rest: list[str] = []  # Hydra's argv: flags and overrides, in the order given
        self.overrides: list[str] = []
        self.flags: list[str] = []  # Hydra's flags with their values (they go before the overrides)
        self.help = False
        self.multirun = False
        self.show = False  # --cfg, --info, --hydra-help, --version, --shell-completion: nothing runs
        self.custom_config = False  # -cp / -cn / -cd


def parse_args(cmd: str, argv: list[str]) -> Args:
    """Split the command line into prompts, Hydra flags and overrides (see the module's doc)."""
    takes_prompts = cmd in TAKES_PROMPTS
    args, i = Args(), 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            if not takes_prompts:
                raise ConfigError(f"'--': {cmd} takes no prompts, only KEY=VALUE settings")
            args.prompts += argv[i + 1 :]
            break
        if a in ("-h", "--help"):
            args.help = True
        elif a.startswith("-") and a != "-":
            flag, eq, val = a.partition("=")
            if flag not in _HYDRA_FLAGS or (eq and not flag.startswith("--")):
                similar = difflib.get_close_matches(flag, sorted(_HYDRA_FLAGS | {"--help"}), n=1, cutoff=0.75)
                more = f" (did you mean {similar[0]}?)" if similar and " " not in a else ""
                raise ConfigError(f"unknown option {quote(a)}{more}" + prompt_hint(cmd, a))
            args.rest.append(a)
            args.flags.append(a)
            if flag in ("-m", "--multirun"):
                args.multirun = True
            if flag in ("--cfg", "-c", "--info", "-i", "--hydra-help", "--version", "--shell-completion", "-sc"):
                args.show = True
            if flag in ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"):
                args.custom_config = True
            if flag in _HYDRA_FLAGS_WITH_VALUE and not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(
                        f"{flag} needs a value"
                        + (f": {', '.join(_HYDRA_FLAGS_WITH_VALUE[flag])}" if _HYDRA_FLAGS_WITH_VALUE[flag] else "")
                    )
                val = argv[i + 1]
                args.rest.append(val)
                args.flags.append(val)
                i += 1
            elif flag in ("--info", "-i") and not eq and i + 1 < len(argv) and argv[i + 1] in _INFO_CHOICES:
                args.rest.append(argv[i + 1])
                args.flags.append(argv[i + 1])
                i += 1
            choices = _HYDRA_FLAGS_WITH_VALUE.get(flag)
            if choices and val not in choices:
                raise ConfigError(f"{flag} {val}: one of {', '.join(choices)} is needed")
        elif _is_override(a):
            args.rest.append(a)
            args.overrides.append(a)
            if a.replace(" ", "") in ("hydra.mode=MULTIRUN", "hydra.mode=RunMode.MULTIRUN"):
                args.multirun = True
        elif takes_prompts:
            args.prompts.append(a)
        else:
            raise ConfigError(
                f"unexpected argument {quote(a)}: {cmd} takes KEY=VALUE settings (t2iroute {cmd} --help lists them)"
            )
        i += 1
    if (
        cmd == "train"
        and "predictor=prior" in args.overrides
        and not any(o.startswith("data=") for o in args.overrides)
    ):
        args.rest.append("data=none")  # a router from the prior needs no table
        args.overrides.append("data=none")
    return args


def quote(a: str) -> str:
    a = a.encode("utf-8", "backslashreplace").decode("utf-8")
    return "'" + a.replace("'", "'\\''") + "'" if a else "''"


def split_prompts(argv: list[str]) -> tuple[list[str], list[str]]:
    """(prompts, Hydra flags and overrides) of ``route`` / ``generate``'s arguments."""
    args = parse_args("route", argv)
    return args.prompts, args.rest


def prompt_hint(cmd: str, token: str) -> str:
    if cmd not in TAKES_PROMPTS:
        return ""
    return f"; a prompt? put prompts after --: t2iroute {cmd} ... -- {quote(token)}"
