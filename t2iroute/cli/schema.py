"""The commands' typed configs: the one schema of every key.

Each command's config is a dataclass below: a field's type, default, range (``ge``, ``le``) and
help text are declared once, here (``ray.*``: the options dataclasses of
:mod:`t2iroute.cluster` and :mod:`t2iroute.serving.ray`). From them come the config Hydra composes (stored in its
ConfigStore under the command's name, with the config groups of ``conf/``), ``--help``, the
reference page (``docs/reference/cli.md``) and the checks that refuse a bad value with one line
naming it, before anything loads.

The values reach Hydra untyped: OmegaConf's own conversion errors name no range and differ from
key to key, so every value is checked by :func:`checks_for` instead, from the same declaration.
A new key is one field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

from t2iroute.cli import checks as ck
from t2iroute.cli.typed import Group, check_of, key, keys, section
from t2iroute.cluster import RayOptions
from t2iroute.serving.ray import RayServeOptions


# -- the sections and keys several commands share --------------------------------------------------

def verbose(libraries: bool = True):
    return key(False, "INFO logs and the libraries' progress bars on stderr (default: warnings and errors only)"
               if libraries else "INFO logs on stderr (default: warnings, errors and the progress bar only)")


def threads():
    return key(None, "torch's CPU threads (default: $T2IROUTE_THREADS, else half the cores, at most 4; "
               "0: torch's own)", ge=0, le=1024)


def seed(help: str):
    return key(0, help, ge=0, le=ck.SEED_MAX)


@dataclass
class Llm:
    base_url: Optional[str] = key(None, "OpenAI-compatible server, http(s)://host[:port][/path]; default "
                                  "$T2IROUTE_LLM_BASE_URL, $OPENAI_BASE_URL or http://127.0.0.1:8080/v1 (llama.cpp's "
                                  "port, also scripts/serve_llm.py's and what bench and train use)", check=ck.url())
    api_key_env: Optional[str] = key(None, "the NAME of an environment variable holding the server's key (default: "
                                     "$OPENAI_API_KEY)", check=ck.env_var_with_key)
    host: Optional[str] = key(None, "Ollama server; default $OLLAMA_HOST or http://127.0.0.1:11434",
                              check=ck.url(scheme_optional=True))
    cache_path: Optional[str] = key(None, "answer cache; default $T2IROUTE_CACHE/llm.sqlite")
    deadline_s: Optional[float] = key(None, "the most one routing call waits on the LLM in all; prompts not answered "
                                      "by then are imputed (null: the artifact's, at most 60 s)", check=ck.positive)
    timeout: Optional[float] = key(None, "seconds per request in total (a reply that trickles in is cut; null: the "
                                   "artifact's, at most 60 s)", check=ck.positive)
    retries: Optional[int] = key(None, "extra tries after a server error or an invalid answer (null: the "
                                 "artifact's, at most 5)", ge=0, le=1000)
    backoff_s: Optional[float] = key(None, "pause backoff_s, 2 x backoff_s, ... between tries after a server error",
                                     ge=0)
    concurrency: Optional[int] = key(None, "requests in flight at once", ge=1, le=64)


@dataclass
class Embedding:
    cache_dir: Any = key(None, "embedding cache; default $T2IROUTE_CACHE/embeddings")
    runtime: Any = key(None, "torch | onnx | auto (default: $T2IROUTE_EMBED_RUNTIME or auto)")


@dataclass
class Command:
    """What every command's config has; a command's class adds its keys and says, as class
    attributes, its config groups, its Hydra settings (``conf/hydra/``), what it does."""

    GROUPS: ClassVar[tuple[Group, ...]] = ()
    HYDRA: ClassVar[str] = "default"  # default: a run folder and log file; quiet: neither
    ABOUT: ClassVar[str] = ""
    EXAMPLE: ClassVar[str] = ""
    PROMPTS: ClassVar[bool] = False  # takes prompts (positional arguments)


_BACKENDS = Group("backends", [], "override the artifact's backend configs, e.g. backends=[tiny_10,tiny_20]")


@dataclass
class ArtifactCommand(Command):
    HYDRA: ClassVar[str] = "quiet"
    artifact: Optional[str] = key(None, "a router artifact folder (t2iroute train ... -> OUT/router)")
    artifact_sha256: Optional[str] = key(None, "the artifact's manifest_sha256 as its publisher gave it: refuse "
                                         "any other")
    llm: Llm = section(Llm, "your own settings for the artifact's LLM featurizer (an artifact never sets endpoints "
                       "or paths)")
    embedding: Embedding = section(Embedding, "your own settings for the artifact's embedding featurizer")


@dataclass
class RoutingCommand(ArtifactCommand):
    """route and generate: the routing policy, at most one key (none: the artifact's default)."""

    PROMPTS: ClassVar[bool] = True
    lam: Optional[float] = key(None, "argmax q - lam * c", ge=0)
    budget: Optional[float] = key(None, "a target mean cost per prompt (lambda calibrated on these prompts)")
    quality_floor: Optional[float] = key(None, "per prompt: the cheapest backend predicted to reach this quality")
    max_cost: Optional[float] = key(None, "per prompt: the best predicted backend costing at most this")
    policy: Any = key(None, "any policy spec, plug-ins too: 'policy={type: NAME, ...}', or the text form "
                      "'policy=\"budget=0.3\"' (at most one policy key)")


@dataclass
class Route(RoutingCommand):
    GROUPS: ClassVar[tuple[Group, ...]] = (_BACKENDS,)
    ABOUT: ClassVar[str] = 'route prompts with a router artifact: t2iroute route "a red car" artifact=DIR'
    EXAMPLE: ClassVar[str] = ('t2iroute route "a red car" "two dogs" artifact=DIR lam=0.1  |  ... artifact=DIR -- '
                              '"style=oil paint"')
    prompts_file: Optional[str] = key(None, "more prompts from a file (txt/tsv/csv/jsonl), - for stdin")
    verbose: bool = verbose()
    threads: Optional[int] = threads()


@dataclass
class Generate(RoutingCommand):
    GROUPS: ClassVar[tuple[Group, ...]] = (
        _BACKENDS, Group("scorer", None, "score the image too, e.g. scorer=clip (or clip_tiny offline)"))
    ABOUT: ClassVar[str] = ('route and generate: t2iroute generate "a red car" artifact=DIR out=img.png '
                            '(several prompts or prompts_file=: out_dir=DIR)')
    EXAMPLE: ClassVar[str] = 't2iroute generate "a red car" artifact=DIR out=car.png seed=0 scorer=clip_tiny'
    out: str = key("image.png", "png, jpg, webp...: written atomically", check=ck.image_path)
    seed: int = seed("the image's seed: an integer in [0, 2**63-1] (several prompts: each gets it)")
    out_dir: Optional[str] = key(None, "several prompts: OUT/NNNN.png + OUT/generations.jsonl; a re-run with the "
                                 "same prompts and seed skips the images there", check=ck.out_folder)
    prompts_file: Optional[str] = key(None, "one prompt per line, - for stdin, or a prompt set (partiprompts, "
                                      "drawbench...)")
    chunk_size: int = key(32, "route and generate this many prompts at a time (budget= calibrates once, on all "
                          "prompts)", ge=1)
    progress: Literal["auto", True, False] = key("auto", "a progress bar on stderr: auto (when stderr is a "
                                                 "terminal), true or false")
    backend: Optional[str] = key(None, "run this backend instead of the routed choice (a baseline)")
    fallback: bool = key(True, "on failure, try the next best backend")
    verbose: bool = verbose()
    threads: Optional[int] = threads()


@dataclass
class Serve(ArtifactCommand):
    GROUPS: ClassVar[tuple[Group, ...]] = (_BACKENDS,)
    ABOUT: ClassVar[str] = ("an OpenAI-compatible image endpoint that routes every request: t2iroute serve "
                            "artifact=DIR port=8000")
    EXAMPLE: ClassVar[str] = "t2iroute serve artifact=outputs/demo/testbed/router port=8000 api_keys_env=T2IROUTE_API_KEYS"
    host: str = key("127.0.0.1", "the address to serve on (loopback by default)")
    port: int = key(8000, "the port", ge=1, le=65535)
    api_keys_env: Optional[str] = key(None, "the NAME of an environment variable holding accepted keys "
                                      "(comma-separated); null: no auth")
    image_dir: Optional[str] = key(None, "where response_format=url images are kept (null: url is refused)",
                                   check=ck.out_folder)
    max_queue: int = key(64, "generation and route requests accepted at once; more get 429 with Retry-After", ge=1)
    max_n: int = key(8, "the most images one request may ask for", ge=1, le=128)
    max_route_prompts: int = key(256, "the most prompts one POST /v1/route may hold; more get 400", ge=1, le=100000)
    warmup: bool = key(True, "load every backend (and the featurizer) when the server starts: GET /ready answers "
                       "503 until then (GET /health: ok at once); requests meanwhile wait. false: load on first use")
    verbose: bool = verbose(libraries=False)
    engine: Literal["process", "ray"] = key("process", "process: one uvicorn process; ray: Ray Serve, a router "
                                            "deployment + one per model")
    ray: RayServeOptions = section(RayServeOptions, "engine=ray only (pip install 't2iroute[ray]'); docs/ray.md")
    threads: Optional[int] = threads()


@dataclass
class Split:
    fractions: list[float] = key([0.7, 0.1, 0.2], "train, validation, test; bench's headline model fits on "
                                 "train+validation", ge=0, length=3)


@dataclass
class TrainingCommand(Command):
    GROUPS: ClassVar[tuple[Group, ...]] = (
        Group("data", "???", "the quality table, required (custom: your own, data.path=FILE)"),
        Group("features", ["embedding", "lexical"], "the prompt features the predictor reads, composed: "
              "features=[embedding,lexical,llm]"),
        Group("predictor", "auto", "picks knn, ridge, lgbm or stack by cross-validation on the routing objective"))
    metric: str = key("${data.metric}", "the quality metric of the table to route on (default: the data config's)")
    seed: int = seed("the seed of the train/validation/test split and of the models")
    anchor: Literal[True, False, "auto"] = key(
        "auto", "leave the best single (training) backend only where predicted as good, or cheaper at a loss "
        "(true | false | auto; auto: predictor=auto decides by CV, always anchored below 2,000 training rows; "
        "other predictors: anchored below 2,000 rows)")
    split: Split = section(Split)


@dataclass
class Calibration:
    budgets: list[float] = key([0.25, 0.5, 0.75], "target mean costs to calibrate lambda for, as fractions of the "
                               "way from the cheapest backend to the best single one", ge=0, min_len=0)


@dataclass
class Throughput:
    enabled: bool = key(True, "measure routing speed on the test prompts")
    n_batch: int = key(1000, "prompts routed in one batch (cold embedding cache)", ge=1)
    n_single: int = key(200, "prompts routed one at a time (the single-prompt p50)", ge=1)


@dataclass
class Bench(TrainingCommand):
    ABOUT: ClassVar[str] = "run a benchmark: router vs single backends vs oracle on a held-out split"
    EXAMPLE: ClassVar[str] = "t2iroute bench data=agiqa3k metric=mos_align seed=0 out_dir=outputs/agiqa"
    calibration: Calibration = section(Calibration)
    throughput: Throughput = section(Throughput)
    out_dir: str = key("outputs/bench/${data.name}-${metric}-seed${seed}", "the run folder: summary.json, "
                       "curves.png, config.yaml, the log", check=ck.out_folder)
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
        Group("backends", [], "configs of the table's backends to store in the artifact, e.g. [tiny_10,tiny_20]"),)
    ABOUT: ClassVar[str] = "train a router and save it as an artifact folder"
    EXAMPLE: ClassVar[str] = "t2iroute train data=tifa160 router.budget=2.5 out_dir=outputs/tifa   # -> outputs/tifa/router"
    router: RouterPolicy = section(RouterPolicy, "the artifact's default policy: at most one of")
    out_dir: str = key("outputs/train/${data.name}-${metric}-seed${seed}", "the run folder; the artifact is "
                       "OUT/router", check=ck.out_folder)
    verbose: bool = verbose()
    threads: Optional[int] = threads()


