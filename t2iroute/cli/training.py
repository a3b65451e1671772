"""``t2iroute bench``, ``train`` and ``sweep``: the library's runs, their JSON result."""

from __future__ import annotations

import os

from t2iroute.cli.common import load_scorer
from t2iroute.cli.output import emit


def bench(cfg) -> None:
    from t2iroute.training.train import run_bench

    s = run_bench(cfg)
    s.pop("curves", None)
    r = s["router"]
    brief = {
        "data": s["data"],
        "metric": s["metric"],
        "seed": s["seed"],
        "n_train": s["n_train"],
        "n_test": s["n_test"],
        "best_single": s["best_single"],
        "oracle_cost_saved_pct": s["oracle"]["cost_saved_pct"],
        "router": {
            k: r[k] for k in ("cost_saved_pct", "quality_gain_at_equal_cost", "cost_to_match_best_single", "aiq")
        },
        "cost_unit": s.get("cost_unit", "s"),
        "predictor": (s.get("predictor_selection") or {}).get("chosen", s["predictor"].get("type")),
        "beats_best_single_cv": (s.get("predictor_selection") or {}).get("beats_best_single_cv"),
        "route_throughput_prompts_per_s": s.get("route_throughput_prompts_per_s"),
        "route_single_ms_p50": s.get("route_single_ms_p50"),
        "out_dir": str(cfg.out_dir),
    }
    emit(brief)


def train(cfg) -> None:
    from t2iroute.training.train import run_train

    router = run_train(cfg)
    metrics = dict(router.manifest.get("metrics", {}))
    sel = metrics.pop("predictor_selection", None)
    out = {
        "artifact": os.path.join(str(cfg.out_dir), "router"),
        "policy": router.policy.describe(),
        "cost_unit": router.cost_unit,
        "metrics": metrics,
    }
    if sel is not None:
        out["predictor"] = {k: sel[k] for k in ("chosen", "shrink", "beats_best_single_cv")}
    emit(out)


def sweep(cfg) -> None:
    from omegaconf import OmegaConf

    from t2iroute.backends import build_backends
    from t2iroute.errors import ConfigError
    from t2iroute.training.prompts import read_prompts
    from t2iroute.sweeps.local import run_sweep

    specs = OmegaConf.to_container(cfg.backends, resolve=True) if cfg.get("backends") else {}
    if not specs:
        raise ConfigError("backends=[]: no backends selected (backends=[tiny_10,tiny_20] for example)")
    prompts = read_prompts(cfg.prompts, limit=cfg.get("limit"))  # a missing file fails before any model loads
    seeds = [int(s) for s in cfg.seeds]
    scorer_spec = OmegaConf.to_container(cfg.scorer, resolve=True)
    extra = {}
    if cfg.get("launcher", "local") == "ray":
        from t2iroute.cluster import RayOptions
        from t2iroute.sweeps.ray import run_sweep_ray

        opts = RayOptions.from_mapping(OmegaConf.to_container(cfg.ray, resolve=True) if cfg.get("ray") else {})
        res = run_sweep_ray(
            specs,
            prompts,
            seeds,
            scorer_spec,
            cfg.out_dir,
            shard=int(cfg.shard),
            num_shards=int(cfg.num_shards),
            chunk_size=int(cfg.chunk_size),
            keep_images=bool(cfg.keep_images),
            ray_options=opts,
        )
        extra = {"launcher": "ray", "retried": res.n_retried, "workers_replaced": res.n_workers_replaced}
    else:
        scorer = load_scorer(cfg)  # loaded before any image is made: one that cannot load stops here
        res = run_sweep(
            build_backends(specs),
            prompts,
            seeds,
            scorer,
            cfg.out_dir,
            shard=int(cfg.shard),
            num_shards=int(cfg.num_shards),
            chunk_size=int(cfg.chunk_size),
            keep_images=bool(cfg.keep_images),
        )
    emit(
        {
            "out": str(res.out_dir / "quality.parquet"),
            "items": res.n_items,
            "skipped_finished": res.n_skipped_done,
            "generated": res.n_generated,
            "failed": res.n_failed,
            **extra,
        },
        compact=True,
    )  # one line, as sweeps always printed it
