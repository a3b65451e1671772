"""The typed configs of ``t2iroute bench``, ``train`` and ``sweep``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

from t2iroute.cli import checks as ck
from t2iroute.cli.sections import Command, seed, threads, verbose
from t2iroute.cli.typed import Group, key, section
from t2iroute.cluster import RayOptions


@dataclass
class Split:
    fractions: list[float] = key(
        [0.7, 0.1, 0.2], "train, validation, test; bench's headline model fits on train+validation", ge=0, length=3
    )


@dataclass
class TrainingCommand(Command):
    GROUPS: ClassVar[tuple[Group, ...]] = (
        Group("data", "???", "the quality table, required (custom: your own, data.path=FILE)"),
        Group(
            "features",
            ["embedding", "lexical"],
            "the prompt features the predictor reads, composed: features=[embedding,lexical,llm]",
        ),
        Group("predictor", "auto", "picks knn, ridge, lgbm or stack by cross-validation on the routing objective"),
    )
    metric: str = key("${data.metric}", "the quality metric of the table to route on (default: the data config's)")
    seed: int = seed("the seed of the train/validation/test split and of the models")
    anchor: Literal[True, False, "auto"] = key(
        "auto",
        "leave the best single (training) backend only where predicted as good, or cheaper at a loss "
        "(true | false | auto; auto: predictor=auto decides by CV, always anchored below 2,000 training rows; "
        "other predictors: anchored below 2,000 rows)",
    )
    split: Split = section(Split)


@dataclass
class Calibration:
    budgets: list[float] = key(
        [0.25, 0.5, 0.75],
        "target mean costs to calibrate lambda for, as fractions of the "
        "way from the cheapest backend to the best single one",
        ge=0,
        min_len=0,
    )


@dataclass
class Throughput:
    enabled: bool = key(True, "measure routing speed on the test prompts")
    n_batch: int = key(1000, "prompts routed in one batch (cold embedding cache)", ge=1)
    n_single: int = key(200, "prompts routed one at a time (the single-prompt p50)", ge=1)


@dataclass
class SweepSimulation:
    plan: Any = key(
        None,
        "simulate a cheaper training sweep on this complete table: prompts (full rows on a random share "
        "of prompts), cells (random cells) or active (rounds of the cells most likely to change a routing "
        "decision, per unit cost); a list compares them: [prompts,cells,active]",
    )
    share: Any = key(
        0.5, "the share of the full training sweep's cost each plan spends, in (0, 1]; a list: [0.1,0.25,0.5]"
    )


@dataclass
class Bench(TrainingCommand):
    ABOUT: ClassVar[str] = "run a benchmark: router vs single backends vs oracle on a held-out split"
    EXAMPLE: ClassVar[str] = "t2iroute bench data=agiqa3k metric=mos_align seed=0 out_dir=outputs/agiqa"
    calibration: Calibration = section(Calibration)
    throughput: Throughput = section(Throughput)
    sweep: SweepSimulation = section(
        SweepSimulation, "simulated sweeps: train on the cells a plan would have generated (summary.json's sweep)"
    )
    out_dir: str = key(
        "outputs/bench/${data.name}-${metric}-seed${seed}",
        "the run folder: summary.json, curves.png, config.yaml, the log",
        check=ck.out_folder,
    )
    verbose: bool = verbose()
    threads: Optional[int] = threads()


@dataclass
class RouterPolicy:
    """train's router.*: the artifact's default policy, at most one key (checked where it is built)."""

    lam: Any = key(None, "a fixed lambda (argmax q - lam * c); none given: lambda 0")
    budget: Any = key(None, "a target mean cost per prompt (calibrated to a lambda on validation)")
    mean_quality_floor: Any = key(None, "the largest lambda whose MEAN validation quality stays above this")
    quality_floor: Any = key(None, "per prompt: the cheapest backend predicted to reach this quality")
    max_cost: Any = key(None, "per prompt: the best predicted backend costing at most this")
    policy: Any = key(None, "any policy spec, plug-ins too: {type: NAME, ...}")


@dataclass
class Train(TrainingCommand):
    GROUPS: ClassVar[tuple[Group, ...]] = TrainingCommand.GROUPS + (
        Group("backends", [], "configs of the table's backends to store in the artifact, e.g. [tiny_10,tiny_20]"),
    )
    ABOUT: ClassVar[str] = "train a router and save it as an artifact folder"
    EXAMPLE: ClassVar[str] = (
        "t2iroute train data=tifa160 router.budget=2.5 out_dir=outputs/tifa   # -> outputs/tifa/router"
    )
    router: RouterPolicy = section(RouterPolicy, "the artifact's default policy: at most one of")
    feedback: Optional[str] = key(
        None,
        "a decision log folder (serve log_dir=DIR): its scored images join the table as cells "
        "(user scores, else autoscores); they train, never test",
    )
    out_dir: str = key(
        "outputs/train/${data.name}-${metric}-seed${seed}",
        "the run folder; the artifact is OUT/router",
        check=ck.out_folder,
    )
    verbose: bool = verbose()
    threads: Optional[int] = threads()


@dataclass
class Replay(TrainingCommand):
    GROUPS: ClassVar[tuple[Group, ...]] = (
        TrainingCommand.GROUPS[0],
        TrainingCommand.GROUPS[1],
        Group(
            "predictor",
            "auto",
            "refitted on the seen cells at each retrain, as train fits it (start=prior: the prior, its "
            "learned correction joining as cells arrive)",
        ),
        Group("backends", [], "backend configs whose steps the prior reads (start=prior; none: a flat prior)"),
    )
    ABOUT: ClassVar[str] = "simulate the serving loop on a complete table: bandit feedback, exploration, retrains"
    EXAMPLE: ClassVar[str] = (
        "t2iroute replay data=cems10k metric=clip start=table:0.05 stream=4000 retrain_every=500 "
        "explore=0.05 seed=0 out_dir=OUT"
    )
    start: str = key(
        "table:0.05", "prior (no table) or table:SHARE (full rows on SHARE of the training prompts) to start from"
    )
    stream: int = key(4000, "training prompts streamed after the start, one served image each", ge=1)
    retrain_every: int = key(500, "refit (and judge on the test split) after this many streamed prompts", ge=1)
    explore: float = key(
        0.0, "the share of prompts sent to another backend than the greedy choice, uniformly", ge=0, le=1
    )
    autoscore: float = key(1.0, "the share of served images whose score is revealed (scored)", ge=0, le=1)
    fill: Literal["complete", "mf"] = key(
        "complete",
        "how a predictor that needs complete rows first fills the missing cells: from itself fitted on the "
        "complete rows (when 200 or more), or mf (the shared low-rank model)",
    )
    out_dir: str = key(
        "outputs/replay/${data.name}-${metric}-seed${seed}",
        "the run folder: summary.json, replay.json, replay.png",
        check=ck.out_folder,
    )
    verbose: bool = verbose()
    threads: Optional[int] = threads()


@dataclass
class Sweep(Command):
    GROUPS: ClassVar[tuple[Group, ...]] = (
        Group("backends", ["tiny_10", "tiny_20"], "the backends to generate with, e.g. backends=[sd15_20,sd15_50]"),
        Group("scorer", "clip_tiny", "scores every image: clip (CLIPScore) or clip_tiny (random weights, offline)"),
        Group("features", ["embedding", "lexical"], "the prompt features plan=active's models read"),
    )
    ABOUT: ClassVar[str] = "generate prompts x backends x seeds, score, append rows to OUT/quality.parquet"
    EXAMPLE: ClassVar[str] = (
        "t2iroute sweep backends=[tiny_10,tiny_20] prompts=partiprompts limit=50 seeds=[0,1] out_dir=OUT"
    )
    prompts: str = key("partiprompts", "a bundled set (partiprompts, geneval) or a .txt/.tsv/.csv/.jsonl file")
    limit: Optional[int] = key(None, "only the first N prompts", ge=1)
    seeds: list[int] = key(
        [0], "one image per prompt, backend and seed: integers in [0, 2**63-1]", ge=0, le=ck.SEED_MAX
    )
    shard: int = key(0, "this process's share of the prompts: shard in [0, num_shards)", ge=0)
    num_shards: int = key(1, "the number of processes sharing the sweep", ge=1)
    chunk_size: int = key(8, "rows per atomic part file", ge=1)
    keep_images: bool = key(False, "keep the images as OUT/images/BACKEND/PROMPT_ID-sSEED.png")
    plan: Literal["full", "prompts", "cells", "active"] = key(
        "full",
        "which cells to generate: full (every backend on every prompt), prompts (full rows on a random share), "
        "cells (random cells), active (rounds of the cells most likely to change a routing decision, per unit cost)",
    )
    budget_share: float = key(1.0, "the share of the full sweep's cost a plan spends, in (0, 1]", gt=0, le=1)
    plan_seed: int = key(0, "the seed of the plan's random choices", ge=0)
    out_dir: str = key(
        "outputs/sweep",
        "the table folder: OUT/quality.parquet (re-runs resume it), failures.jsonl, the log",
        check=ck.out_folder,
    )
    verbose: bool = verbose(libraries=False)
    launcher: Literal["local", "ray"] = key(
        "local", "local: this process, one item after another; ray: Ray actors across GPUs and machines"
    )
    ray: RayOptions = section(RayOptions, "launcher=ray only (pip install 't2iroute[ray]'); docs/ray.md")
    threads: Optional[int] = threads()


#: the commands' configs, in the order ``t2iroute --help`` lists them
