"""``t2iroute serve ... engine=ray``: the same HTTP API on Ray Serve, one deployment per model.

Deployments of the application ``t2iroute``:

* ``router``: the FastAPI app of :func:`t2iroute.serving.create_app` (same endpoints, batching
  window, fallback, metrics) around the artifact's :class:`~t2iroute.Router`, whose backends are
  handles to the model deployments below. It runs on the node that started the server (the
  artifact and ``image_dir`` are that machine's); ``ray.router_replicas`` of it.
* ``model-<i>-<model>``: one per model group (the backends that share a loaded pipeline: every
  step budget of one model), each replica with ``ray.num_cpus_per_replica`` CPUs and
  ``ray.num_gpus_per_replica`` GPUs, autoscaled between ``ray.min_replicas`` and
  ``ray.max_replicas`` on ``ray.target_ongoing_requests`` per replica.

A request that reaches a model replica which dies is sent again, with backoff, to another
replica (Serve starts a new one where none is left) for up to ``ray.retry_window_s`` seconds
(within ``ray.timeout_s``); then the backend counts as failed and the router falls back to the prompt's next choice, as in one
process. A request never disappears: it gets its images or an error status.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from t2iroute.cluster import group_label, groups_of, import_ray, option, options_from, worker_verbose
from t2iroute.errors import ConfigError

log = logging.getLogger(__name__)
APP_NAME = "t2iroute"


@dataclass
class RayServeOptions:
    """``ray.*`` keys of ``t2iroute serve engine=ray``, each with its help text and range."""

    address: str = option(
        "local",
        "local: a Ray instance on this machine; auto: the cluster `ray start --head` "
        "runs here; HOST:PORT: a remote head",
    )
    num_cpus: int | None = option(None, "address=local only: the CPUs it offers (default: all)", ge=1)
    router_replicas: int = option(
        1, "replicas of the HTTP router (on this machine: the artifact and image_dir are here)", ge=1
    )
    router_num_cpus: float = option(
        0.0, "CPUs each router replica reserves (routing is light; 0 leaves them to the models)", ge=0
    )
    num_cpus_per_replica: float = option(1.0, "CPUs each model replica reserves (also its torch threads)", ge=0)
    num_gpus_per_replica: float | None = option(
        None, "GPUs each model replica reserves; null: 1 if the model's backends say device cuda, else 0", ge=0
    )
    min_replicas: int = option(1, "replicas per model; max_replicas above it turns on Serve's autoscaling", ge=1)
    max_replicas: int = option(1, "the most replicas per model (autoscaling above min_replicas)", ge=1)
    target_ongoing_requests: float = option(2.0, "autoscaling target: requests in progress per model replica", ge=0)
    max_ongoing_requests: int = option(4, "requests one model replica holds at once; more wait in the router", ge=1)
    retry_window_s: float = option(
        120.0, "a call whose model replica died is sent again (backoff up to 2 s) this long, then falls back", ge=0
    )
    timeout_s: float = option(600.0, "the most one backend call may take, retries included", ge=0)
    health_check_period_s: float = option(2.0, "how often Serve checks a model replica (a dead one is replaced)", ge=0)
    object_store_memory: int | None = option(
        None, "address=local only: bytes of Ray's object store (default: Ray's)", ge=1 << 20
    )

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> "RayServeOptions":
        o = options_from(cls, m, nullable=("num_gpus_per_replica",))
        for k in ("router_replicas", "min_replicas", "max_replicas", "max_ongoing_requests"):
            if int(getattr(o, k)) < 1:
                raise ConfigError(f"ray.{k}={getattr(o, k)}: need at least 1")
        if int(o.max_replicas) < int(o.min_replicas):
            raise ConfigError(f"ray.max_replicas={o.max_replicas} is below ray.min_replicas={o.min_replicas}")
        if float(o.retry_window_s) < 0 or float(o.timeout_s) <= 0 or float(o.target_ongoing_requests) <= 0:
            raise ConfigError("ray.retry_window_s must be >= 0, ray.timeout_s and ray.target_ongoing_requests > 0")
        return o

    def sweep_options(self):
        from t2iroute.cluster import RayOptions

        return RayOptions(
            address=self.address,
            num_cpus=self.num_cpus,
            object_store_memory=self.object_store_memory,
            num_gpus_per_worker=self.num_gpus_per_replica,
        )


class ModelServer:
    """A model deployment's replica: the backends of one model group, one loaded pipeline."""

    def __init__(
        self, specs: Mapping[str, Mapping[str, Any]], threads: int, verbose: bool = False, warmup: bool = False
    ):
        from t2iroute import threads as _threads
        from t2iroute.backends import build_backends
        from t2iroute.quiet import quiet_libraries

        quiet_libraries(verbose, worker=True)  # the driver's verbose flag: bars and warnings only with it
        _threads.configure(max(1, int(threads)), force=True)
        self.backends = build_backends(dict(specs))
        if warmup:  # load the pipeline before the replica counts as started (serve.run waits for it)
            from t2iroute.backends.base import load_backends

            load_backends(self.backends)

    def pid(self) -> int:
        return os.getpid()

    def generate(self, backend: str, prompts: list, seeds: list) -> list:
        return self.backends[backend].generate(prompts, seeds=seeds)


