"""What the Ray sweep and the Ray server share: options, the cluster connection, model groups."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from t2iroute.errors import ConfigError

log = logging.getLogger(__name__)


def option(default, help: str, **meta):
    """A field of an options dataclass with its help text and range (``ge``, ``le``): the CLI's
    schema (:mod:`t2iroute.cli.schema`) reads them for ``--help`` and its checks."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class RayOptions:
    """``ray.*`` keys of the sweep and serve configs.

    ``address``: ``local`` starts a Ray instance on this machine for the run (``num_cpus`` of its
    CPUs, default all); ``auto`` joins the cluster ``ray start --head`` started on this machine;
    ``HOST:PORT`` joins a head on another machine (``ray://HOST:10001`` through Ray Client).
    Each worker (a sweep actor, a model replica) asks Ray for ``num_cpus_per_worker`` CPUs and
    ``num_gpus_per_worker`` GPUs (null: one GPU for a model whose backends run on cuda, none
    otherwise; 0.5 puts two models on one GPU).
    """

    address: str = option(
        "local",
        "local: a Ray instance on this machine for the run; auto: the cluster `ray start "
        "--head` runs here; HOST:PORT or ray://HOST:10001: a remote head",
    )
    num_cpus: int | None = option(None, "address=local only: the CPUs it offers (default: all)", ge=1)
    workers_per_model: int = option(
        1, "actors per model; an actor loads the model once and runs every step budget of it", ge=1
    )
    num_cpus_per_worker: float = option(1.0, "CPUs each actor reserves (also its torch threads)", ge=0)
    num_gpus_per_worker: float | None = option(
        None,
        "GPUs each actor reserves; null: 1 if the model's backends say device cuda, else 0; 0.5: two per GPU",
        ge=0,
    )
    max_retries: int = option(2, "times a unit is re-run after its worker died, then it goes to failures.jsonl", ge=0)
    max_in_flight: int = option(2, "units queued on one actor at a time (keeps it busy between units)", ge=1)
    object_store_memory: int | None = option(
        None, "address=local only: bytes of Ray's object store (default: Ray's)", ge=1 << 20
    )

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> "RayOptions":
        opts = options_from(cls, m, nullable=("num_gpus_per_worker",))
        for k in ("workers_per_model", "max_in_flight"):
            if int(getattr(opts, k)) < 1:
                raise ConfigError(f"ray.{k}={getattr(opts, k)}: need at least 1")
        if int(opts.max_retries) < 0:
            raise ConfigError(f"ray.max_retries={opts.max_retries}: need 0 or more")
        if float(opts.num_cpus_per_worker) < 0 or (
            opts.num_gpus_per_worker is not None and float(opts.num_gpus_per_worker) < 0
        ):
            raise ConfigError("ray.num_cpus_per_worker and ray.num_gpus_per_worker must be >= 0")
        if not str(opts.address).strip():
            raise ConfigError("ray.address='': give local, auto, HOST:PORT or ray://HOST:PORT")
        return opts

    def gpus_for(self, specs: Mapping[str, Mapping[str, Any]]) -> float:
        if self.num_gpus_per_worker is not None:
            return float(self.num_gpus_per_worker)
        return 1.0 if any(str(s.get("device", "cpu")).startswith("cuda") for s in specs.values()) else 0.0


def options_from(cls, m: Mapping[str, Any] | None, *, nullable: tuple = ()):
    """The dataclass ``cls`` from a ``ray.*`` mapping: unknown keys refused by name; a null keeps the
    default unless its key is in ``nullable`` (null means something there)."""
    m = dict(m or {})
    known = {f.name for f in fields(cls)}
    extra = sorted(set(m) - known)
    if extra:
        raise ConfigError(f"ray.{extra[0]}: unknown key; known: {sorted(known)}")
    return cls(**{k: v for k, v in m.items() if v is not None or k in nullable})


def import_ray():
    if not _is_terminal():  # worker lines forwarded to a log file or a pipe: no colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # the (Worker pid=...) prefixes
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # the green '[repeated Nx across cluster]' (read at import)
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray is not installed: pip install 't2iroute[ray]' (or launcher=local)") from None
    return ray


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def worker_verbose(verbose: bool | None = None) -> bool:
    """The verbose flag a Ray worker applies (:func:`t2iroute.quiet.quiet_libraries`): the one
    given, else this (the driver's) process's setting (quiet when never set)."""
    if verbose is None:
        from t2iroute.quiet import is_verbose

        verbose = bool(is_verbose())
    return bool(verbose)


def connect(opts: RayOptions) -> bool:
    """Join or start the cluster ``opts.address`` names. True when this call started Ray here
    (the caller shuts it down); a process already connected keeps its connection."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    if str(opts.address) == "local":
        kw.update(num_cpus=opts.num_cpus, include_dashboard=False)
        if opts.object_store_memory:
            kw["object_store_memory"] = int(opts.object_store_memory)
        ray.init(address="local", **kw)  # a new instance, never a cluster that happens to run here
    else:
        if opts.num_cpus is not None:
            log.warning(
                "ray.num_cpus=%s applies to a local instance only; the cluster at %s has its own",
                opts.num_cpus,
                opts.address,
            )
        try:
            ray.init(address=str(opts.address), **kw)
        except Exception as e:  # noqa: BLE001 -- ConnectionError, ValueError: say which address
            raise ConfigError(
                f"ray.address={opts.address}: cannot join that Ray cluster ({type(e).__name__}: {e}); "
                "start one with `ray start --head`, or use ray.address=local"
            ) from None
    return True


def model_group(name: str, spec: Mapping[str, Any]) -> str:
    """The key of the weights a backend needs: backends with one key share one worker (one loaded
    pipeline per worker: the step budgets of a model share its weights)."""
    spec = dict(spec)
    kind = spec.get("type", "diffusers")
    if kind == "diffusers":
        from t2iroute.backends.diffusers_backend import pipeline_key

        return json.dumps([kind, *pipeline_key(spec)])
    return json.dumps([kind, name])


def group_label(key: str) -> str:
    kind, what = json.loads(key)[:2]
    return str(what) if kind == "diffusers" else f"{kind}:{what}"


def groups_of(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """model group -> {backend name: spec}, in the order the backends come."""
    out: dict[str, dict[str, dict]] = {}
    for name, spec in specs.items():
        out.setdefault(model_group(name, spec), {})[name] = dict(spec)
    return out


def check_fits(cpus: float, gpus: float, *, what: str, keys: str, count: int = 1) -> None:
    """Refuse, naming the keys, what the cluster can never hold (Ray would wait for it forever)."""
    import ray

    total = ray.cluster_resources()
    have_cpu, have_gpu = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    if cpus * count > have_cpu + 1e-9 or gpus * count > have_gpu + 1e-9:
        raise ConfigError(
            f"{what}: {cpus * count:g} CPUs and {gpus * count:g} GPUs needed; "
            f"the Ray cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs: lower {keys}"
            + (" (or give the backends device: cpu)" if gpus and not have_gpu else "")
        )
