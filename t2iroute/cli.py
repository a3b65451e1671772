"""Command line: ``t2iroute <command> [hydra overrides]``.

Commands: ``bench`` (train on train+val, evaluate on test, write summary.json + curves.png) and
``train`` (fit, calibrate lambda, save a router artifact). Each command is a Hydra app whose
config is ``conf/<command>.yaml`` inside the package; add your own config folder with
``hydra.searchpath=[file:///path/to/conf]``.
"""

from __future__ import annotations

import json
import logging
import os
import sys

COMMANDS = {
    "bench": "run a benchmark: router vs single backends vs oracle on a held-out split",
    "train": "train a router and save it as an artifact folder",
    "sweep": "generate prompts x backends x seeds, score, append rows to OUT/quality.parquet",
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
    lines += [f"  {k:8s} {v}" for k, v in COMMANDS.items()]
    lines += ["", "e.g. t2iroute bench data=cems10k metric=clip seed=0 out_dir=outputs/cems",
              "     t2iroute bench --cfg job   (print the composed config)"]
    return "\n".join(lines)


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
        "route_throughput_prompts_per_s": s.get("route_throughput_prompts_per_s"),
        "route_single_ms_p50": s.get("route_single_ms_p50"),
        "out_dir": str(cfg.out_dir),
    }
    print(json.dumps(brief, indent=2))


def _train(cfg) -> None:
    from t2iroute.training.train import run_train

    router = run_train(cfg)
    print(json.dumps({"artifact": os.path.join(str(cfg.out_dir), "router"),
                      "lambda": router.lam, "metrics": router.manifest.get("metrics", {})}, indent=2))


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


_TASKS = {"bench": _bench, "train": _train, "sweep": _sweep}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    cmd = argv.pop(0)
    if cmd not in _TASKS:
        print(f"t2iroute: unknown command '{cmd}'\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _register_resolvers()
    import hydra

    from t2iroute.errors import T2IRouteError

    status = {"rc": 0}

    def task(cfg) -> None:
        try:
            _TASKS[cmd](cfg)
        except (T2IRouteError, ValueError, FileNotFoundError) as e:
            log.error("%s", e)
            print(f"t2iroute {cmd}: error: {e}", file=sys.stderr)
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