class RayModelBackend:
    """A backend whose images a model deployment makes (a handle to it, and the config's shape)."""

    def __init__(
        self, name: str, handle, spec: Mapping[str, Any], *, retry_window_s: float = 120.0, timeout_s: float = 600.0
    ):
        self.name, self.handle = name, handle
        self.width, self.height = int(spec.get("width", 512)), int(spec.get("height", 512))
        self.batch_size = int(spec.get("batch_size", 1))
        self.retry_window_s, self.timeout_s = float(retry_window_s), float(timeout_s)
        self.n_retried = 0

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], **opts) -> list:
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        deadline = time.monotonic() + self.timeout_s
        first_death, attempt = None, 0
        while True:
            try:
                return self.handle.generate.remote(self.name, list(prompts), [int(s) for s in seeds]).result(
                    timeout_s=max(0.001, deadline - time.monotonic())
                )
            except RayTaskError as e:  # the backend raised: not retried (the router falls back)
                raise (e.cause if isinstance(e.cause, Exception) else e) from None
            except GetTimeoutError:
                raise TimeoutError(
                    f"backend '{self.name}': no answer within ray.timeout_s={self.timeout_s:g}"
                ) from None
            except RayActorError as e:  # the replica died: Serve routes the retry to a live (or a new) one
                now = time.monotonic()
                first_death = first_death or now
                if now - first_death > self.retry_window_s or now >= deadline:
                    raise RuntimeError(
                        f"backend '{self.name}': its replicas kept dying for "
                        f"{now - first_death:.1f} s ({attempt} retries): {str(e).splitlines()[0][:200]}"
                    ) from None
                self.n_retried += 1
                log.warning(
                    "backend %s: its replica died (%s); retry %d", self.name, str(e).splitlines()[0][:200], attempt + 1
                )
                time.sleep(min(0.25 * 2**attempt, 2.0))
                attempt += 1


class RouterServer:
    """The ingress replica: loads the router with handles for backends and serves its app."""

    def __init__(
        self,
        artifact: str,
        backend_specs: Mapping[str, Mapping[str, Any]],
        handles: Mapping[str, Any],
        group_of: Mapping[str, str],
        local: Mapping[str, Any] | None,
        app_kwargs: Mapping[str, Any],
        retry_window_s: float,
        timeout_s: float,
        expected_sha256: str | None = None,
        verbose: bool = False,
    ):
        from t2iroute.quiet import quiet_libraries
        from t2iroute.router.core import Router
        from t2iroute.serving import create_app

        quiet_libraries(verbose, worker=True)  # the driver's verbose flag (the featurizer's models load here)

        backends = {
            n: RayModelBackend(
                n, handles[group_of[n]], backend_specs[n], retry_window_s=retry_window_s, timeout_s=timeout_s
            )
            for n in backend_specs
        }
        self.router = Router.load(artifact, backends=backends, local=dict(local or {}), expected_sha256=expected_sha256)
        self.router.warmup()
        # the artifact folder is this machine's (the router runs here): POST /admin/reload and
        # reload_poll_s load it again
        self._asgi = create_app(
            self.router, engine="ray", artifact_path=artifact, local=dict(local or {}), **dict(app_kwargs)
        )

    def __serve_build_asgi_app__(self):
        return self._asgi


def _deployment_name(i: int, label: str) -> str:
    return f"model-{i}-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", label)[-60:].strip("-")


