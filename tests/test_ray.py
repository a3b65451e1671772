"""launcher=ray sweeps on a local Ray cluster started here (ray.init(num_cpus=2)), tiny backends."""

import json
import os
import signal

import pandas as pd
import pytest

if os.environ.get("CI"):
    import ray  # CI installs t2iroute[all]: these tests run there, never skip
else:
    ray = pytest.importorskip("ray")

from t2iroute.backends import build_backends
from t2iroute.sweeps.ray import run_sweep_ray
from t2iroute.scoring import build_scorer
from t2iroute.training.prompts import read_prompts
from t2iroute.sweeps.local import read_sweep, run_sweep
from t2iroute.training.table import read_table

from tests.test_sweep import TINY, TINY_CLIP, kill_sweep_then_rerun
from tests.test_sweep_plans import kill_planned_sweep_then_rerun

pytestmark = pytest.mark.ray
KEY = ["prompt_id", "backend", "seed"]
SPECS = {"tiny_2": {**TINY, "steps": 2}, "tiny_3": {**TINY, "steps": 3}}


@pytest.fixture(scope="module")
def cluster():
    """A local two-CPU Ray cluster for this module; its address, for drivers in other processes."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _sorted(df):
    return df.sort_values(KEY).reset_index(drop=True)


def test_ray_sweep_matches_the_sequential_sweep_row_for_row(cluster, tmp_path):
    prompts = read_prompts("geneval", limit=5)
    seq = run_sweep(
        build_backends(SPECS),
        prompts,
        [0, 1],
        build_scorer(TINY_CLIP),
        tmp_path / "seq",
        chunk_size=3,
        keep_images=True,
        progress=False,
    )
    res = run_sweep_ray(
        SPECS,
        prompts,
        [0, 1],
        TINY_CLIP,
        tmp_path / "ray",
        chunk_size=3,
        keep_images=True,
        progress=False,
        ray_options={"workers_per_model": 2},
    )
    assert (res.n_items, res.n_generated, res.n_failed) == (seq.n_items, 20, 0)
    a, b = _sorted(read_sweep(tmp_path / "seq")), _sorted(read_sweep(tmp_path / "ray"))
    same = KEY + ["prompt", "metric", "score", "source", "steps_run", "nfe", "stopped_early", "higher_is_better"]
    pd.testing.assert_frame_equal(a[same], b[same])  # the same images, so the same scores, bit for bit
    for pa, pb in zip(a.image_path, b.image_path):  # images made on the workers, written by the driver
        assert open(pa, "rb").read() == open(pb, "rb").read()
        assert pb.startswith(str(tmp_path / "ray" / "images"))
    again = run_sweep_ray(SPECS, prompts, [0, 1], TINY_CLIP, tmp_path / "ray", chunk_size=3, progress=False)
    assert (again.n_generated, again.n_skipped_done) == (0, 20)  # a re-run starts no worker, repeats nothing


def test_a_worker_killed_mid_sweep_is_replaced_and_every_row_lands_once(cluster, tmp_path):
    prompts = read_prompts("geneval", limit=8)
    killed = []

    def kill_first_worker(ev):  # the worker that just finished a unit holds the next one
        if not killed:
            killed.append(ev["pid"])
            os.kill(ev["pid"], signal.SIGKILL)

    res = run_sweep_ray(
        SPECS,
        prompts,
        [0, 1],
        TINY_CLIP,
        tmp_path,
        chunk_size=3,
        progress=False,
        ray_options={"workers_per_model": 2},
        on_result=kill_first_worker,
    )
    assert killed and res.n_workers_replaced == 1 and res.n_retried > 0
    assert (res.n_generated, res.n_failed) == (32, 0)
    t = read_table(tmp_path / "quality.parquet")
    assert len(t) == 32 and not t.duplicated(KEY).any()
    assert not (tmp_path / "failures.jsonl").exists()


def test_retries_are_bounded_then_recorded_and_a_rerun_finishes(cluster, tmp_path):
    prompts = read_prompts("geneval", limit=6)
    killed = []

    def kill_once(ev):
        if not killed:
            killed.append(ev["pid"])
            os.kill(ev["pid"], signal.SIGKILL)

    res = run_sweep_ray(
        SPECS,
        prompts,
        [0],
        TINY_CLIP,
        tmp_path,
        chunk_size=2,
        progress=False,
        ray_options={"max_retries": 0},
        on_result=kill_once,
    )
    fails = [json.loads(x) for x in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert res.n_failed == len(fails) > 0 and res.n_retried == 0
    assert all(f["error"].startswith("WorkerDied:") and "ray.max_retries=0" in f["error"] for f in fails)
    assert res.n_generated + res.n_failed == 12
    rerun = run_sweep_ray(SPECS, prompts, [0], TINY_CLIP, tmp_path, chunk_size=2, progress=False)
    assert rerun.n_generated == res.n_failed and rerun.n_skipped_done == res.n_generated
    t = read_table(tmp_path / "quality.parquet")
    assert len(t) == 12 and not t.duplicated(KEY).any()


def test_a_backend_that_raises_is_recorded_and_not_retried(cluster, tmp_path):
    broken = tmp_path / "not-a-model"
    broken.mkdir()  # a folder without model_index.json: the pipeline load fails on the worker
    specs = {**SPECS, "broken": {"model": str(broken), "height": 32, "width": 32, "steps": 2}}
    prompts = read_prompts("geneval", limit=4)
    res = run_sweep_ray(specs, prompts, [0], TINY_CLIP, tmp_path / "out", chunk_size=2, progress=False)
    fails = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert {f["backend"] for f in fails} == {"broken"} and len(fails) == 4
    assert (res.n_failed, res.n_generated, res.n_retried, res.n_workers_replaced) == (4, 8, 0, 0)
    assert str(broken) in fails[0]["error"] or "model_index.json" in fails[0]["error"]


def test_ray_sweep_command_killed_then_rerun_loses_and_duplicates_nothing(cluster, tmp_path):
    """A driver in its own process on this cluster, SIGKILLed mid-sweep, then the same command again."""
    _, summary = kill_sweep_then_rerun(tmp_path, 16, "launcher=ray", f"ray.address={cluster}")
    assert summary["launcher"] == "ray" and summary["failed"] == 0


def test_an_active_ray_sweep_killed_mid_run_resumes_without_a_cell_twice(cluster, tmp_path):
    """plan=active on the Ray launcher: the driver SIGKILLed between rounds' part files, then the
    same command again replays the plan's decisions from the table and generates no cell twice."""
    summary = kill_planned_sweep_then_rerun(tmp_path, "launcher=ray", f"ray.address={cluster}")
    assert summary["plan"] == "active" and summary["launcher"] == "ray"


