"""``t2iroute sweep ... launcher=ray``: the sweep's work spread over Ray actors.

One actor per model group and worker slot (``ray.workers_per_model``) loads the group's weights
once and serves every step budget of that model; it scores its own images, so only rows cross
the network (and PNG bytes with ``keep_images``). Work units are the sequential sweep's: chunks
of ``chunk_size`` items split by backend, each sent to an actor of its model. Only the driver
writes: each finished unit becomes one atomic part file in ``OUT/quality.parquet``, exactly as the
sequential sweep writes them, so resume works the same way, whichever launcher wrote the parts.

Failures:

* a backend or scorer that raises: its items go to ``OUT/failures.jsonl``, not retried (as in
  the sequential sweep; a re-run tries them again);
* a worker that dies (killed, out of host memory, a node lost): the actor is replaced and the
  units it held are retried, at most ``ray.max_retries`` times each, then recorded in
  ``failures.jsonl``; a group whose fresh actors keep dying without finishing a unit is given up;
* a killed driver: at most the units in flight are lost (their actors die with the job); a
  re-run does only what is missing.
"""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from t2iroute.cluster import RayOptions, check_fits, connect, group_label, groups_of, import_ray, worker_verbose
from t2iroute.sweeps.local import (
    SweepResult,
    UnitResult,
    _write_part,
    plan_sweep,
    record_failures,
    run_unit,
    work_units,
)

log = logging.getLogger(__name__)


class SweepWorker:
    """A Ray actor: one model group's backends (one shared pipeline) and the scorer."""

    def __init__(
        self,
        specs: Mapping[str, Mapping[str, Any]],
        scorer_spec: Mapping[str, Any],
        threads: int,
        verbose: bool = False,
    ):
        self._error = None
        try:
            from t2iroute import threads as _threads
            from t2iroute.quiet import quiet_libraries

            quiet_libraries(verbose, worker=True)  # the driver's verbose flag: bars and warnings only with it
            from t2iroute.backends import build_backends
            from t2iroute.scoring import build_scorer

            _threads.configure(max(1, int(threads)), force=True)
            self.backends = build_backends(dict(specs))
            self.scorer = build_scorer(dict(scorer_spec))
        except Exception as e:  # noqa: BLE001 -- reported per unit: recorded, not retried
            import traceback

            self._error = (f"{type(e).__name__}: {e}", traceback.format_exc(limit=3))

    def pid(self) -> int:
        return os.getpid()

    def run(self, bname: str, its: list, out_dir: str, keep_images: bool) -> dict:
        if self._error is not None:
            res = UnitResult([], error=self._error[0], trace=self._error[1])
        else:
            res = run_unit(
                self.backends[bname],
                bname,
                its,
                self.scorer,
                out_dir,
                keep_images=keep_images,
                return_images=keep_images,
            )
        return {"rows": res.rows, "images": res.images, "error": res.error, "trace": res.trace, "pid": os.getpid()}


class _Group:
    def __init__(self, key: str, specs: dict):
        self.key, self.label, self.specs = key, group_label(key), specs
        self.queue: collections.deque = collections.deque()
        self.slots: list[list] = []  # [actor handle, generation]
        self.inflight = collections.Counter()  # slot -> units in flight
        self.deaths_without_success = 0


def run_sweep_ray(
    backend_specs: Mapping[str, Mapping[str, Any]],
    prompts: pd.DataFrame,
    seeds: Sequence[int],
    scorer_spec: Mapping[str, Any],
    out_dir,
    *,
    shard: int = 0,
    num_shards: int = 1,
    chunk_size: int = 8,
    keep_images: bool = False,
    progress: bool = True,
    ray_options: RayOptions | Mapping[str, Any] | None = None,
    on_result: Callable[[dict], None] | None = None,
    verbose: bool | None = None,
    cells: set[tuple[str, str]] | None = None,
) -> SweepResult:
    """The sweep of :func:`t2iroute.sweeps.local.run_sweep` on a Ray cluster: the same rows,
    part files and resume. Backends and the scorer are given as configs (each actor builds its
    own). ``on_result`` is called on the driver after each finished unit with ``{"backend",
    "n", "pid"}`` (the pid of the actor that made it); ``cells``: only these (prompt_id, backend) cells. ``verbose``: the libraries' progress bars and
    warnings in the actors too (default: this process's setting, :mod:`t2iroute.quiet`)."""
    from t2iroute.backends import build_backends

    opts = ray_options if isinstance(ray_options, RayOptions) else RayOptions.from_mapping(ray_options)
    if scorer_spec is None:
        raise ValueError("a sweep needs a scorer (scorer=clip)")
    specs = {n: dict(s) for n, s in backend_specs.items()}
    build_backends(specs)  # a bad config fails here, before Ray starts (building loads no weights)
    plan = plan_sweep(list(specs), prompts, seeds, out_dir, shard=shard, num_shards=num_shards, cells=cells)
    result = SweepResult(plan.out_dir, plan.n_items, plan.n_skipped, 0, 0)
    if not plan.todo:
        return result
    ray = import_ray()
    started = connect(opts)
    try:
        _drive(
            ray,
            opts,
            specs,
            dict(scorer_spec),
            plan,
            shard,
            chunk_size,
            keep_images,
            progress,
            on_result,
            result,
            worker_verbose(verbose),
        )
    finally:
        if started:
            ray.shutdown()
    return result


