"""Command line: ``t2iroute <command> [prompts] [key=value ...] [-- prompts]``.

Commands: ``bench`` (train on train+val, evaluate on test, write summary.json + curves.png),
``train`` (fit, calibrate lambda, save a router artifact), ``sweep`` (generate and score),
``route`` and ``generate`` (use an artifact), ``app`` (the Streamlit app). Every command but
``app`` is a Hydra app whose config is ``conf/<command>.yaml`` inside the package; add your own
config folder with ``hydra.searchpath=[file:///path/to/conf]``.

The promises: bad input exits with status 2 and ONE line on stderr that names the input (a key,
a value, a prompt, a file), and it is found before any model loads; stdout carries only the
command's JSON result (one compact JSON object per line under ``-m``); stderr shows warnings and
errors only unless ``verbose=true``.

Prompts and settings: an argument ``KEY=VALUE`` whose KEY (letters, digits, ``_ . - / @``) runs
from its first character to its first ``=``, and ``~KEY``, ``+KEY=VALUE``, are settings; every
other argument of ``route`` / ``generate`` is a prompt, and everything after ``--`` is a prompt.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

COMMANDS = {
    "bench": "run a benchmark: router vs single backends vs oracle on a held-out split",
    "train": "train a router and save it as an artifact folder",
    "sweep": "generate prompts x backends x seeds, score, append rows to OUT/quality.parquet",
    "route": 'route prompts with a router artifact: t2iroute route "a red car" artifact=DIR',
    "generate": 'route and generate: t2iroute generate "a red car" artifact=DIR out=img.png '
                '(several prompts or prompts_file=: out_dir=DIR)',
    "serve": "an OpenAI-compatible image endpoint that routes every request: t2iroute serve artifact=DIR port=8000",
    "app": "the Streamlit app: t2iroute app [artifact=DIR] [bench=DIR] [port=8501]",
}
_EXAMPLES = {
    "bench": "t2iroute bench data=agiqa3k metric=mos_align seed=0 out_dir=outputs/agiqa",
    "train": "t2iroute train data=tifa160 router.budget=2.5 out_dir=outputs/tifa   # -> outputs/tifa/router",
    "sweep": "t2iroute sweep backends=[tiny_10,tiny_20] prompts=partiprompts limit=50 seeds=[0,1] out_dir=OUT",
    "route": 't2iroute route "a red car" "two dogs" artifact=DIR lam=0.1  |  ... artifact=DIR -- "style=oil paint"',
    "generate": 't2iroute generate "a red car" artifact=DIR out=car.png seed=0 scorer=clip_tiny',
    "serve": "t2iroute serve artifact=outputs/demo/testbed/router port=8000 api_keys_env=T2IROUTE_API_KEYS",
}
#: ``t2iroute app``'s keys (it is no Hydra app): default, description
_APP_KEYS = {
    "artifact": (None, "a router artifact folder for the Route page (default: make demo's outputs/demo/testbed/router)"),
    "bench": (None, "a t2iroute bench folder for the Benchmark page (default: outputs/demo/testbed-bench)"),
    "port": ("8501", "the port to serve on"),
    "address": ("127.0.0.1", "the address to serve on (loopback by default)"),
}

log = logging.getLogger("t2iroute")

SEED_MAX = 2 ** 63 - 1  # torch.Generator.manual_seed takes 64 bits; the router keeps seeds in [0, 2**63)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    from t2iroute import paths

    if not OmegaConf.has_resolver("t2i.bundled"):
        OmegaConf.register_new_resolver("t2i.bundled", paths.bundled)
        OmegaConf.register_new_resolver("t2i.shared", paths.shared)
    if not OmegaConf.has_resolver("t2i.log_level"):
        # the console's log level: warnings and errors only unless verbose=true (conf/hydra/default.yaml)
        OmegaConf.register_new_resolver("t2i.log_level", lambda v: "INFO" if _truthy(v) else "WARNING")


def _truthy(v) -> bool:
    return v is True or str(v).strip().lower() in ("true", "1", "yes", "on")


# -- help ----------------------------------------------------------------------------------------

def _usage() -> str:
    lines = ["usage: t2iroute <command> [PROMPT ...] [KEY=VALUE ...] [-- PROMPT ...]", "", "commands:"]
    lines += [f"  {k:9s} {v}" for k, v in COMMANDS.items()]
    lines += ["",
              "t2iroute <command> --help lists the command's keys with their defaults; t2iroute --version",
              "prints the version; python -m t2iroute is the same command.",
              "",
              "e.g. t2iroute bench data=agiqa3k metric=mos_align seed=0 out_dir=outputs/agiqa",
              '     t2iroute route "a red circle" artifact=outputs/demo/testbed/router lam=0.1   (make demo makes it)',
              "     t2iroute bench data=agiqa3k --cfg job     (print the composed config)",
              "     t2iroute bench data=agiqa3k -m seed=0,1,2  (a multirun: one JSON line per run)",
              "",
              _PROMPT_RULE,
              "Bad input exits with status 2 and one line on stderr; stdout carries only the JSON result."]
    return "\n".join(lines)


_PROMPT_RULE = ("Prompts: an argument KEY=VALUE whose KEY (letters, digits, _ . - / @) runs from its start to its\n"
                "first '=' is a setting, as are ~KEY and +KEY=VALUE; any other argument of route/generate is a\n"
                "prompt, and every argument after -- is a prompt:\n"
                "  t2iroute route artifact=DIR -- \"style=oil painting\" \"--no-text logo\"")


def _split_comment(text: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a '#' inside quotes is part of the value."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1:].strip()
    return text.strip(), ""


_YAML_KEY = re.compile(r"^(\s*)(- )?([A-Za-z_][\w.@-]*):(?:\s+(.*))?$")


def config_keys(path) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """The documented keys of an entry config, read from its lines: (groups, keys), each a list of
    (dotted key, default as written, description). The description is the key's ``# comment``
    (with the comment lines right below it that are indented deeper, joined into one line)."""
    groups: list[list[str]] = []
    keys: list[list[str]] = []
    stack: list[tuple[int, str]] = []
    in_defaults = False
    last: tuple[int, list[str]] | None = None  # (indent, entry) that a continuation comment extends
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        body = line.strip()
        if not body:
            continue
        indent = len(line) - len(line.lstrip())
        if body.startswith("#"):
            if last is not None and indent > last[0] and last[1][2]:
                last[1][2] += " " + body.lstrip("#").strip()
            else:
                last = None
            continue
        m = _YAML_KEY.match(line)
        if m is None:
            last = None
            continue
        _, dash, name, rest = m.groups()
        value, comment = _split_comment(rest or "")
        if indent == 0 and not dash:
            in_defaults = name == "defaults"
            stack = []
            if in_defaults:
                last = None
                continue
        if in_defaults:
            if dash and name not in ("hydra", "_self_", "override"):
                entry = [name, value, comment]
                groups.append(entry)
                last = (indent, entry)
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [name])
        entry = [key, value, comment]
        if value == "":
            stack.append((indent, name))
            entry[1] = None  # a section: its keys follow
        keys.append(entry)
        last = (indent, entry)
    return [tuple(g) for g in groups], [tuple(k) for k in keys]


def _group_options(group: str) -> list[str]:
    from t2iroute.paths import CONF_DIR

    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _row(left: str, desc: str, width: int = 30) -> str:
    left = f"  {left}"
    if not desc:
        return left
    return f"{left:{width}s} {desc}" if len(left) < width else f"{left}  {desc}"


def _command_help(cmd: str) -> str:
    from t2iroute.paths import CONF_DIR

    if cmd == "app":
        lines = ["usage: t2iroute app [KEY=VALUE ...]", COMMANDS["app"], "", "keys:"]
        lines += [_row(f"{k}={d if d is not None else 'null'}", desc) for k, (d, desc) in _APP_KEYS.items()]
        return "\n".join(lines)
    groups, keys = config_keys(Path(CONF_DIR) / f"{cmd}.yaml")
    prompts = " [PROMPT ...]" if cmd in _TAKES_PROMPTS else ""
    tail = " [-- PROMPT ...]" if cmd in _TAKES_PROMPTS else ""
    lines = [f"usage: t2iroute {cmd}{prompts} [KEY=VALUE ...]{tail}", COMMANDS[cmd], "", f"e.g. {_EXAMPLES[cmd]}", ""]
    if groups:
        lines.append("config groups (GROUP=OPTION; a list group takes [A,B]; an option's own keys: GROUP.KEY=VALUE):")
        for name, default, desc in groups:
            opts = ", ".join(_group_options(name))
            lines.append(_row(f"{name}={default}", f"{desc + ' ' if desc else ''}(options: {opts})"))
        lines.append("")
    lines.append("keys (KEY=DEFAULT):")
    for key, default, desc in keys:
        if default is not None or desc:  # a section shows when it says something of its keys
            lines.append(_row(f"{key}.*" if default is None else f"{key}={default}", desc))
    lines += ["",
              "flags: -m / --multirun (sweep KEY=A,B: one run and one JSON line per combination),",
              "       --cfg job (print the composed config), --hydra-help,",
              "       hydra.searchpath=[file:///DIR] (a config folder of your own)"]
    if cmd in _TAKES_PROMPTS:
        lines += ["", _PROMPT_RULE]
    return "\n".join(lines)


# -- checks of the composed config (before anything loads) --------------------------------------

def _show(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_show(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_show(x)}" for k, x in v.items()) + "}"
    text = str(v)
    return text if len(text) <= 240 else text[:237] + "..."  # whole paths; only absurd values are cut


def _bad(key: str, value, need: str):
    from t2iroute.errors import ConfigError

    return ConfigError(f"{key}={_show(value)}: {need}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(lo: int, hi: int | None = None, *, optional: bool = False):
    rng = f"in [{lo}, 2**63-1]" if hi == SEED_MAX else (f">= {lo}" if hi is None else f"in [{lo}, {hi}]")

    def check(key, v):
        if v is None and optional:
            return
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            raise _bad(key, v, f"an integer {rng} is needed" + (" (or null)" if optional else ""))
    return check


def _num(*, optional: bool = True, minimum: float | None = None):
    def check(key, v):
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (minimum is not None and v < minimum):
            bound = f" >= {minimum:g}" if minimum is not None else ""
            raise _bad(key, v, f"a finite number{bound} is needed")
    return check


def _bool(key, v):
    if not isinstance(v, bool):
        raise _bad(key, v, "true or false is needed")


def _text(*, optional: bool = False):
    def check(key, v):
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or not str(v).strip():
            raise _bad(key, v, "a non-empty text or path is needed" + (" (or null)" if optional else ""))
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise _bad(key, v.encode("utf-8", "backslashreplace").decode(), "not valid text "
                           "(bytes that are not UTF-8?)") from None
    return check


def _list_of(item, *, min_len: int = 1, length: int | None = None):
    def check(key, v):
        if not isinstance(v, list) or len(v) < min_len or (length is not None and len(v) != length):
            n = f"{length}" if length is not None else f"at least {min_len}"
            raise _bad(key, v, f"a list of {n} items is needed, e.g. {key}=[0,1]")
        for i, x in enumerate(v):
            try:
                item(f"{key}[{i}]", x)
            except Exception as e:  # noqa: BLE001 -- name the whole list and the item
                raise _bad(key, v, str(e)) from None
    return check


def _choice(*options):
    def check(key, v):
        if v not in options or isinstance(v, bool) != any(isinstance(o, bool) and o == v for o in options):
            raise _bad(key, v, "one of " + ", ".join(_show(o) for o in options) + " is needed")
    return check


def _out_folder(key, v):
    """A folder the command will create (or fill): refused early if it cannot be one."""
    _text()(key, v)
    p = Path(os.path.abspath(str(v)))
    if p.exists() and not p.is_dir():
        raise _bad(key, v, "a file is there, not a folder")
    anc = p
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc != p and not anc.is_dir():
        raise _bad(key, v, f"{anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise _bad(key, v, f"cannot write in {anc} (permission denied)")
    _probe(key, v, anc)


def _probe(key, v, folder: Path) -> None:
    """Create and remove a temp file in ``folder`` (where the first new folder or file goes): what
    permissions do not tell (a read-only or special file system, root's rights)."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".t2iroute-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _bad(key, v, f"cannot write in {folder} ({e.strerror or e})") from None


def _image_path(key, v):
    """generate's out=: a writable image file path, checked (and probed) before any model loads."""
    _text()(key, v)
    out = Path(os.path.abspath(str(v)))
    if out.is_dir():
        raise _bad(key, v, "a folder is there, not an image file")
    anc = out.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise _bad(key, v, f"{anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise _bad(key, v, f"cannot write in {anc} (permission denied)")
    _probe(key, v, anc)


def _positive(key, v):
    """An optional number > 0 (a deadline, a timeout)."""
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise _bad(key, v, "a finite number > 0 is needed (or null)")


def _url(*, scheme_optional: bool = False):
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


def _env_var_with_key(key, v):
    """The name of an environment variable that holds a key."""
    if v is None:
        return
    _text()(key, v)
    if not os.environ.get(str(v), "").strip():
        raise _bad(key, v, "that environment variable is not set or holds no key")


_SEED = _int(0, SEED_MAX)
_COMMON = {"verbose": _bool, "threads": _int(0, 1024, optional=True)}
#: the LLM featurizer's settings of the loading user (route, generate, serve)
_LLM = {"llm.base_url": _url(), "llm.host": _url(scheme_optional=True), "llm.api_key_env": _env_var_with_key,
        "llm.cache_path": _text(optional=True), "llm.deadline_s": _positive, "llm.timeout": _positive,
        "llm.retries": _int(0, 1000, optional=True), "llm.backoff_s": _num(minimum=0),
        "llm.concurrency": _int(1, 64, optional=True)}
_TRAINING = {"seed": _SEED, "metric": _text(), "anchor": _choice(True, False, "auto"),
             "split.fractions": _list_of(_num(optional=False, minimum=0), length=3),
             "out_dir": _out_folder}
_ROUTING = {"artifact": _text(optional=True), "artifact_sha256": _text(optional=True),
            "lam": _num(minimum=0), "budget": _num(), "quality_floor": _num(), "max_cost": _num(), **_LLM}
CHECKS = {
    "bench": {**_COMMON, **_TRAINING, "calibration.budgets": _list_of(_num(optional=False, minimum=0), min_len=0),
              "throughput.enabled": _bool, "throughput.n_batch": _int(1), "throughput.n_single": _int(1)},
    "train": {**_COMMON, **_TRAINING},
    "sweep": {**_COMMON, "prompts": _text(), "limit": _int(1, optional=True), "seeds": _list_of(_SEED),
              "shard": _int(0), "num_shards": _int(1), "chunk_size": _int(1), "keep_images": _bool,
              "out_dir": _out_folder, "launcher": _choice("local", "ray"), "ray.address": _text(),
              "ray.num_cpus": _int(1, optional=True), "ray.workers_per_model": _int(1),
              "ray.num_cpus_per_worker": _num(optional=False, minimum=0), "ray.num_gpus_per_worker": _num(minimum=0),
              "ray.max_retries": _int(0), "ray.max_in_flight": _int(1),
              "ray.object_store_memory": _int(1 << 20, optional=True)},
    "route": {**_COMMON, **_ROUTING, "prompts_file": _text(optional=True)},
    "generate": {**_COMMON, **_ROUTING, "out": _image_path, "seed": _SEED, "backend": _text(optional=True),
                 "fallback": _bool, "prompts_file": _text(optional=True), "chunk_size": _int(1),
                 "progress": _choice("auto", True, False), "out_dir": lambda k, v: v is None or _out_folder(k, v)},
    "serve": {**_COMMON, **_LLM, "artifact": _text(optional=True), "artifact_sha256": _text(optional=True),
              "host": _text(), "port": _int(1, 65535), "api_keys_env": _text(optional=True),
              "image_dir": lambda k, v: v is None or _out_folder(k, v), "max_queue": _int(1), "max_n": _int(1, 128),
              "max_route_prompts": _int(1, 100000), "warmup": _bool,
              "engine": _choice("process", "ray"), "ray.address": _text(), "ray.num_cpus": _int(1, optional=True),
              "ray.router_replicas": _int(1), "ray.router_num_cpus": _num(optional=False, minimum=0),
              "ray.num_cpus_per_replica": _num(optional=False, minimum=0),
              "ray.num_gpus_per_replica": _num(minimum=0), "ray.min_replicas": _int(1),
              "ray.max_replicas": _int(1), "ray.target_ongoing_requests": _num(optional=False, minimum=0),
              "ray.max_ongoing_requests": _int(1), "ray.retry_window_s": _num(optional=False, minimum=0),
              "ray.timeout_s": _num(optional=False, minimum=0), "ray.health_check_period_s": _num(optional=False, minimum=0),
              "ray.object_store_memory": _int(1 << 20, optional=True)},
}


def _check_config(cmd: str, cfg) -> None:
    """Every value the command reads itself, named with its key; ``???`` values that are still
    missing; the folder it writes. Each error is a ConfigError naming KEY=VALUE."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from t2iroute.errors import ConfigError

    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        k = missing[0]
        raise ConfigError(f"{k} is required ({k}=??? in the config): give {k}=VALUE")
    for key, check in CHECKS[cmd].items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}: {_omegaconf_message(e)}") from None
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if value is None and OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue  # a key a user config of their own does not have
        check(key, value)
    if cmd == "sweep" and not int(cfg.shard) < int(cfg.num_shards):
        raise ConfigError(f"shard={cfg.shard} num_shards={cfg.num_shards}: need 0 <= shard < num_shards")
    pol = cfg.get("policy") if cmd in _TAKES_PROMPTS else None
    if pol is not None and not OmegaConf.is_dict(pol) and not isinstance(pol, str):  # text: _policy_kwargs
        raise ConfigError(f"policy={_show(pol)}: give a mapping, e.g. 'policy={{type: lam, lam: 0.1}}', "
                          "or the text form, e.g. 'policy=\"budget=0.3\"'")


def _omegaconf_message(e) -> str:
    msg = getattr(e, "msg", None) or str(e)
    return " ".join(str(msg).split())


# -- the commands ---------------------------------------------------------------------------------

_OUTPUT = {"compact": False}  # a multirun prints JSON Lines: one compact object per run


def _emit(obj, *, compact: bool = False) -> None:
    compact = compact or _OUTPUT["compact"]
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=2)
    print(text, flush=True)


def _save_config(cfg) -> None:
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


def _bench(cfg) -> None:
    from t2iroute.training.train import run_bench

    s = run_bench(cfg)
    s.pop("curves", None)
    r = s["router"]
    brief = {
        "data": s["data"], "metric": s["metric"], "seed": s["seed"],
        "n_train": s["n_train"], "n_test": s["n_test"],
        "best_single": s["best_single"],
        "oracle_cost_saved_pct": s["oracle"]["cost_saved_pct"],
        "router": {k: r[k] for k in ("cost_saved_pct", "quality_gain_at_equal_cost",
                                     "cost_to_match_best_single", "aiq")},
        "cost_unit": s.get("cost_unit", "s"),
        "predictor": (s.get("predictor_selection") or {}).get("chosen", s["predictor"].get("type")),
        "beats_best_single_cv": (s.get("predictor_selection") or {}).get("beats_best_single_cv"),
        "route_throughput_prompts_per_s": s.get("route_throughput_prompts_per_s"),
        "route_single_ms_p50": s.get("route_single_ms_p50"),
        "out_dir": str(cfg.out_dir),
    }
    _emit(brief)


def _train(cfg) -> None:
    from t2iroute.training.train import run_train

    router = run_train(cfg)
    metrics = dict(router.manifest.get("metrics", {}))
    sel = metrics.pop("predictor_selection", None)
    out = {"artifact": os.path.join(str(cfg.out_dir), "router"), "policy": router.policy.describe(),
           "cost_unit": router.cost_unit, "metrics": metrics}
    if sel is not None:
        out["predictor"] = {k: sel[k] for k in ("chosen", "shrink", "beats_best_single_cv")}
    _emit(out)


def _sweep(cfg) -> None:
    from omegaconf import OmegaConf

    from t2iroute.backends import build_backends
    from t2iroute.errors import ConfigError
    from t2iroute.training.prompts import read_prompts
    from t2iroute.training.sweep import run_sweep

    specs = OmegaConf.to_container(cfg.backends, resolve=True) if cfg.get("backends") else {}
    if not specs:
        raise ConfigError("backends=[]: no backends selected (backends=[tiny_10,tiny_20] for example)")
    prompts = read_prompts(cfg.prompts, limit=cfg.get("limit"))  # a missing file fails before any model loads
    seeds = [int(s) for s in cfg.seeds]
    scorer_spec = OmegaConf.to_container(cfg.scorer, resolve=True)
    extra = {}
    if cfg.get("launcher", "local") == "ray":
        from t2iroute.distributed import RayOptions, run_sweep_ray

        opts = RayOptions.from_mapping(OmegaConf.to_container(cfg.ray, resolve=True) if cfg.get("ray") else {})
        res = run_sweep_ray(specs, prompts, seeds, scorer_spec, cfg.out_dir, shard=int(cfg.shard),
                            num_shards=int(cfg.num_shards), chunk_size=int(cfg.chunk_size),
                            keep_images=bool(cfg.keep_images), ray_options=opts)
        extra = {"launcher": "ray", "retried": res.n_retried, "workers_replaced": res.n_workers_replaced}
    else:
        scorer = _cli_scorer(cfg)  # loaded before any image is made: one that cannot load stops here
        res = run_sweep(build_backends(specs), prompts, seeds, scorer, cfg.out_dir,
                        shard=int(cfg.shard), num_shards=int(cfg.num_shards), chunk_size=int(cfg.chunk_size),
                        keep_images=bool(cfg.keep_images))
    _emit({"out": str(res.out_dir / "quality.parquet"), "items": res.n_items,
           "skipped_finished": res.n_skipped_done, "generated": res.n_generated, "failed": res.n_failed, **extra},
          compact=True)  # one line, as sweeps always printed it


def _cli_router(cfg):
    from omegaconf import OmegaConf

    from t2iroute.router.core import Router

    _require_artifact(cfg)
    specs = OmegaConf.to_container(cfg.backends, resolve=True) if cfg.get("backends") else None
    # the user's own endpoints and cache folders (an artifact never sets them)
    local = {k: {kk: vv for kk, vv in OmegaConf.to_container(cfg[k], resolve=True).items() if vv is not None}
             for k in ("llm", "embedding") if cfg.get(k)}
    router = Router.load(str(cfg.artifact), backends=specs, local=local,
                         expected_sha256=cfg.get("artifact_sha256"))
    router.warmup()  # model loading stays out of the decision's stage timings
    return router


def _require_artifact(cfg) -> None:
    from t2iroute.errors import ConfigError

    if not cfg.get("artifact"):
        raise ConfigError("artifact=DIR is required (a router folder written by t2iroute train)")


def _cli_prompts(cfg, prompts: list[str]) -> list[str]:
    """The command line's prompts and prompts_file's, checked (empty, not text, too long) before
    any model loads."""
    from t2iroute.errors import ConfigError
    from t2iroute.router.core import check_prompts

    items = list(prompts)
    src = cfg.get("prompts_file")
    if src == "-":
        items += [ln.strip() for ln in sys.stdin.read().splitlines() if ln.strip()]
    elif src:
        from t2iroute.training.prompts import read_prompts

        items += read_prompts(str(src)).prompt.tolist()
    if not items:
        raise ConfigError('no prompt given: t2iroute route "a red car" artifact=DIR (or prompts_file=FILE)')
    check_prompts(items)
    return items


def _policy_kwargs(cfg) -> dict:
    """lam= | budget= | quality_floor= | max_cost= | policy={type: ...}: at most one, built once
    here so that a bad one is refused before the artifact loads."""
    from omegaconf import OmegaConf

    from t2iroute.errors import ConfigError
    from t2iroute.router.policy import POLICY_KEYWORDS, parse_policy, policy_from_keywords

    kw = {k: cfg.get(k) for k in POLICY_KEYWORDS if cfg.get(k) is not None}
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{k}={v}: a number is needed")
    if cfg.get("policy") is not None:
        pol = cfg.policy
        pol = OmegaConf.to_container(pol, resolve=True) if OmegaConf.is_config(pol) else pol
        if isinstance(pol, str):  # the text form, as over HTTP: policy='budget=0.3'
            try:
                (key, pol), = parse_policy(pol).items()
            except ValueError as e:
                raise ConfigError(f"policy={_show(cfg.policy)}: {str(e).partition(': ')[2] or e}") from None
            if key != "policy":
                if key in kw:
                    raise ConfigError(f"give at most one of lam=, budget=, quality_floor=, max_cost=, policy= "
                                      f"(got {key}= twice)")
                kw[key] = pol
                pol = None
        if pol is not None and not isinstance(pol, dict):
            raise ConfigError(f"policy={pol}: give a mapping, e.g. 'policy={{type: lam, lam: 0.1}}'")
        if pol is not None:
            kw["policy"] = pol
    if len(kw) > 1:
        raise ConfigError(f"give at most one of lam=, budget=, quality_floor=, max_cost=, policy= (got {sorted(kw)})")
    for k, v in kw.items():
        try:
            policy_from_keywords(**{k: v})
        except (ValueError, TypeError) as e:
            msg = str(e)
            raise ConfigError(msg if k in msg else f"{k}={_show(v)}: {msg}") from None
    return kw


def _route(cfg, prompts: list[str]) -> None:
    _require_artifact(cfg)
    items = _cli_prompts(cfg, prompts)
    policy = _policy_kwargs(cfg)
    router = _cli_router(cfg)
    one = len(items) == 1 and not cfg.get("prompts_file")
    res = router.route(items[0] if one else items, **policy)
    unit = router.cost_unit
    _emit({**res.to_dict(), "cost_unit": unit} if one else [{**d.to_dict(), "cost_unit": unit} for d in res])


def _image_format(out: str) -> str:
    from PIL import Image

    from t2iroute.errors import ConfigError

    ext = os.path.splitext(out)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ConfigError(f"out={out}: unknown image type '{ext}' (use .png, .jpg or .webp)")
    return fmt


def _write_image(image, out: str, fmt: str, key: str = "out") -> None:
    """:func:`t2iroute.router.batch.write_image`, an OSError named by the key that gave ``out``."""
    from t2iroute.errors import ConfigError
    from t2iroute.router.batch import write_image

    try:
        write_image(image, out, fmt)
    except OSError as e:
        raise ConfigError(f"{key}={out}: cannot write the image ({e.strerror or e})") from None


def _generate(cfg, prompts: list[str]) -> None:
    if len(prompts) != 1 or cfg.get("prompts_file"):
        return _generate_many(cfg, prompts)
    out = str(cfg.out)
    fmt = _image_format(out)
    _require_artifact(cfg)
    _cli_prompts(cfg, prompts)
    policy = _policy_kwargs(cfg)
    t0 = time.perf_counter()
    scorer = _cli_scorer(cfg)  # loaded before any image is made: one that cannot load stops here
    t1 = time.perf_counter()
    router = _cli_router(cfg)
    load_s = time.perf_counter() - t1
    res = router.generate(prompts[0], seed=int(cfg.seed), backend=cfg.get("backend"),
                          fallback=bool(cfg.fallback), **policy)
    result = res.to_dict()
    result["cost_unit"] = router.cost_unit
    result["router_load_s"] = load_s  # artifact + featurizer models (the pipeline's load is in wall_s only)
    _write_image(res.image, out, fmt)  # before scoring: a scorer that fails now loses no image
    if scorer is not None:
        from t2iroute.router.batch import score_one

        result.update(score_one(scorer, res.image, prompts[0]))
    result["out"] = out
    result["wall_s"] = time.perf_counter() - t0  # the whole command: loads, routing, image, scoring, writing
    _emit(result)


def _cli_scorer(cfg):
    """generate's / sweep's ``scorer=``, built and loaded now (None without one): a scorer that
    cannot load (CLIP weights not on this machine and no model hub) is a ConfigError naming it,
    raised before any image is generated."""
    from omegaconf import OmegaConf

    from t2iroute.scoring import load_scorer

    if not cfg.get("scorer"):
        return None
    name = None
    try:
        from hydra.core.hydra_config import HydraConfig

        name = HydraConfig.get().runtime.choices.get("scorer")
    except Exception:  # noqa: BLE001 -- composed without Hydra's run context: the spec's type names it
        pass
    return load_scorer(OmegaConf.to_container(cfg.scorer, resolve=True), name)


def _generate_many(cfg, prompts: list[str]) -> None:
    """Several prompts: :class:`t2iroute.router.batch.FolderRun` into out_dir (resumable)."""
    from t2iroute.errors import ConfigError, GenerationError
    from t2iroute.router.batch import RECORDS, FolderRun

    if not cfg.get("out_dir"):
        raise ConfigError("out_dir=DIR is needed for several prompts (or prompts_file=): the images go to "
                          "DIR/0000.png, DIR/0001.png ... and their records to DIR/" + RECORDS)
    _require_artifact(cfg)
    items = _cli_prompts(cfg, prompts)
    policy = _policy_kwargs(cfg)
    run = FolderRun(str(cfg.out_dir), items, int(cfg.seed))  # refuses another run's folder before loading
    t0 = time.perf_counter()
    scorer = _cli_scorer(cfg) if run.todo else None  # loaded before any image is made
    t1 = time.perf_counter()
    router = _cli_router(cfg) if run.todo else None
    load_s = time.perf_counter() - t1
    summary = run.run(router, policy=policy, backend=cfg.get("backend"), fallback=bool(cfg.fallback), scorer=scorer,
                      chunk_size=int(cfg.chunk_size),
                      progress=sys.stderr.isatty() if cfg.progress == "auto" else bool(cfg.progress),
                      write=lambda image, out, fmt: _write_image(image, out, fmt, key="out_dir"))
    summary = {**summary, "router_load_s": load_s, "wall_s": time.perf_counter() - t0}
    order = ["out_dir", "records", "prompts", "generated", "skipped_finished", "failed", "by_backend",
             "router_load_s", "generate_s", "images_per_s", "wall_s"]
    _emit({k: summary[k] for k in order})
    if run.failures:
        raise GenerationError(f"{summary['failed']} of {len(items)} images failed (the others are in "
                              f"{run.out_dir}): {run.failures[0]}")


def _serve(cfg) -> None:
    """Serve the artifact's router until SIGINT/SIGTERM (uvicorn finishes the requests in flight)."""
    from t2iroute.errors import ConfigError

    _require_artifact(cfg)
    keys = None
    if cfg.get("api_keys_env"):
        raw = os.environ.get(str(cfg.api_keys_env), "")
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        if not keys:
            raise ConfigError(f"api_keys_env={cfg.api_keys_env}: that environment variable holds no key")
    try:
        import uvicorn

        from t2iroute.serve import create_app
    except ImportError as e:
        raise ConfigError(f"serve needs FastAPI and uvicorn: pip install 't2iroute[serve]' ({e})") from None
    app_kwargs = {"api_keys": keys, "image_dir": cfg.get("image_dir"), "max_queue": int(cfg.max_queue),
                  "max_n": int(cfg.max_n), "max_route_prompts": int(cfg.max_route_prompts)}
    if cfg.get("engine", "process") == "ray":
        return _serve_ray(cfg, app_kwargs)
    router = _cli_router(cfg)
    warmup = bool(cfg.get("warmup", True))  # /ready: 503 until every backend has loaded (a second stdout line)
    app = create_app(router, **app_kwargs, warmup=warmup,
                     on_ready=lambda info: print(json.dumps({"ready": True, **info}), flush=True))
    print(json.dumps({"serving": f"http://{cfg.host}:{cfg.port}/v1", "backends": router.backend_names,
                      "auth": bool(keys), "warmup": warmup}), flush=True)
    import signal

    # uvicorn finishes the requests in flight on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was there before it: a no-op one makes a graceful stop exit with status 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level="warning", timeout_graceful_shutdown=60)


def _serve_ray(cfg, app_kwargs) -> None:
    """engine=ray: deploy on Ray Serve, answer until SIGINT/SIGTERM, then tear the deployments down."""
    import signal
    import threading

    from omegaconf import OmegaConf

    from t2iroute.distributed import serve as ray_serve
    from t2iroute.router.core import Router

    opts = ray_serve.RayServeOptions.from_mapping(OmegaConf.to_container(cfg.ray, resolve=True)
                                                  if cfg.get("ray") else {})
    specs = OmegaConf.to_container(cfg.backends, resolve=True) if cfg.get("backends") else {}
    local = {k: {kk: vv for kk, vv in OmegaConf.to_container(cfg[k], resolve=True).items() if vv is not None}
             for k in ("llm", "embedding") if cfg.get(k)}
    # load it here first: a bad artifact or backend config fails before anything is deployed
    router = Router.load(str(cfg.artifact), backends=specs or None, local=local,
                         expected_sha256=cfg.get("artifact_sha256"))
    specs = {**router.backend_specs, **specs}
    started = ray_serve.start(os.path.abspath(str(cfg.artifact)), specs, opts, host=str(cfg.host),
                              port=int(cfg.port), local=local, app_kwargs=app_kwargs,
                              expected_sha256=cfg.get("artifact_sha256"), warmup=bool(cfg.get("warmup", True)))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps({"serving": f"http://{cfg.host}:{cfg.port}/v1", "backends": router.backend_names,
                      "auth": bool(app_kwargs["api_keys"]), "engine": "ray",
                      "models": ray_serve.model_deployments()}), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        import ray
        from ray import serve

        # replicas finish the requests they hold; a signal sent to the whole process group (Ctrl-C,
        # `timeout`) has also stopped Ray's own processes here, and then shutting down can hang
        if not _within(serve.shutdown, 120) or (started and not _within(ray.shutdown, 30)):
            log.warning("serve: Ray did not shut down in time (its processes were signalled too); exiting")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def _within(fn, seconds: float) -> bool:
    """Run ``fn`` in a daemon thread; False if it has not returned after ``seconds``."""
    import threading

    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


_TASKS = {"bench": _bench, "train": _train, "sweep": _sweep, "route": _route, "generate": _generate,
          "serve": _serve}
_TAKES_PROMPTS = ("route", "generate")
_ARTIFACT_COMMANDS = ("route", "generate", "serve")  # Hydra's logging off: the command logs to stderr itself


# -- logging: warnings and errors on stderr, INFO too with verbose=true ---------------------------

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


def _quiet_console(verbose: bool, *, own_handler: bool) -> None:
    from t2iroute.quiet import quiet_libraries

    quiet_libraries(verbose)  # diffusers' / transformers' bars and warnings (Ray workers get the flag too)
    root = logging.getLogger()
    if own_handler and not root.handlers:  # route, generate: no Hydra logging; in-process callers keep theirs
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
    for h in root.handlers:  # the console: a stream handler on stderr (not a log file, not a test's capture)
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.__stderr__) \
                and not any(isinstance(f, _ConsoleFilter) for f in h.filters):
            h.addFilter(_ConsoleFilter())


# -- the command line -------------------------------------------------------------------------------

# a Hydra override: key=value, +key=value, ++key=value, ~key (and ~key=value)
_OVERRIDE = re.compile(r"^(~|\+{1,2})?[A-Za-z_][\w.@/-]*(=|$)")
_HYDRA_FLAGS_WITH_VALUE = {"--cfg": ("job", "hydra", "all"), "-c": ("job", "hydra", "all"), "--package": None,
                           "-p": None, "--config-path": None, "-cp": None, "--config-name": None, "-cn": None,
                           "--config-dir": None, "-cd": None, "--experimental-rerun": None}
_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
_HYDRA_FLAGS = {"--hydra-help", "--version", "--resolve", "--run", "-r", "--multirun", "-m",
                "--shell-completion", "-sc", "--info", "-i"} | set(_HYDRA_FLAGS_WITH_VALUE)


def _is_override(a: str) -> bool:
    return bool(_OVERRIDE.match(a)) and ("=" in a or a.startswith("~"))


class _Args:
    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.rest: list[str] = []  # Hydra's argv: flags and overrides, in the order given
        self.overrides: list[str] = []
        self.flags: list[str] = []  # Hydra's flags with their values (they go before the overrides)
        self.help = False
        self.multirun = False
        self.show = False  # --cfg, --info, --hydra-help, --version, --shell-completion: nothing runs
        self.custom_config = False  # -cp / -cn / -cd


def _parse_args(cmd: str, argv: list[str]) -> _Args:
    """Split the command line into prompts, Hydra flags and overrides (see the module's doc)."""
    from t2iroute.errors import ConfigError

    takes_prompts = cmd in _TAKES_PROMPTS
    args, i = _Args(), 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            if not takes_prompts:
                raise ConfigError(f"'--': {cmd} takes no prompts, only KEY=VALUE settings")
            args.prompts += argv[i + 1:]
            break
        if a in ("-h", "--help"):
            args.help = True
        elif a.startswith("-") and a != "-":
            flag, eq, val = a.partition("=")
            if flag not in _HYDRA_FLAGS or (eq and not flag.startswith("--")):
                similar = difflib.get_close_matches(flag, sorted(_HYDRA_FLAGS | {"--help"}), n=1, cutoff=0.75)
                more = f" (did you mean {similar[0]}?)" if similar and " " not in a else ""
                raise ConfigError(f"unknown option {_quote(a)}{more}" + _prompt_hint(cmd, a))
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
                    raise ConfigError(f"{flag} needs a value" + (f": {', '.join(_HYDRA_FLAGS_WITH_VALUE[flag])}"
                                                                if _HYDRA_FLAGS_WITH_VALUE[flag] else ""))
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
            raise ConfigError(f"unexpected argument {_quote(a)}: {cmd} takes KEY=VALUE settings "
                              f"(t2iroute {cmd} --help lists them)")
        i += 1
    return args


def _quote(a: str) -> str:
    a = a.encode("utf-8", "backslashreplace").decode("utf-8")
    return "'" + a.replace("'", "'\\''") + "'" if a else "''"


def _split_prompts(argv: list[str]) -> tuple[list[str], list[str]]:
    """(prompts, Hydra flags and overrides) of ``route`` / ``generate``'s arguments."""
    args = _parse_args("route", argv)
    return args.prompts, args.rest


# -- Hydra's errors, each as one line naming the input ----------------------------------------------

def _prompt_hint(cmd: str, token: str) -> str:
    if cmd not in _TAKES_PROMPTS:
        return ""
    return f"; a prompt? put prompts after --: t2iroute {cmd} ... -- {_quote(token)}"


def _flat_keys(node, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            out.append(key)
            out += _flat_keys(v, key + ".")
    return out


def _known_keys(cmd: str, overrides: list[str], drop: str) -> list[str]:
    """The keys of the command's config composed without the offending override (for a 'did you
    mean'); the entry config's documented keys if that fails too."""
    from hydra import compose
    from omegaconf import OmegaConf

    rest = [o for o in overrides if _override_key(o) != drop and "," not in o.partition("=")[2]]
    try:
        with _hydra_context():
            cfg = compose(config_name=cmd, overrides=rest, return_hydra_config=drop.startswith("hydra."))
        keys = _flat_keys(OmegaConf.to_container(cfg, resolve=False))
    except Exception:  # noqa: BLE001 -- only a suggestion
        from t2iroute.paths import CONF_DIR

        groups, entries = config_keys(Path(CONF_DIR) / f"{cmd}.yaml")
        keys = [g[0] for g in groups] + [k[0] for k in entries]
    return keys if drop.startswith("hydra.") else [k for k in keys if not k.startswith("hydra")]


def _override_key(o: str) -> str:
    return o.lstrip("~+").partition("=")[0]


def _did_you_mean(word: str, options) -> str:
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close and "." not in word:  # a bare name for a nested key: budget -> router.budget
        close = [o for o in options if o.rsplit(".", 1)[-1] == word][:1]
    return f" (did you mean {close[0]}?)" if close else ""


def _unknown_added_key(cmd: str, overrides: list[str]) -> str | None:
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
        key = _override_key(o)
        if key.split(".", 1)[0] in groups:
            continue
        if keys is None:
            keys = _known_keys(cmd, [x for x in overrides if not x.startswith("+")], "")
        parts = key.split(".")
        # under a key with no keys of its own (policy: null), '+policy.type=lam' builds its value
        leaf_parent = any(".".join(parts[:i]) in keys and not any(k.startswith(".".join(parts[:i]) + ".")
                                                                   for k in keys) for i in range(1, len(parts)))
        if key not in keys and not leaf_parent:
            return (f"unknown key '{key}' in {_quote(o)}{_did_you_mean(key, keys)} (t2iroute {cmd} --help "
                    "lists the keys; a '+' adds no key this command reads)")
    return None


def _find_override(overrides: list[str], key: str) -> str:
    return next((o for o in overrides if _override_key(o) == key), key)


def _explain_hydra(e: BaseException, cmd: str, overrides: list[str]) -> str | None:
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
                return (f"cannot read {_quote(o)}: {why} (quote a value with spaces, brackets or commas: "
                        f"'{_override_key(o)}=\"...\"')" + _prompt_hint(cmd, o))
        return f"cannot read the command line: {first}"
    m = re.search(r"You must specify '([^']+)'", text)
    if m:
        group = m.group(1)
        opts = _group_options(group)
        return f"{group}= is required: one of {', '.join(opts)}" + (f" (e.g. {group}={opts[0]})" if opts else "")
    m = re.search(r"Could not (?:find|load) '([^']+)'", text)
    if m or isinstance(e, MissingConfigException):
        path = m.group(1) if m else ""
        group, _, option = path.rpartition("/")
        opts = list(getattr(e, "options", None) or (_group_options(group) if group else []))
        if group and option:
            o = _find_override(overrides, group.rpartition("/")[2])
            o = _quote(o) if "=" in o else f"{group}={option}"
            return (f"{o}: no such {group} option '{option}'{_did_you_mean(option, opts)}"
                    + (f"; options: {', '.join(opts)}" if opts else ""))
        return first
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        o = _find_override(overrides, key)
        close = _did_you_mean(key, _known_keys(cmd, overrides, key))
        hint = _prompt_hint(cmd, o) if not close or re.search(r"\s", o) else ""
        return f"unknown key '{key}' in {_quote(o)}{close} (t2iroute {cmd} --help lists the keys){hint}"
    m = re.search(r"Could not delete from config\. '([^']+)' does not exist", text)
    if m:
        key = m.group(1)
        o = _find_override(overrides, key)
        return (f"{_quote(o)}: there is no key '{key}' to delete{_did_you_mean(key, _known_keys(cmd, overrides, key))}"
                + _prompt_hint(cmd, o))
    m = re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    if m:
        key = m.group(1)
        return f"+{key}: {key} exists already; set it with {key}=VALUE"
    m = re.search(r"Ambiguous value for argument '([^']+)'", text)
    if m:
        o = m.group(1)
        k = _override_key(o)
        return (f"{_quote(o)}: a comma makes a sweep; a list is {k}=[...], a text '{k}=\"...\"', "
                "and a sweep needs -m" + _prompt_hint(cmd, o))
    if isinstance(e, OmegaConfBaseException):
        key = getattr(e, "full_key", None)
        return f"{key}: {_omegaconf_message(e)}" if key else _omegaconf_message(e)
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {_omegaconf_message(cause)}"
    return first


class _hydra_context:
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


def _sweep_combos(overrides: list[str]) -> list[list[str]]:
    """The runs of a multirun as the basic sweeper makes them (none for other sweepers' syntax)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001 -- Hydra reports it itself
        return []
    return batches[0] if batches else [overrides]


def _precheck(cmd: str, args: _Args) -> None:
    """Compose the config of every run the command line asks for and check its values, before
    Hydra creates a run folder or anything loads (bench, train, sweep and every multirun)."""
    from hydra import compose

    runs = _sweep_combos(args.overrides) if args.multirun else [args.overrides]
    with _hydra_context():
        for ov in runs[:64]:
            _check_config(cmd, compose(config_name=cmd, overrides=ov))


def _error_line(cmd: str, e: BaseException, kind: str | None = None) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"t2iroute {cmd}: error: {kind or type(e).__name__}: {msg}"


def _app(argv: list[str]) -> int:
    """Serve the Streamlit app (``streamlit run``) on 127.0.0.1 by default."""
    import importlib.util

    if any(a in ("-h", "--help") for a in argv):
        print(_command_help("app"))
        return 0
    opts = {k: d for k, (d, _) in _APP_KEYS.items()}
    for a in argv:
        k, eq, v = a.partition("=")
        if not eq or k not in opts:
            more = _did_you_mean(k, opts) if eq else ""
            use = ", ".join(k + "=..." for k in opts)
            print(f"t2iroute app: error: unknown argument {_quote(a)}{more} (use {use})", file=sys.stderr)
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
    for k in ("artifact", "bench"):
        if opts[k]:
            env[f"T2IROUTE_APP_{k.upper()}"] = os.path.abspath(opts[k])
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_FILE), "--server.headless", "true",
           "--server.address", opts["address"], "--server.port", str(opts["port"]),
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
           "--server.fileWatcherType", "none"]
    print(f"t2iroute app: http://{opts['address']}:{opts['port']}", file=sys.stderr)
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


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
            print(_command_help(argv[1]))
        else:
            print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"t2iroute {_version()}")
        return 0
    cmd = argv.pop(0)
    if cmd == "app":
        return _app(argv)
    if cmd not in _TASKS:
        print(f"t2iroute: error: unknown command {_quote(cmd)}{_did_you_mean(cmd, COMMANDS)}; commands: "
              f"{', '.join(COMMANDS)} (t2iroute --help)", file=sys.stderr)
        return 2
    from t2iroute.errors import ConfigError, T2IRouteError

    try:
        args = _parse_args(cmd, argv)
    except ConfigError as e:
        print(_error_line(cmd, e), file=sys.stderr)
        return 2
    if args.help:
        print(_command_help(cmd))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _register_resolvers()
    _OUTPUT["compact"] = args.multirun
    status = {"rc": 0, "started": False}
    if cmd in _ARTIFACT_COMMANDS and not args.show and not args.custom_config:
        line = _unknown_added_key(cmd, args.overrides)
        if line is not None:
            print(f"t2iroute {cmd}: error: ConfigError: {line}", file=sys.stderr)
            return 2
    if (cmd not in _TAKES_PROMPTS or args.multirun) and not args.show and not args.custom_config:
        try:
            _precheck(cmd, args)
        except ConfigError as e:
            print(_error_line(cmd, e), file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001
            line = _explain_hydra(e, cmd, args.overrides)
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
            _OUTPUT["compact"] = HydraConfig.get().mode == RunMode.MULTIRUN
        except Exception:  # noqa: BLE001 -- called without Hydra's context: pretty JSON
            pass
        # route, generate, serve (Hydra logging off): the command's own stderr handler
        _quiet_console(_truthy(cfg.get("verbose", False)), own_handler=cmd in _ARTIFACT_COMMANDS)
        try:
            _check_config(cmd, cfg)
            if cfg.get("threads") is not None:  # torch's CPU threads, before anything loads torch
                os.environ["T2IROUTE_THREADS"] = str(int(cfg.threads))
            if cmd in _TAKES_PROMPTS:
                _TASKS[cmd](cfg, args.prompts)
            else:
                _save_config(cfg)
                _TASKS[cmd](cfg)
        except (T2IRouteError, ValueError, TypeError, OSError, OmegaConfBaseException) as e:
            if os.environ.get("T2IROUTE_DEBUG"):
                raise
            if cmd not in _TAKES_PROMPTS:
                log.error("%s", e, extra={"t2iroute_file_only": True})  # into the run's log file
            if isinstance(e, OmegaConfBaseException):
                print(_error_line(cmd, ConfigError(_explain_hydra(e, cmd, args.overrides))), file=sys.stderr)
            else:
                print(_error_line(cmd, e), file=sys.stderr)
            status["rc"] = 2

    from t2iroute.paths import CONF_DIR

    app = hydra.main(config_path=str(CONF_DIR), config_name=cmd, version_base="1.3")(task)
    saved_argv, saved_full = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [f"t2iroute {cmd}"] + args.flags + args.overrides  # argparse wants the overrides together
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors: they become one line here
    try:
        app()
    except Exception as e:  # noqa: BLE001
        if os.environ.get("T2IROUTE_DEBUG"):
            raise
        line = _explain_hydra(e, cmd, args.overrides)
        if line is None and isinstance(e, OSError) and not status["started"]:
            where = "out_dir" if cmd not in _TAKES_PROMPTS and not args.multirun else "the run folder"
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
        _OUTPUT["compact"] = False
    return status["rc"]


if __name__ == "__main__":
    sys.exit(main())
