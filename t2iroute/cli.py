"""Command line: ``t2iroute <command> [prompts] [hydra overrides]``.

Commands: ``bench`` (train on train+val, evaluate on test, write summary.json + curves.png),
``train`` (fit, calibrate lambda, save a router artifact), ``sweep`` (generate and score),
``route`` and ``generate`` (use an artifact), ``app`` (the Streamlit app). Every command but
``app`` is a Hydra app whose config is ``conf/<command>.yaml`` inside the package; add your own
config folder with ``hydra.searchpath=[file:///path/to/conf]``. Errors in the input exit with
status 2 and one line on stderr; stdout carries only the command's JSON result.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

COMMANDS = {
    "bench": "run a benchmark: router vs single backends vs oracle on a held-out split",
    "train": "train a router and save it as an artifact folder",
    "sweep": "generate prompts x backends x seeds, score, append rows to OUT/quality.parquet",
    "route": 'route prompts with a router artifact: t2iroute route "a red car" artifact=DIR',
    "generate": 'route and generate one image: t2iroute generate "a red car" artifact=DIR out=img.png',
    "app": "the Streamlit app: t2iroute app [artifact=DIR] [bench=DIR] [port=8501]",
}

log = logging.getLogger("t2iroute")


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    from t2iroute import paths

    if not OmegaConf.has_resolver("t2i.bundled"):
        OmegaConf.register_new_resolver("t2i.bundled", paths.bundled)
        OmegaConf.register_new_resolver("t2i.shared", paths.shared)


def _usage() -> str:
    lines = ["usage: t2iroute <command> [key=value ...]", "", "commands:"]
    lines += [f"  {k:9s} {v}" for k, v in COMMANDS.items()]
    lines += ["", "e.g. t2iroute bench data=cems10k metric=clip seed=0 out_dir=outputs/cems",
              "     t2iroute bench --cfg job   (print the composed config)"]
    return "\n".join(lines)


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
        "predictor": (s.get("predictor_selection") or {}).get("chosen", s["predictor"].get("type")),
        "beats_best_single_cv": (s.get("predictor_selection") or {}).get("beats_best_single_cv"),
        "route_throughput_prompts_per_s": s.get("route_throughput_prompts_per_s"),
        "route_single_ms_p50": s.get("route_single_ms_p50"),
        "out_dir": str(cfg.out_dir),
    }
    print(json.dumps(brief, indent=2))


def _train(cfg) -> None:
    from t2iroute.training.train import run_train

    router = run_train(cfg)
    metrics = dict(router.manifest.get("metrics", {}))
    sel = metrics.pop("predictor_selection", None)
    out = {"artifact": os.path.join(str(cfg.out_dir), "router"), "policy": router.policy.describe(),
           "metrics": metrics}
    if sel is not None:
        out["predictor"] = {k: sel[k] for k in ("chosen", "shrink", "beats_best_single_cv")}
    print(json.dumps(out, indent=2))


def _sweep(cfg) -> None:
    from omegaconf import OmegaConf

    from t2iroute.backends import build_backends
    from t2iroute.scoring import build_scorer
    from t2iroute.training.prompts import read_prompts
    from t2iroute.training.sweep import run_sweep

    specs = OmegaConf.to_container(cfg.backends, resolve=True) if cfg.get("backends") else {}
    if not specs:
        raise ValueError("no backends selected (backends=[tiny_10,tiny_20] for example)")
    backends = build_backends(specs)
    scorer = build_scorer(OmegaConf.to_container(cfg.scorer, resolve=True))
    prompts = read_prompts(cfg.prompts, limit=cfg.get("limit"))
    seeds = [int(s) for s in cfg.seeds]
    res = run_sweep(backends, prompts, seeds, scorer, cfg.out_dir, shard=int(cfg.shard),
                    num_shards=int(cfg.num_shards), chunk_size=int(cfg.chunk_size),
                    keep_images=bool(cfg.keep_images))
    print(json.dumps({"out": str(res.out_dir / "quality.parquet"), "items": res.n_items,
                      "skipped_finished": res.n_skipped_done, "generated": res.n_generated,
                      "failed": res.n_failed}))


def _cli_router(cfg):
    from omegaconf import OmegaConf

    from t2iroute.errors import ConfigError
    from t2iroute.router.core import Router

    if not cfg.get("artifact"):
        raise ConfigError("artifact=DIR is required (a router folder written by t2iroute train)")
    specs = OmegaConf.to_container(cfg.backends, resolve=True) if cfg.get("backends") else None
    # the user's own endpoints and cache folders (an artifact never sets them)
    local = {k: {kk: vv for kk, vv in OmegaConf.to_container(cfg[k], resolve=True).items() if vv is not None}
             for k in ("llm", "embedding") if cfg.get(k)}
    router = Router.load(str(cfg.artifact), backends=specs, local=local,
                         expected_sha256=cfg.get("artifact_sha256"))
    router.warmup()  # model loading stays out of the decision's stage timings
    return router


def _cli_prompts(cfg, prompts: list[str]) -> list[str]:
    from t2iroute.errors import ConfigError

    items = list(prompts)
    src = cfg.get("prompts_file")
    if src == "-":
        items += [ln.strip() for ln in sys.stdin.read().splitlines() if ln.strip()]
    elif src:
        from t2iroute.training.prompts import read_prompts

        items += read_prompts(str(src)).prompt.tolist()
    if not items:
        raise ConfigError('no prompt given: t2iroute route "a red car" artifact=DIR (or prompts_file=FILE)')
    return items


def _policy_kwargs(cfg) -> dict:
    """lam= | budget= | quality_floor= | max_cost= | policy={type: ...}: at most one."""
    from omegaconf import OmegaConf

    from t2iroute.errors import ConfigError

    kw = {k: cfg.get(k) for k in ("lam", "budget", "quality_floor", "max_cost") if cfg.get(k) is not None}
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{k}={v}: a number is needed")
    if cfg.get("policy") is not None:
        pol = cfg.policy
        kw["policy"] = OmegaConf.to_container(pol, resolve=True) if OmegaConf.is_config(pol) else pol
        if not isinstance(kw["policy"], dict):
            raise ConfigError(f"policy={pol}: give a mapping, e.g. 'policy={{type: lam, lam: 0.1}}'")
    if len(kw) > 1:
        raise ConfigError(f"give at most one of lam=, budget=, quality_floor=, max_cost=, policy= (got {sorted(kw)})")
    return kw


def _route(cfg, prompts: list[str]) -> None:
    router = _cli_router(cfg)
    items = _cli_prompts(cfg, prompts)
    one = len(items) == 1 and not cfg.get("prompts_file")
    res = router.route(items[0] if one else items, **_policy_kwargs(cfg))
    print(json.dumps(res.to_dict() if one else [d.to_dict() for d in res], indent=2))


def _image_format(out: str) -> str:
    from PIL import Image

    from t2iroute.errors import ConfigError

    ext = os.path.splitext(out)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ConfigError(f"out={out}: unknown image type '{ext}' (use .png, .jpg or .webp)")
    return fmt


def _generate(cfg, prompts: list[str]) -> None:
    import tempfile

    from omegaconf import OmegaConf

    from t2iroute.errors import ConfigError

    out = str(cfg.out)
    fmt = _image_format(out)
    if len(prompts) != 1 or cfg.get("prompts_file"):
        raise ConfigError(f"generate takes exactly one prompt, got {len(prompts)}")
    t0 = time.perf_counter()
    router = _cli_router(cfg)
    load_s = time.perf_counter() - t0
    scorer = None
    if cfg.get("scorer"):
        from t2iroute.scoring import build_scorer

        scorer = build_scorer(OmegaConf.to_container(cfg.scorer, resolve=True))
    res = router.generate(prompts[0], seed=int(cfg.seed), backend=cfg.get("backend"),
                          fallback=bool(cfg.fallback), **_policy_kwargs(cfg))
    result = res.to_dict()
    result["router_load_s"] = load_s  # artifact + featurizer models (the pipeline's load is in wall_s only)
    if scorer is not None:
        result["score"] = {scorer.metric: scorer.score([res.image], [prompts[0]])[0]}
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".t2iroute-", suffix=os.path.splitext(out)[1], dir=folder)
    os.close(fd)
    try:
        res.image.save(tmp, format=fmt)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it 0600
        os.replace(tmp, out)  # a reader never sees half an image; an older file survives a failure
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    result["out"] = out
    result["wall_s"] = time.perf_counter() - t0  # the whole command: loads, routing, image, scoring, writing
    print(json.dumps(result, indent=2))


_TASKS = {"bench": _bench, "train": _train, "sweep": _sweep, "route": _route, "generate": _generate}
_TAKES_PROMPTS = ("route", "generate")
# a Hydra override: key=value, +key=value, ~key; anything else is a prompt
_OVERRIDE = re.compile(r"^(~|\+{1,2})?[A-Za-z_][\w.@/-]*(=|$)")
_HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name",
                           "-cn", "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


def _split_prompts(argv: list[str]) -> tuple[list[str], list[str]]:
    prompts, rest, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and a not in ("-",):
            rest.append(a)
            if a in _HYDRA_FLAGS_WITH_VALUE and i + 1 < len(argv):
                rest.append(argv[i + 1])
                i += 1
        elif _OVERRIDE.match(a) and ("=" in a or a.startswith("~")):
            rest.append(a)
        else:
            prompts.append(a)
        i += 1
    return prompts, rest


def _app(argv: list[str]) -> int:
    """Serve the Streamlit app (``streamlit run``) on 127.0.0.1 by default."""
    import importlib.util

    opts = {"artifact": None, "bench": None, "port": "8501", "address": "127.0.0.1"}
    for a in argv:
        k, eq, v = a.partition("=")
        if not eq or k not in opts:
            print(f"t2iroute app: error: unknown argument '{a}' (use {', '.join(k + '=...' for k in opts)})",
                  file=sys.stderr)
            return 2
        opts[k] = v
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    cmd = argv.pop(0)
    if cmd == "app":
        return _app(argv)
    if cmd not in _TASKS:
        print(f"t2iroute: unknown command '{cmd}'\n\n{_usage()}", file=sys.stderr)
        return 2
    prompts: list[str] = []
    if cmd in _TAKES_PROMPTS:
        prompts, argv = _split_prompts(argv)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # stderr: warnings and errors only
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _register_resolvers()
    import hydra

    from t2iroute.errors import T2IRouteError

    status = {"rc": 0}

    def task(cfg) -> None:
        if cmd in _TAKES_PROMPTS:
            logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                                format="%(levelname)s %(name)s: %(message)s")
        try:
            if cmd in _TAKES_PROMPTS:
                _TASKS[cmd](cfg, prompts)
            else:
                _save_config(cfg)
                _TASKS[cmd](cfg)
        except (T2IRouteError, ValueError, TypeError, OSError) as e:
            if os.environ.get("T2IROUTE_DEBUG"):
                raise
            if cmd not in _TAKES_PROMPTS:
                log.error("%s", e)  # into the run's log file too
            msg = " ".join(str(e).split())  # one line
            print(f"t2iroute {cmd}: error: {type(e).__name__}: {msg}", file=sys.stderr)
            status["rc"] = 2

    from t2iroute.paths import CONF_DIR

    app = hydra.main(config_path=str(CONF_DIR), config_name=cmd, version_base="1.3")(task)
    saved = sys.argv
    sys.argv = [f"t2iroute {cmd}"] + argv
    try:
        app()
    finally:
        sys.argv = saved
    return status["rc"]


if __name__ == "__main__":
    sys.exit(main())
