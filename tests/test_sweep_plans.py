"""Planned sweeps (``t2iroute sweep plan=prompts|cells|active budget_share=...``): real tiny
backends, the cells a plan chooses, resume by replay (no cell twice), both launchers."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from t2iroute.backends import build_backends
from t2iroute.features import build_featurizer
from t2iroute.scoring import build_scorer
from t2iroute.sweeps.local import finished_keys, run_sweep
from t2iroute.sweeps.planned import run_planned_sweep, table_scores
from t2iroute.training.prompts import read_prompts
from t2iroute.training.table import read_table

from tests.test_sweep import TINY, TINY_CLIP

KEY = ["prompt_id", "backend", "seed"]


def _launcher(tmp_path, backends, prompts, scorer):
    launches = []

    def launch(cells=None):
        launches.append(set(cells))
        return run_sweep(backends, prompts, [0], scorer, tmp_path / "out", cells=cells, chunk_size=4, progress=False)

    return launch, launches


@pytest.mark.parametrize("plan", ["prompts", "cells", "active"])
def test_a_planned_sweep_generates_its_cells_once_and_a_rerun_generates_nothing(plan, tmp_path):
    backends = build_backends({"t2": {**TINY, "steps": 2}, "t4": {**TINY, "steps": 4}, "t8": {**TINY, "steps": 8}})
    prompts = read_prompts("geneval", limit=40)
    scorer = build_scorer(TINY_CLIP)
    lexical = build_featurizer([{"type": "lexical"}])
    launch, launches = _launcher(tmp_path, backends, prompts, scorer)
    kw = dict(featurize=lexical.transform, seed=3)
    out = run_planned_sweep(plan, 0.5, prompts, list(backends), launch, tmp_path / "out", **kw)
    t = read_table(tmp_path / "out" / "quality.parquet")
    assert not t.duplicated(KEY).any() and len(t) == out["generated"] == out["cells"]
    assert out["spent_share"] <= 0.5 + 1e-9 and 0 < out["cells"] < 40 * 3
    if plan == "prompts":
        assert set(t.groupby("prompt_id").size()) == {3} and t.prompt_id.nunique() == 20
    if plan == "active":
        assert len(launches) >= 3  # the seed rows that measure costs, rounds, the last choice
        s, _ = table_scores(tmp_path / "out", list(prompts.prompt_id), list(backends))
        assert np.isfinite(s).sum() == out["cells"]
    # the same command again: the plan replays its decisions from the table, nothing is generated
    again = run_planned_sweep(plan, 0.5, prompts, list(backends), launch, tmp_path / "out", **kw)
    assert again["generated"] == 0 and again["cells"] == out["cells"]
    assert len(read_table(tmp_path / "out" / "quality.parquet")) == len(t)


def test_sweep_command_takes_a_plan_and_refuses_shards_with_one(tmp_path, capsys):
    from t2iroute.cli import main

    (tmp_path / "p.txt").write_text("\n".join(f"prompt number {i}" for i in range(16)))
    args = ["sweep", "backends=[tiny_10,tiny_20]", f"prompts={tmp_path / 'p.txt'}", f"out_dir={tmp_path / 'o'}"]
    assert main([*args, "plan=cells", "budget_share=0.5", "num_shards=2"]) == 2
    assert "num_shards=2" in capsys.readouterr().err
    assert main([*args, "plan=prompts", "budget_share=0.25"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["plan"] == "prompts" and out["cells"] == 8 and out["generated"] == 8


def kill_planned_sweep_then_rerun(tmp_path, *extra: str) -> dict:
    """SIGKILL an active planned sweep after a few part files, run the same command again: no cell
    twice, the budget kept, and a third run generates nothing."""
    (tmp_path / "p.txt").write_text("\n".join(f"a {c} thing number {i}" for i, c in enumerate(["red", "blue"] * 15)))
    cmd = [
        sys.executable,
        "-m",
        "t2iroute.cli",
        "sweep",
        "backends=[tiny_10,tiny_20]",
        f"prompts={tmp_path / 'p.txt'}",
        "chunk_size=2",
        "plan=active",
        "budget_share=0.6",
        "features=lexical",
        f"out_dir={tmp_path / 'out'}",
        *extra,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    table = tmp_path / "out" / "quality.parquet"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(table.glob("part-*.parquet"))) < 12 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(finished_keys(table))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    t = read_table(table)
    assert not t.duplicated(KEY).any()
    assert summary["skipped_finished"] >= before and len(t) == before + summary["generated"] == summary["cells"]
    assert summary["spent_share"] <= 0.6 + 1e-9
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and json.loads(third.stdout.strip().splitlines()[-1])["generated"] == 0
    return summary


@pytest.mark.heavy
def test_an_active_sweep_killed_mid_run_resumes_without_a_cell_twice(tmp_path):
    kill_planned_sweep_then_rerun(tmp_path)
