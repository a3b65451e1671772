"""``t2iroute bench``, ``train`` and ``sweep``: the library's runs, their JSON result."""

from __future__ import annotations

import os
from pathlib import Path

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


def replay(cfg) -> None:
    from t2iroute.training.replay import run_replay

    s = run_replay(cfg)
    brief = {k: s[k] for k in ("data", "metric", "seed", "start", "stream", "retrain_every", "explore", "autoscore")}
    brief["final"] = {k: s["final"][k] for k in ("streamed", "cells", "cost_saved_pct", "quality_gain_at_equal_cost")}
    brief["full_table"] = {k: s["full_table"][k] for k in ("cost_saved_pct", "quality_gain_at_equal_cost")}
    brief["share_of_full_saving"] = s["share_of_full_saving"]
    brief["out_dir"] = str(cfg.out_dir)
    emit(brief)


def sweep(cfg) -> None:
    from omegaconf import OmegaConf

    from t2iroute.backends import build_backends
    from t2iroute.errors import ConfigError
    from t2iroute.training.prompts import read_prompts
    from t2iroute.sweeps.local import run_sweep

    specs = OmegaConf.to_container(cfg.backends, resolve=True) if cfg.get("backends") else {}
    if not specs:
        raise ConfigError("backends=[]: no backends selected (backends=[tiny_10,tiny_20] for example)")
    plan = str(cfg.get("plan", "full"))
    if plan != "full" and int(cfg.num_shards) > 1:
        raise ConfigError(
            f"num_shards={cfg.num_shards}: plan={plan} chooses cells from what it saw, in one process (launcher=ray spreads it)"
        )
    prompts = read_prompts(cfg.prompts, limit=cfg.get("limit"))  # a missing file fails before any model loads
    seeds = [int(s) for s in cfg.seeds]
    scorer_spec = OmegaConf.to_container(cfg.scorer, resolve=True)
    extra = {}
    common = dict(shard=int(cfg.shard), num_shards=int(cfg.num_shards), chunk_size=int(cfg.chunk_size))
    common["keep_images"] = bool(cfg.keep_images)
    if cfg.get("launcher", "local") == "ray":
        from t2iroute.cluster import RayOptions
        from t2iroute.sweeps.ray import run_sweep_ray

        opts = RayOptions.from_mapping(OmegaConf.to_container(cfg.ray, resolve=True) if cfg.get("ray") else {})

        def launch(cells=None):
            return run_sweep_ray(
                specs, prompts, seeds, scorer_spec, cfg.out_dir, ray_options=opts, cells=cells, **common
            )

        extra = {"launcher": "ray"}
    else:
        scorer = load_scorer(cfg)  # loaded before any image is made: one that cannot load stops here
        built = build_backends(specs)

        def launch(cells=None):
            return run_sweep(built, prompts, seeds, scorer, cfg.out_dir, cells=cells, **common)

    if plan == "full":
        res = launch()
        if extra:
            extra.update(retried=res.n_retried, workers_replaced=res.n_workers_replaced)
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
        return
    from t2iroute.sweeps.planned import run_planned_sweep

    featurize = None
    if plan == "active":
        from t2iroute.features import build_featurizer

        featurizer = build_featurizer(OmegaConf.to_container(cfg.features, resolve=True))

        def featurize(texts):
            with featurizer.without_deadline():
                return featurizer.transform(texts)

    costs = {b: (s.get("cost_s", s.get("cost")) if isinstance(s, dict) else None) for b, s in specs.items()}
    out = run_planned_sweep(
        plan,
        float(cfg.budget_share),
        prompts,
        list(specs),
        launch,
        cfg.out_dir,
        featurize=featurize,
        costs=costs,
        seed=int(cfg.plan_seed),
    )
    emit({"out": str(Path(cfg.out_dir) / "quality.parquet"), **out, **extra}, compact=True)
