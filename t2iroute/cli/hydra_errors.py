"""The composed config, checked before anything loads, and Hydra's errors as one line that names
the input (a key, a value, a config group option) with a close match."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from t2iroute.cli.args import TAKES_PROMPTS, prompt_hint, quote
from t2iroute.cli.checks import show
from t2iroute.cli import schema
from t2iroute.cli.schema import checks_for


def group_options(group: str) -> list[str]:
    from t2iroute.paths import CONF_DIR

    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def check_config(cmd: str, cfg) -> None:
    """Every value the command reads itself, named with its key; ``???`` values that are still
    missing; the folder it writes. Each error is a ConfigError naming KEY=VALUE."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from t2iroute.errors import ConfigError

    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        k = missing[0]
        raise ConfigError(f"{k} is required ({k}=??? in the config): give {k}=VALUE")
    for key, check in checks_for(cmd).items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}: {omegaconf_message(e)}") from None
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if value is None and OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue  # a key a user config of their own does not have
        check(key, value)
    if cmd == "sweep" and not int(cfg.shard) < int(cfg.num_shards):
        raise ConfigError(f"shard={cfg.shard} num_shards={cfg.num_shards}: need 0 <= shard < num_shards")
    pol = cfg.get("policy") if cmd in TAKES_PROMPTS else None
    if pol is not None and not OmegaConf.is_dict(pol) and not isinstance(pol, str):  # text: _policy_kwargs
        raise ConfigError(
            f"policy={show(pol)}: give a mapping, e.g. 'policy={{type: lam, lam: 0.1}}', "
            "or the text form, e.g. 'policy=\"budget=0.3\"'"
        )


def omegaconf_message(e) -> str:
    msg = getattr(e, "msg", None) or str(e)
    return " ".join(str(msg).split())


# -- the commands ---------------------------------------------------------------------------------


def flat_keys(node, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            out.append(key)
            out += flat_keys(v, key + ".")
    return out


def known_keys(cmd: str, overrides: list[str], drop: str) -> list[str]:
    """The keys of the command's config composed without the offending override (for a 'did you
    mean'); the entry config's documented keys if that fails too."""
    from hydra import compose
    from omegaconf import OmegaConf

    rest = [o for o in overrides if override_key(o) != drop and "," not in o.partition("=")[2]]
    try:
        with hydra_context():
            cfg = compose(config_name=cmd, overrides=rest, return_hydra_config=drop.startswith("hydra."))
        keys = flat_keys(OmegaConf.to_container(cfg, resolve=False))
    except Exception:  # noqa: BLE001 -- only a suggestion
        cls = schema.CONFIGS[cmd]
        keys = [g.name for g in cls.GROUPS] + [k.name for k in schema.keys(cls)]
    return keys if drop.startswith("hydra.") else [k for k in keys if not k.startswith("hydra")]


def override_key(o: str) -> str:
    return o.lstrip("~+").partition("=")[0]


def did_you_mean(word: str, options) -> str:
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close and "." not in word:  # a bare name for a nested key: budget -> router.budget
        close = [o for o in options if o.rsplit(".", 1)[-1] == word][:1]
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_added_key(cmd: str, overrides: list[str]) -> str | None:
    """The error line for a ``+KEY=VALUE`` that adds a key the command does not read (None when
    there is none). Keys of a config group (``+scorer.type=...``, ``+backends.NAME...``) and
    Hydra's own are left to Hydra: they configure something the command builds."""
    from t2iroute.paths import CONF_DIR

    plus = [o for o in overrides if o.startswith("+")]
    if not plus:
        return None
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()} | {"hydra"}
    keys = None
    for o in plus:
        key = override_key(o)
        if key.split(".", 1)[0] in groups:
            continue
        if keys is None:
            keys = known_keys(cmd, [x for x in overrides if not x.startswith("+")], "")
        parts = key.split(".")
        # under a key with no keys of its own (policy: null), '+policy.type=lam' builds its value
        leaf_parent = any(
            ".".join(parts[:i]) in keys and not any(k.startswith(".".join(parts[:i]) + ".") for k in keys)
            for i in range(1, len(parts))
        )
        if key not in keys and not leaf_parent:
            return (
                f"unknown key '{key}' in {quote(o)}{did_you_mean(key, keys)} (t2iroute {cmd} --help "
                "lists the keys; a '+' adds no key this command reads)"
            )
    return None


def find_override(overrides: list[str], key: str) -> str:
    return next((o for o in overrides if override_key(o) == key), key)


