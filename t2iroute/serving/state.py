"""One server's state: the router, its limits, the queue, the warm-up and the batcher.

:func:`t2iroute.serving.app.create_app` builds one :class:`ServerState` and stores it on
``app.state.t2iroute``; the handlers of :mod:`t2iroute.serving.openai_api` and
:mod:`t2iroute.serving.native_api` get it with the :func:`get_state` dependency."""

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from t2iroute.serving.errors import RequestError
from t2iroute.serving.metrics import RetryCollector, ServerMetrics
from t2iroute.serving.models import RequestModels
from t2iroute.serving.validation import check_key

log = logging.getLogger("t2iroute.serving.app")  # the server's one logger (as before the split)


class ServerState:
    """What the handlers share. ``inflight``: generation and route requests accepted and not yet
    answered (at most ``max_queue``); ``ready``: set once the warm-up is over (at once without one)."""

    def __init__(
        self,
        router,
        *,
        api_keys: list[str] | None,
        image_dir: str | None,
        max_queue: int,
        max_n: int,
        batch_window_s: float,
        engine: str,
        max_route_prompts: int,
        warmup: bool,
        on_ready: Callable[[dict], Any] | None,
        artifact_path: str | None = None,
        local: dict | None = None,
    ):
        self.router, self.api_keys, self.engine = router, api_keys, engine
        self.artifact_path, self.local = artifact_path, local
        self.loaded_at = time.time()
        self._reload_lock = threading.Lock()
        self.autoscorer = None  # set by create_app
        self.max_queue, self.max_n, self.max_route_prompts = max_queue, max_n, int(max_route_prompts)
        self.batch_window_s = batch_window_s
        self.backends = list(router.backend_names)
        self.sizes = {f"{getattr(b, 'width', 0)}x{getattr(b, 'height', 0)}" for b in router.backends.values()}
        self.image_root = Path(image_dir) if image_dir else None
        self.models = RequestModels(
            backends=self.backends,
            sizes=self.sizes,
            max_n=self.max_n,
            url=self.image_root is not None,
            max_route_prompts=self.max_route_prompts,
        )
        self.metrics = ServerMetrics(self.backends)
        self.metrics.registry.register(RetryCollector(router))
        self.metrics.artifact(self.artifact_info())
        self._lock = threading.Lock()
        self.inflight = 0
        self.warmup, self.on_ready = bool(warmup), on_ready
        self.ready = threading.Event()
        self.warm_started, self.warmup_s, self.failed = False, None, {}
        self.pending: dict = {}  # (policy, forced backend) -> jobs waiting for the batch window
        if not warmup:
            self.ready.set()

    def artifact_info(self) -> dict:
        """The artifact being served: its manifest checksum, folder and when it was loaded."""
        return {
            "sha256": self.router.manifest.get("manifest_sha256"),
            "path": self.artifact_path,
            "loaded_at": self.loaded_at,
        }

    def reload(self) -> dict:
        """Load the artifact folder again (``train`` replaces it atomically) and swap the router
        in: a generation batch already running finishes on the old one, every later one runs on
        the new one. Backends whose config is unchanged keep their loaded models; the decision
        log and exploration carry over. Raises (the old router keeps serving) if the new
        artifact does not load."""
        from t2iroute.router.core import Router

        if not self.artifact_path:
            raise RequestError(
                "this server was not started from an artifact folder: nothing to reload", None, status=409
            )
        with self._reload_lock:  # one reload at a time
            old = self.router
            t0 = time.perf_counter()
            new = Router.load(self.artifact_path, local=self.local)
            for name, be in old.backends.items():
                same = name in new.backends and new.backend_specs.get(name) == old.backend_specs.get(name)
                if same or (name not in new.backend_specs and name not in new.backends):
                    new.backends[name] = be  # loaded models and baselines stay
            new.decision_log, new.explore = old.decision_log, old.explore
            if set(new.backend_names) != set(old.backend_names):
                raise RequestError(
                    f"the new artifact routes to {new.backend_names}, this server to {old.backend_names}: "
                    "restart the server to change backends",
                    None,
                    status=409,
                )
            new.warmup()  # the featurizer loads before the swap, not in a request
            self.router = new
            self.loaded_at = time.time()
            self.metrics.artifact(self.artifact_info())
            info = {**self.artifact_info(), "previous_sha256": old.manifest.get("manifest_sha256")}
            info["reload_s"] = time.perf_counter() - t0
        log.info("reloaded %s (sha256 %s) in %.2f s", self.artifact_path, info["sha256"], info["reload_s"])
        return info

    def start_reload_poller(self, every_s: float) -> None:
        """Reload whenever the artifact folder's ``manifest_sha256`` changes (checked every
        ``every_s``): ``train`` replacing the folder is then enough, for every replica."""
        if not self.artifact_path:
            raise ValueError("reload_poll_s: the server was not started from an artifact folder")

        def current() -> str | None:
            import json

            try:
                return json.loads((Path(self.artifact_path) / "manifest.json").read_text()).get("manifest_sha256")
            except (OSError, ValueError):
                return None  # mid-swap or unreadable: look again next time

        def run():
            while True:
                time.sleep(every_s)
                sha = current()
                if sha and sha != self.router.manifest.get("manifest_sha256"):
                    try:
                        self.reload()
                    except Exception as e:  # noqa: BLE001 -- the old router keeps serving
                        log.warning(
                            "reload of %s failed, still serving the previous artifact: %s", self.artifact_path, e
                        )
                        time.sleep(max(every_s, 5.0))

        threading.Thread(target=run, name="t2iroute-reload-poll", daemon=True).start()

    # -- the queue (generation and route requests together) ----------------------------------------

    def enter_queue(self) -> None:
        with self._lock:
            if self.inflight >= self.max_queue:
                raise RequestError(
                    f"the queue is full ({self.max_queue} requests); retry shortly",
                    None,
                    status=429,
                    headers={"Retry-After": "1"},
                )
            self.inflight += 1
            self.metrics.queue.set(self.inflight)

    def leave_queue(self) -> None:
        with self._lock:
            self.inflight -= 1
            self.metrics.queue.set(self.inflight)

    @contextlib.contextmanager
    def queue_slot(self):
        """A place in the queue for the ``with`` block (429 when it is full)."""
        self.enter_queue()
        try:
            yield
        finally:
            self.leave_queue()

    # -- the warm-up -----------------------------------------------------------------------------

    def start_warmup(self) -> None:
        """Loads the featurizer and every backend in a background thread (once)."""
        with self._lock:
            if self.warm_started:
                return
            self.warm_started = True
        threading.Thread(target=self._run_warmup, name="t2iroute-warmup", daemon=True).start()

    def _run_warmup(self) -> None:
        from t2iroute.backends.base import load_backends

        router, failed = self.router, self.failed
        t0 = time.perf_counter()
        try:
            router.warmup()
        except Exception as e:  # noqa: BLE001 -- routing reports it again on the first request
            failed["featurizer"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            log.warning("warm-up: the featurizer cannot load: %s", failed["featurizer"])
        loaded = load_backends(router.backends)
        failed.update({k: v for k, v in loaded.items() if isinstance(v, str)})
        self.warmup_s = time.perf_counter() - t0
        self.metrics.warmup_s.set(self.warmup_s)
        n_ok = sum(not isinstance(v, str) for v in loaded.values())
        log.info(
            "warm-up: the featurizer and %d backend(s) loaded in %.1f s%s",
            n_ok,
            self.warmup_s,
            f"; failed: {sorted(failed)}" if failed else "",
        )
        self.ready.set()
        if self.on_ready is not None:
            try:
                self.on_ready(self.ready_info())
            except Exception as e:  # noqa: BLE001
                log.warning("warm-up: on_ready raised %s: %s", type(e).__name__, e)

    def ready_info(self) -> dict:
        """What ``/ready`` reports (:class:`t2iroute.serving.models.Readiness`)."""
        info = {
            "status": "ready" if self.ready.is_set() else "warming_up",
            "warmup": self.warmup,
            "warmup_s": self.warmup_s,
        }
        if self.failed:
            info["failed"] = dict(self.failed)
        return info

    async def wait_ready(self) -> None:
        while not self.ready.is_set():
            await asyncio.sleep(0.05)

    # -- batching: requests with the same model within batch_window_s share one Router.generate ----

    async def submit(self, prompts: list[str], seeds: list[int], policy: dict, forced: str | None) -> list:
        """The ``GenerateResult`` of each prompt, generated with the requests that arrive within the
        batch window under the same policy and forced backend; raises when a prompt got no image."""
        key = (tuple(sorted(policy.items())), forced)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if key not in self.pending:
            self.pending[key] = []
            loop.create_task(self._flush(key))
        self.pending[key].append({"prompts": prompts, "seeds": seeds, "future": fut})
        return await fut

    async def _flush(self, key) -> None:
        await asyncio.sleep(self.batch_window_s)
        jobs = self.pending.pop(key)
        policy, forced = dict(key[0]), key[1]
        prompts = [p for j in jobs for p in j["prompts"]]
        seeds = [s for j in jobs for s in j["seeds"]]
        self.metrics.batches.inc()
        if len(jobs) > 1:
            self.metrics.batched.inc(len(jobs))
        try:  # generation blocks: off the event loop
            results = await run_in_threadpool(self.router.generate, prompts, seed=seeds, backend=forced, **policy)
            error = None
        except Exception as e:  # noqa: BLE001 -- a request keeps its images if all of them were made
            results, error = getattr(e, "results", None) or [None] * len(prompts), e
        k = 0
        for j in jobs:
            mine = results[k : k + len(j["prompts"])]
            k += len(j["prompts"])
            if not j["future"].done():
                if all(r is not None for r in mine):
                    j["future"].set_result(mine)
                else:
                    j["future"].set_exception(error or RuntimeError("no image"))


async def get_state(request: Request) -> ServerState:
    """The app's :class:`ServerState` (a FastAPI dependency)."""
    return request.app.state.t2iroute


State = Annotated[ServerState, Depends(get_state)]


async def authorize(request: Request) -> None:
    """401 unless the request carries one of the server's API keys (none set: every request passes).
    A dependency of every endpoint but ``/health``, ``/ready``, ``/metrics`` and ``/openapi.json``."""
    check_key(request.headers.get("authorization", ""), request.app.state.t2iroute.api_keys)