def _drive(
    ray, opts, specs, scorer_spec, plan, shard, chunk_size, keep_images, progress, on_result, result, verbose
) -> None:
    from ray.exceptions import RayActorError, RayTaskError
    from tqdm.auto import tqdm

    groups = {k: _Group(k, s) for k, s in groups_of(specs).items()}
    group_of = {b: k for k, g in groups.items() for b in g.specs}
    attempts: collections.Counter = collections.Counter()
    units = work_units(plan.todo, chunk_size)
    for uid, (_, bname, _its) in enumerate(units):
        groups[group_of[bname]].queue.append(uid)
    threads = max(1, int(opts.num_cpus_per_worker))
    worker_cls = ray.remote(SweepWorker)

    def new_actor(g: _Group):
        return worker_cls.options(
            num_cpus=float(opts.num_cpus_per_worker),
            num_gpus=opts.gpus_for(g.specs),
            max_restarts=0,
            max_task_retries=0,
            name=None,
        ).remote(g.specs, scorer_spec, threads, verbose)

    for g in groups.values():
        check_fits(
            float(opts.num_cpus_per_worker),
            opts.gpus_for(g.specs),
            what=f"a worker for {g.label}",
            keys="ray.num_cpus_per_worker / ray.num_gpus_per_worker",
        )
    for g in groups.values():
        g.slots = [[new_actor(g), 0] for _ in range(int(opts.workers_per_model))]
    log.info("ray sweep: %d units over %s", len(units), {g.label: len(g.slots) for g in groups.values()})
    inflight: dict = {}  # object ref -> (uid, group key, slot, generation)
    bar = tqdm(total=len(plan.todo), disable=not progress, desc="sweep (ray)", unit="img")
    out_dir = str(plan.out_dir)

    def fail(uid: int, error: str, trace: str | None = None) -> None:
        _, bname, its = units[uid]
        record_failures(plan.out_dir, bname, its, error, trace)
        result.n_failed += len(its)
        bar.update(len(its))

    def submit() -> None:
        for g in groups.values():
            for slot, (actor, gen) in enumerate(g.slots):
                while g.queue and g.inflight[slot] < int(opts.max_in_flight):
                    uid = g.queue.popleft()
                    _, bname, its = units[uid]
                    ref = actor.run.remote(bname, its, out_dir, keep_images)
                    inflight[ref] = (uid, g.key, slot, gen)
                    g.inflight[slot] += 1
            if not g.queue and not sum(g.inflight.values()) and g.slots:
                for actor, _ in g.slots:  # done with this model: free its CPUs/GPUs for the others
                    ray.kill(actor)
                g.slots = []

    try:
        submit()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            uid, gkey, slot, gen = inflight.pop(ref)
            g = groups[gkey]
            g.inflight[slot] -= 1
            _, bname, its = units[uid]
            try:
                out = ray.get(ref)
            except RayActorError as e:  # the worker died: replace it, retry what it held
                attempts[uid] += 1
                if g.slots[slot][1] == gen:
                    g.deaths_without_success += 1
                    result.n_workers_replaced += 1
                    log.warning(
                        "ray sweep: a %s worker died (%s); starting another", g.label, str(e).splitlines()[0][:200]
                    )
                    g.slots[slot] = [new_actor(g), gen + 1]
                if attempts[uid] > int(opts.max_retries):
                    fail(
                        uid,
                        f"WorkerDied: a {g.label} worker died {attempts[uid]} times running these items "
                        f"(ray.max_retries={opts.max_retries}): {str(e).splitlines()[0][:300]}",
                    )
                else:
                    result.n_retried += len(its)
                    g.queue.appendleft(uid)
                if g.deaths_without_success > int(opts.max_retries) + 1:
                    while g.queue:  # every fresh actor died before finishing anything: give up on this model
                        fail(
                            g.queue.popleft(),
                            f"WorkerDied: {g.deaths_without_success} {g.label} workers died "
                            "without finishing a unit; giving up on this model",
                        )
            except RayTaskError as e:  # the call itself failed outside the backend (e.g. unpicklable rows)
                fail(uid, f"{type(e.cause).__name__ if e.cause else 'RayTaskError'}: {str(e)[:500]}")
            else:
                g.deaths_without_success = 0
                if out["error"] is not None:
                    fail(uid, out["error"], out["trace"])
                else:
                    for row, png in zip(out["rows"], out["images"] or [None] * len(out["rows"])):
                        if png is not None:
                            Path(row["image_path"]).parent.mkdir(parents=True, exist_ok=True)
                            Path(row["image_path"]).write_bytes(png)
                    _write_part(plan.table_dir, out["rows"], shard)
                    result.n_generated += len(its)
                    bar.update(len(its))
                    if on_result is not None:
                        on_result({"backend": bname, "n": len(its), "pid": out["pid"]})
            submit()
    finally:
        bar.close()
        for g in groups.values():
            for actor, _ in g.slots:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 -- already gone
                    pass
    if result.n_failed:
        log.warning("ray sweep: %d items failed, recorded in %s", result.n_failed, plan.out_dir / "failures.jsonl")