def explain_hydra(e: BaseException, cmd: str, overrides: list[str]) -> str | None:
    """One line for an error Hydra raised while reading the command line or composing the config;
    None when it is not one (a bug: the traceback stays)."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(e, (HydraException, OmegaConfBaseException)):
        return None
    text = str(e)
    first = " ".join(text.strip().splitlines()[0].split()) if text.strip() else type(e).__name__
    if isinstance(e, OverrideParseException):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        for o in overrides:
            try:
                parser.parse_override(o)
            except Exception as pe:  # noqa: BLE001
                why = " ".join(str(pe).strip().splitlines()[0].split())
                return (
                    f"cannot read {quote(o)}: {why} (quote a value with spaces, brackets or commas: "
                    f"'{override_key(o)}=\"...\"')" + prompt_hint(cmd, o)
                )
        return f"cannot read the command line: {first}"
    m = re.search(r"You must specify '([^']+)'", text)
    if m:
        group = m.group(1)
        opts = group_options(group)
        return f"{group}= is required: one of {', '.join(opts)}" + (f" (e.g. {group}={opts[0]})" if opts else "")
    m = re.search(r"Could not (?:find|load) '([^']+)'", text)
    if m or isinstance(e, MissingConfigException):
        path = m.group(1) if m else ""
        group, _, option = path.rpartition("/")
        opts = list(getattr(e, "options", None) or (group_options(group) if group else []))
        if group and option:
            o = find_override(overrides, group.rpartition("/")[2])
            o = quote(o) if "=" in o else f"{group}={option}"
            return f"{o}: no such {group} option '{option}'{did_you_mean(option, opts)}" + (
                f"; options: {', '.join(opts)}" if opts else ""
            )
        return first
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        o = find_override(overrides, key)
        close = did_you_mean(key, known_keys(cmd, overrides, key))
        hint = prompt_hint(cmd, o) if not close or re.search(r"\s", o) else ""
        return f"unknown key '{key}' in {quote(o)}{close} (t2iroute {cmd} --help lists the keys){hint}"
    m = re.search(r"Could not delete from config\. '([^']+)' does not exist", text)
    if m:
        key = m.group(1)
        o = find_override(overrides, key)
        return (
            f"{quote(o)}: there is no key '{key}' to delete{did_you_mean(key, known_keys(cmd, overrides, key))}"
            + prompt_hint(cmd, o)
        )
    m = re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    if m:
        key = m.group(1)
        return f"+{key}: {key} exists already; set it with {key}=VALUE"
    m = re.search(r"Ambiguous value for argument '([^']+)'", text)
    if m:
        o = m.group(1)
        k = override_key(o)
        return (
            f"{quote(o)}: a comma makes a sweep; a list is {k}=[...], a text '{k}=\"...\"', "
            "and a sweep needs -m" + prompt_hint(cmd, o)
        )
    if isinstance(e, OmegaConfBaseException):
        key = getattr(e, "full_key", None)
        return f"{key}: {omegaconf_message(e)}" if key else omegaconf_message(e)
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {omegaconf_message(cause)}"
    return first


class hydra_context:
    """Hydra's compose API on the package's configs (GlobalHydra cleared before and after)."""

    def __enter__(self):
        from hydra import initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from t2iroute.paths import CONF_DIR

        GlobalHydra.instance().clear()
        self._ctx = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        from hydra.core.global_hydra import GlobalHydra

        self._ctx.__exit__(*exc)
        GlobalHydra.instance().clear()
        return False


def sweep_combos(overrides: list[str]) -> list[list[str]]:
    """The runs of a multirun as the basic sweeper makes them: every combination of the sweeps
    (``KEY=A,B``, ``range(...)``), in order (none for what cannot be expanded here)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        lists = []
        for o in OverridesParser.create().parse_overrides(overrides):
            if o.is_sweep_override():
                key = o.get_key_element()
                lists.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            else:
                lists.append([o.input_line])
    except Exception:  # noqa: BLE001 -- Hydra reports it itself
        return []
    return [list(c) for c in itertools.product(*lists)]


def precheck(cmd: str, args) -> None:
    """Compose the config of every run the command line asks for and check its values, before
    Hydra creates a run folder or anything loads (bench, train, sweep and every multirun)."""
    from hydra import compose

    runs = sweep_combos(args.overrides) if args.multirun else [args.overrides]
    with hydra_context():
        for ov in runs[:64]:
            check_config(cmd, compose(config_name=cmd, overrides=ov))
