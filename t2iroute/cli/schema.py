"""The commands' typed configs: the one schema of every key.

Each command's config is a dataclass (route, generate, serve below; bench, train, sweep in
:mod:`t2iroute.cli.training_schema`; what several share in :mod:`t2iroute.cli.sections`): a
field's type, default, range (``ge``, ``le``) and help text are declared once (``ray.*``: the
options dataclasses of :mod:`t2iroute.cluster` and :mod:`t2iroute.serving.ray`). From them come the config Hydra composes (stored in its
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
from t2iroute.cli.sections import Command, Embedding, Llm, seed, threads, verbose
from t2iroute.cli.training_schema import Bench, Replay, Sweep, Train
from t2iroute.cli.typed import Group, check_of, key, keys, section
from t2iroute.serving.ray import RayServeOptions

# route, generate, serve (bench, train, sweep: t2iroute.cli.training_schema; the keys several
# commands share: t2iroute.cli.sections)

_BACKENDS = Group("backends", [], "override the artifact's backend configs, e.g. backends=[tiny_10,tiny_20]")


@dataclass
class ArtifactCommand(Command):
    HYDRA: ClassVar[str] = "quiet"
    artifact: Optional[str] = key(None, "a router artifact folder (t2iroute train ... -> OUT/router)")
    artifact_sha256: Optional[str] = key(
        None, "the artifact's manifest_sha256 as its publisher gave it: refuse any other"
    )
    llm: Llm = section(
        Llm, "your own settings for the artifact's LLM featurizer (an artifact never sets endpoints or paths)"
    )
    embedding: Embedding = section(Embedding, "your own settings for the artifact's embedding featurizer")


@dataclass
class RoutingCommand(ArtifactCommand):
    """route and generate: the routing policy, at most one key (none: the artifact's default)."""

    PROMPTS: ClassVar[bool] = True
    lam: Optional[float] = key(None, "argmax q - lam * c", ge=0)
    budget: Optional[float] = key(None, "a target mean cost per prompt (lambda calibrated on these prompts)")
    quality_floor: Optional[float] = key(None, "per prompt: the cheapest backend predicted to reach this quality")
    max_cost: Optional[float] = key(None, "per prompt: the best predicted backend costing at most this")
    policy: Any = key(
        None,
        "any policy spec, plug-ins too: 'policy={type: NAME, ...}', or the text form "
        "'policy=\"budget=0.3\"' (at most one policy key)",
    )


@dataclass
class Route(RoutingCommand):
    GROUPS: ClassVar[tuple[Group, ...]] = (_BACKENDS,)
    ABOUT: ClassVar[str] = 'route prompts with a router artifact: t2iroute route "a red car" artifact=DIR'
    EXAMPLE: ClassVar[str] = (
        't2iroute route "a red car" "two dogs" artifact=DIR lam=0.1  |  ... artifact=DIR -- "style=oil paint"'
    )
    prompts_file: Optional[str] = key(None, "more prompts from a file (txt/tsv/csv/jsonl), - for stdin")
    verbose: bool = verbose()
    threads: Optional[int] = threads()


@dataclass
class Generate(RoutingCommand):
    GROUPS: ClassVar[tuple[Group, ...]] = (
        _BACKENDS,
        Group("scorer", None, "score the image too, e.g. scorer=clip (or clip_tiny offline)"),
    )
    ABOUT: ClassVar[str] = (
        'route and generate: t2iroute generate "a red car" artifact=DIR out=img.png '
        "(several prompts or prompts_file=: out_dir=DIR)"
    )
    EXAMPLE: ClassVar[str] = 't2iroute generate "a red car" artifact=DIR out=car.png seed=0 scorer=clip_tiny'
    out: str = key("image.png", "png, jpg, webp...: written atomically", check=ck.image_path)
    seed: int = seed("the image's seed: an integer in [0, 2**63-1] (several prompts: each gets it)")
    out_dir: Optional[str] = key(
        None,
        "several prompts: OUT/NNNN.png + OUT/generations.jsonl; a re-run with the "
        "same prompts and seed skips the images there",
        check=ck.out_folder,
    )
    prompts_file: Optional[str] = key(
        None, "one prompt per line, - for stdin, or a prompt set (partiprompts, drawbench...)"
    )
    chunk_size: int = key(
        32, "route and generate this many prompts at a time (budget= calibrates once, on all prompts)", ge=1
    )
    progress: Literal["auto", True, False] = key(
        "auto", "a progress bar on stderr: auto (when stderr is a terminal), true or false"
    )
    backend: Optional[str] = key(None, "run this backend instead of the routed choice (a baseline)")
    fallback: bool = key(True, "on failure, try the next best backend")
    verbose: bool = verbose()
    threads: Optional[int] = threads()


@dataclass
class DecisionLogOptions:
    prompts: bool = key(
        True,
        "keep each prompt's text in the log (false: only its SHA-256 and feature vector, which still "
        "retrain a router on the same features)",
    )
    features: bool = key(True, "keep each prompt's feature vector")
    max_mb: float = key(256.0, "rotate the log file past this size (MiB)", ge=0.0625)
    max_files: int = key(8, "rotated log files kept (the oldest removed)", ge=1)


@dataclass
class AutoscoreOptions:
    share: float = key(
        0.0,
        "score this share of served images in a background thread and record the scores as feedback "
        "(needs log_dir); 0: off",
        ge=0,
        le=1,
    )
    scorer: str = key(
        "clip", "the scorer config (conf/scorer) or registered scorer type; it must score the router's metric"
    )
    max_queue: int = key(64, "images waiting to be scored at most; more are dropped (counted), never waited for", ge=1)


@dataclass
class Serve(ArtifactCommand):
    GROUPS: ClassVar[tuple[Group, ...]] = (_BACKENDS,)
    ABOUT: ClassVar[str] = (
        "an OpenAI-compatible image endpoint that routes every request: t2iroute serve artifact=DIR port=8000"
    )
    EXAMPLE: ClassVar[str] = (
        "t2iroute serve artifact=outputs/demo/testbed/router port=8000 api_keys_env=T2IROUTE_API_KEYS"
    )
    host: str = key("127.0.0.1", "the address to serve on (loopback by default)")
    port: int = key(8000, "the port", ge=1, le=65535)
    api_keys_env: Optional[str] = key(
        None, "the NAME of an environment variable holding accepted keys (comma-separated); null: no auth"
    )
    image_dir: Optional[str] = key(
        None, "where response_format=url images are kept (null: url is refused)", check=ck.out_folder
    )
    max_queue: int = key(64, "generation and route requests accepted at once; more get 429 with Retry-After", ge=1)
    max_n: int = key(8, "the most images one request may ask for", ge=1, le=128)
    max_route_prompts: int = key(256, "the most prompts one POST /v1/route may hold; more get 400", ge=1, le=100000)
    log_dir: Optional[str] = key(
        None,
        "log every served image's decision here (SQLite, WAL; POST /v1/feedback scores them; "
        "t2iroute train feedback=DIR learns from them); null: no log, no feedback",
        check=ck.out_folder,
    )
    log: DecisionLogOptions = section(DecisionLogOptions, "the decision log (log_dir=DIR only)")
    autoscore: AutoscoreOptions = section(AutoscoreOptions, "automatic scores of served images (log_dir=DIR only)")
    reload_poll_s: float = key(
        0.0,
        "reload the artifact when its folder's checksum changes (train replaced it), checked this often; "
        "0: only on POST /admin/reload or SIGHUP",
        ge=0,
    )
    explore: float = key(
        0.0,
        "the share of generation requests sent to a backend other than the policy's choice, uniformly "
        "among those within the request's max_cost (logged with its propensity); 0: never",
        ge=0,
        le=0.99,
    )
    warmup: bool = key(
        True,
        "load every backend (and the featurizer) when the server starts: GET /ready answers "
        "503 until then (GET /health: ok at once); requests meanwhile wait. false: load on first use",
    )
    verbose: bool = verbose(libraries=False)
    engine: Literal["process", "ray"] = key(
        "process", "process: one uvicorn process; ray: Ray Serve, a router deployment + one per model"
    )
    ray: RayServeOptions = section(RayServeOptions, "engine=ray only (pip install 't2iroute[ray]'); docs/ray.md")
    threads: Optional[int] = threads()


@dataclass
class Mcp(ArtifactCommand):
    GROUPS: ClassVar[tuple[Group, ...]] = (_BACKENDS,)
    ABOUT: ClassVar[str] = (
        "the router as MCP tools for agents (generate_image, route, list_backends): t2iroute mcp artifact=DIR"
    )
    EXAMPLE: ClassVar[str] = "t2iroute mcp artifact=outputs/demo/testbed/router transport=http port=8765"
    transport: Literal["stdio", "http"] = key(
        "stdio", "stdio (the client starts this command) or http (streamable HTTP at http://HOST:PORT/mcp)"
    )
    host: str = key("127.0.0.1", "transport=http: the address to serve on (loopback by default)")
    port: int = key(8765, "transport=http: the port", ge=1, le=65535)
    max_route_prompts: int = key(256, "the most prompts one route call may hold", ge=1, le=100000)
    verbose: bool = verbose()
    threads: Optional[int] = threads()


CONFIGS: dict[str, type[Command]] = {
    "bench": Bench,
    "train": Train,
    "sweep": Sweep,
    "replay": Replay,
    "route": Route,
    "generate": Generate,
    "serve": Serve,
    "mcp": Mcp,
}


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