@pytest.mark.parametrize(
    "bad, key",
    [
        ("ray.workers_per_model=0", "ray.workers_per_model=0"),
        ("launcher=dask", "launcher=dask"),
        ("ray.max_retries=-1", "ray.max_retries=-1"),
        ("+ray.gpus=1", "ray.gpus"),
    ],
)
def test_bad_ray_options_name_the_key(tmp_path, capsys, bad, key):
    from t2iroute.cli import main

    rc = main(["sweep", "backends=[tiny_10]", "prompts=geneval", "limit=1", "launcher=ray", bad, f"out_dir={tmp_path}"])
    assert rc == 2 and key in capsys.readouterr().err
    assert not (tmp_path / "quality.parquet").exists()


def test_a_worker_the_cluster_can_never_hold_is_refused_naming_the_keys(cluster, tmp_path):
    from t2iroute.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"1 GPUs needed; the Ray cluster has 2 CPUs and 0 GPUs: lower .*num_gpus_per_worker"
    ):
        run_sweep_ray(
            {"gpu": {**TINY, "steps": 2, "device": "cuda"}},
            read_prompts("geneval", limit=1),
            [0],
            TINY_CLIP,
            tmp_path,
            progress=False,
        )
    assert not list(tmp_path.glob("quality.parquet/part-*"))