@dataclass
class Sweep(Command):
    GROUPS: ClassVar[tuple[Group, ...]] = (
        Group("backends", ["tiny_10", "tiny_20"], "the backends to generate with, e.g. backends=[sd15_20,sd15_50]"),
        Group("scorer", "clip_tiny", "scores every image: clip (CLIPScore) or clip_tiny (random weights, offline)"))
    ABOUT: ClassVar[str] = "generate prompts x backends x seeds, score, append rows to OUT/quality.parquet"
    EXAMPLE: ClassVar[str] = ("t2iroute sweep backends=[tiny_10,tiny_20] prompts=partiprompts limit=50 seeds=[0,1] "
                              "out_dir=OUT")
    prompts: str = key("partiprompts", "a bundled set (partiprompts, geneval) or a .txt/.tsv/.csv/.jsonl file")
    limit: Optional[int] = key(None, "only the first N prompts", ge=1)
    seeds: list[int] = key([0], "one image per prompt, backend and seed: integers in [0, 2**63-1]",
                           ge=0, le=ck.SEED_MAX)
    shard: int = key(0, "this process's share of the prompts: shard in [0, num_shards)", ge=0)
    num_shards: int = key(1, "the number of processes sharing the sweep", ge=1)
    chunk_size: int = key(8, "rows per atomic part file", ge=1)
    keep_images: bool = key(False, "keep the images as OUT/images/BACKEND/PROMPT_ID-sSEED.png")
    out_dir: str = key("outputs/sweep", "the table folder: OUT/quality.parquet (re-runs resume it), failures.jsonl, "
                       "the log", check=ck.out_folder)
    verbose: bool = verbose(libraries=False)
    launcher: Literal["local", "ray"] = key("local", "local: this process, one item after another; ray: Ray actors "
                                            "across GPUs and machines")
    ray: RayOptions = section(RayOptions, "launcher=ray only (pip install 't2iroute[ray]'); docs/ray.md")
    threads: Optional[int] = threads()


#: the commands' configs, in the order ``t2iroute --help`` lists them
CONFIGS: dict[str, type[Command]] = {"bench": Bench, "train": Train, "sweep": Sweep, "route": Route,
                                     "generate": Generate, "serve": Serve}


# -- what the declarations give ---------------------------------------------------------------------

def checks_for(cmd: str) -> dict[str, Any]:
    """``{dotted key: check(key, value)}`` of the command's checked keys."""
    return {k.name: c for k in keys(CONFIGS[cmd]) if not k.section and (c := check_of(k)) is not None}


def defaults_list(cmd: str) -> list:
    cls = CONFIGS[cmd]
    return [{g.name: g.default} for g in cls.GROUPS] + [{"hydra": cls.HYDRA}, "_self_"]


def node(cmd: str) -> dict:
    """The command's config as Hydra composes it: the defaults list and the keys' defaults."""
    return {"defaults": defaults_list(cmd), **dataclasses.asdict(CONFIGS[cmd]())}


def register() -> None:
    """Store every command's config in Hydra's ConfigStore (under its name: ``config_name=route``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for cmd in CONFIGS:
        cs.store(name=cmd, node=node(cmd))
