"""``t2iroute route`` and ``t2iroute generate`` (one image, or many into a folder, resumable)."""

from __future__ import annotations

import sys
import time

from t2iroute.cli.common import (
    image_format,
    load_router,
    load_scorer,
    policy_kwargs,
    read_prompts,
    require_artifact,
    write_image,
)
from t2iroute.cli.output import emit


def route(cfg, prompts: list[str]) -> None:
    require_artifact(cfg)
    items = read_prompts(cfg, prompts)
    policy = policy_kwargs(cfg)
    router = load_router(cfg)
    one = len(items) == 1 and not cfg.get("prompts_file")
    res = router.route(items[0] if one else items, **policy)
    unit = router.cost_unit
    emit({**res.to_dict(), "cost_unit": unit} if one else [{**d.to_dict(), "cost_unit": unit} for d in res])


def generate(cfg, prompts: list[str]) -> None:
    if len(prompts) != 1 or cfg.get("prompts_file"):
        return generate_many(cfg, prompts)
    out = str(cfg.out)
    fmt = image_format(out)
    require_artifact(cfg)
    read_prompts(cfg, prompts)
    policy = policy_kwargs(cfg)
    t0 = time.perf_counter()
    scorer = load_scorer(cfg)  # loaded before any image is made: one that cannot load stops here
    t1 = time.perf_counter()
    router = load_router(cfg)
    load_s = time.perf_counter() - t1
    res = router.generate(
        prompts[0], seed=int(cfg.seed), backend=cfg.get("backend"), fallback=bool(cfg.fallback), **policy
    )
    result = res.to_dict()
    result["cost_unit"] = router.cost_unit
    result["router_load_s"] = load_s  # artifact + featurizer models (the pipeline's load is in wall_s only)
    write_image(res.image, out, fmt)  # before scoring: a scorer that fails now loses no image
    if scorer is not None:
        from t2iroute.router.batch import score_one

        result.update(score_one(scorer, res.image, prompts[0]))
    result["out"] = out
    result["wall_s"] = time.perf_counter() - t0  # the whole command: loads, routing, image, scoring, writing
    emit(result)


def generate_many(cfg, prompts: list[str]) -> None:
    """Several prompts: :class:`t2iroute.router.batch.FolderRun` into out_dir (resumable)."""
    from t2iroute.errors import ConfigError, GenerationError
    from t2iroute.router.batch import RECORDS, FolderRun

    if not cfg.get("out_dir"):
        raise ConfigError(
            "out_dir=DIR is needed for several prompts (or prompts_file=): the images go to "
            "DIR/0000.png, DIR/0001.png ... and their records to DIR/" + RECORDS
        )
    require_artifact(cfg)
    items = read_prompts(cfg, prompts)
    policy = policy_kwargs(cfg)
    run = FolderRun(str(cfg.out_dir), items, int(cfg.seed))  # refuses another run's folder before loading
    t0 = time.perf_counter()
    scorer = load_scorer(cfg) if run.todo else None  # loaded before any image is made
    t1 = time.perf_counter()
    router = load_router(cfg) if run.todo else None
    load_s = time.perf_counter() - t1
    summary = run.run(
        router,
        policy=policy,
        backend=cfg.get("backend"),
        fallback=bool(cfg.fallback),
        scorer=scorer,
        chunk_size=int(cfg.chunk_size),
        progress=sys.stderr.isatty() if cfg.progress == "auto" else bool(cfg.progress),
        write=lambda image, out, fmt: write_image(image, out, fmt, key="out_dir"),
    )
    summary = {**summary, "router_load_s": load_s, "wall_s": time.perf_counter() - t0}
    order = [
        "out_dir",
        "records",
        "prompts",
        "generated",
        "skipped_finished",
        "failed",
        "by_backend",
        "router_load_s",
        "generate_s",
        "images_per_s",
        "wall_s",
    ]
    emit({k: summary[k] for k in order})
    if run.failures:
        raise GenerationError(
            f"{summary['failed']} of {len(items)} images failed (the others are in {run.out_dir}): {run.failures[0]}"
        )