def build_app(
    artifact: str,
    backend_specs: Mapping[str, Mapping[str, Any]],
    opts: RayServeOptions,
    *,
    local: Mapping[str, Any] | None = None,
    app_kwargs: Mapping[str, Any] | None = None,
    expected_sha256: str | None = None,
    warmup: bool = False,
    verbose: bool | None = None,
):
    """The Ray Serve application (router + one deployment per model group); not started.

    ``warmup``: each model replica loads its pipeline when it starts (Serve sends it requests only
    once it has); ``verbose``: the libraries' bars and warnings in the replicas (default: this
    process's setting, :mod:`t2iroute.quiet`)."""
    ray = import_ray()
    from ray import serve

    from t2iroute.cluster import check_fits

    threads = max(1, int(opts.num_cpus_per_replica))
    handles, group_of = {}, {}
    groups = groups_of(backend_specs)
    need_gpus = sum(opts.sweep_options().gpus_for(specs) for specs in groups.values())
    check_fits(
        float(opts.num_cpus_per_replica) * len(groups) * int(opts.min_replicas)
        + float(opts.router_num_cpus) * int(opts.router_replicas),
        need_gpus * int(opts.min_replicas),
        what=f"{opts.min_replicas} replica(s) of {len(groups)} model(s)",
        keys="ray.min_replicas / ray.num_cpus_per_replica / ray.num_gpus_per_replica / ray.router_num_cpus",
        count=1,
    )
    for i, (key, specs) in enumerate(groups.items()):
        gpus = opts.sweep_options().gpus_for(specs)
        scaling = (
            {"num_replicas": int(opts.min_replicas)}
            if opts.min_replicas == opts.max_replicas
            else {
                "autoscaling_config": {
                    "min_replicas": int(opts.min_replicas),
                    "max_replicas": int(opts.max_replicas),
                    "target_ongoing_requests": float(opts.target_ongoing_requests),
                }
            }
        )
        dep = serve.deployment(ModelServer).options(
            name=_deployment_name(i, group_label(key)),
            max_ongoing_requests=int(opts.max_ongoing_requests),
            ray_actor_options={"num_cpus": float(opts.num_cpus_per_replica), "num_gpus": gpus},
            health_check_period_s=float(opts.health_check_period_s),
            **scaling,
        )
        handles[key] = dep.bind(specs, threads, worker_verbose(verbose), bool(warmup))
        for name in specs:
            group_of[name] = key
    # the router runs where the command runs: the artifact and image_dir are this machine's
    node = {f"node:{ray.util.get_node_ip_address()}": 0.001}
    router = serve.deployment(serve.ingress()(RouterServer)).options(
        name="router",
        num_replicas=int(opts.router_replicas),
        max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": float(opts.router_num_cpus), "resources": node},
    )
    return router.bind(
        str(artifact),
        {n: dict(s) for n, s in backend_specs.items()},
        handles,
        group_of,
        dict(local or {}),
        dict(app_kwargs or {}),
        float(opts.retry_window_s),
        float(opts.timeout_s),
        expected_sha256,
        worker_verbose(verbose),
    )


def start(
    artifact: str,
    backend_specs: Mapping[str, Mapping[str, Any]],
    opts: RayServeOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    local: Mapping[str, Any] | None = None,
    app_kwargs: Mapping[str, Any] | None = None,
    expected_sha256: str | None = None,
    name: str = APP_NAME,
    route_prefix: str = "/",
    warmup: bool = False,
    verbose: bool | None = None,
) -> bool:
    """Deploy and start answering on http://HOST:PORT/ROUTE_PREFIX (returns once every replica is
    up: with ``warmup``, once every model replica has loaded its pipeline) as the Serve application
    ``name``. True when this call started Ray here (the caller shuts it down)."""
    from t2iroute.cluster import connect

    if not backend_specs:
        raise ConfigError("engine=ray: the router has no backend configs to deploy (pass backends=[...])")
    import_ray()
    from ray import serve

    started = connect(opts.sweep_options())
    try:
        serve.start(http_options={"host": str(host), "port": int(port)})
        t0 = time.perf_counter()
        serve.run(
            build_app(
                artifact,
                backend_specs,
                opts,
                local=local,
                app_kwargs=app_kwargs,
                expected_sha256=expected_sha256,
                warmup=warmup,
                verbose=verbose,
            ),
            name=name,
            route_prefix=route_prefix,
        )
        log.info(
            "ray serve: the application is up in %.1f s%s",
            time.perf_counter() - t0,
            " (every model replica loaded its pipeline)" if warmup else "",
        )
    except BaseException:
        if started:
            import ray

            ray.shutdown()
        raise
    return started


def model_deployments(name: str = APP_NAME) -> list[str]:
    """The names of the running application's model deployments."""
    from ray import serve

    status = serve.status().applications.get(name)
    return sorted(n for n in (status.deployments if status else {}) if n.startswith("model-"))


def serve_until_signalled(
    artifact: str,
    backend_specs: Mapping[str, Mapping[str, Any]],
    opts: RayServeOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    local: Mapping[str, Any] | None = None,
    app_kwargs: Mapping[str, Any] | None = None,
    expected_sha256: str | None = None,
    warmup: bool = True,
    on_started=None,
) -> None:
    """``t2iroute serve engine=ray``: load the artifact here first (a bad artifact or backend
    config fails before anything is deployed), :func:`start`, call ``on_started(info)``, answer
    until SIGINT/SIGTERM, then tear the deployments down. ``backend_specs`` override the
    artifact's. Replicas finish the requests they hold; a signal sent to the whole process group
    (Ctrl-C, ``timeout``) also stops Ray's own processes, and shutting down can then hang: after
    120 s (30 s for Ray itself) the process exits."""
    import signal
    import sys
    import threading

    from t2iroute.router.core import Router

    router = Router.load(
        str(artifact), backends=dict(backend_specs) or None, local=local, expected_sha256=expected_sha256
    )
    specs = {**router.backend_specs, **backend_specs}
    started = start(
        os.path.abspath(str(artifact)),
        specs,
        opts,
        host=host,
        port=port,
        local=local,
        app_kwargs=app_kwargs,
        expected_sha256=expected_sha256,
        warmup=warmup,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    if on_started is not None:
        on_started({"backends": router.backend_names, "models": model_deployments()})
    try:
        while not stop.wait(0.5):
            pass
    finally:
        import ray
        from ray import serve

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
