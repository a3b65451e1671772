import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from t2iroute.backends import build_backends
from t2iroute.scoring import build_scorer
from t2iroute.training.prompts import read_prompts
from t2iroute.sweeps.local import finished_keys, merge_tables, read_sweep, run_sweep
from t2iroute.training.table import read_table

TINY_CLIP = {
    "type": "clip",
    "model": "tiny-clip",
    "pretrained": None,
    "model_config": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
}
TINY = {"model": "tiny", "height": 32, "width": 32}


def test_read_prompts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("a cat\n\n  a dog \n")
    assert read_prompts(tmp_path / "a.txt").prompt.tolist() == ["a cat", "a dog"]
    pd.DataFrame({"id": ["x", "y"], "text": ["p1", "p2"]}).to_csv(tmp_path / "b.csv", index=False)
    assert read_prompts(tmp_path / "b.csv").prompt_id.tolist() == ["x", "y"]
    (tmp_path / "c.jsonl").write_text('{"prompt": "p1"}\n{"prompt": "p2", "tag": "t"}\n')
    assert len(read_prompts(tmp_path / "c.jsonl")) == 2
    parti = read_prompts("partiprompts")
    assert len(parti) == 1632 and "label" in parti
    assert len(read_prompts("geneval", limit=5)) == 5
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_prompts(tmp_path / "bad.jsonl")
    pd.DataFrame({"foo": [1]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ValueError, match="no prompt column"):
        read_prompts(tmp_path / "d.csv")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(tmp_path / "e.txt")


def test_clip_scorer_random_and_local_checkpoint(tmp_path):
    import torch
    from PIL import Image

    s = build_scorer(TINY_CLIP)
    ims = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    a = s.score(ims, ["a red square", "a blue square"])
    assert len(a) == 2 and all(0.0 <= x <= 100.0 for x in a)
    fi, ft = s.embed(ims, ["a red square", "a blue square"])
    np.testing.assert_allclose(a, 100 * np.maximum((fi * ft).sum(1), 0), rtol=1e-5)
    torch.save(s._model.state_dict(), tmp_path / "clip.pt")
    again = build_scorer({**TINY_CLIP, "pretrained": str(tmp_path / "clip.pt")})
    np.testing.assert_allclose(again.score(ims, ["a red square", "a blue square"]), a, rtol=1e-5)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        s.score(ims, ["x"])


class Flaky:
    name = "flaky"

    def generate(self, prompts, *, seeds, **opts):
        raise MemoryError("CUDA out of memory (simulated)")


def test_sweep_resume_shards_and_failures(tmp_path):
    backends = build_backends({"tiny_2": {**TINY, "steps": 2}, "tiny_3": {**TINY, "steps": 3}})
    backends["flaky"] = Flaky()
    scorer = build_scorer(TINY_CLIP)
    prompts = read_prompts("geneval", limit=6)
    r0 = run_sweep(backends, prompts, [0, 1], scorer, tmp_path, shard=0, num_shards=2, chunk_size=3, progress=False)
    r1 = run_sweep(backends, prompts, [0, 1], scorer, tmp_path, shard=1, num_shards=2, chunk_size=3, progress=False)
    assert r0.n_items + r1.n_items == 6 * 3 * 2 and min(r0.n_items, r1.n_items) > 0
    assert r0.n_failed + r1.n_failed == 12  # every flaky item recorded, the sweep went on
    fails = [json.loads(x) for x in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert len(fails) == 12 and "out of memory" in fails[0]["error"]
    t = read_table(tmp_path / "quality.parquet")
    assert len(t) == 24 and not t.duplicated(["prompt_id", "backend", "seed"]).any()
    assert set(t.steps_run) == {2, 3} and set(t.nfe) == {4, 6}
    # re-running repeats no finished work
    r = run_sweep(
        {k: v for k, v in backends.items() if k != "flaky"},
        prompts,
        [0, 1],
        scorer,
        tmp_path,
        shard=0,
        num_shards=2,
        progress=False,
    )
    assert r.n_generated == 0 and r.n_skipped_done == r.n_items
    merged = merge_tables([tmp_path], tmp_path / "merged")
    assert len(read_sweep(merged)) == 24
    with pytest.raises(ValueError, match="shard=2 num_shards=2"):
        run_sweep(backends, prompts, [0], scorer, tmp_path, shard=2, num_shards=2)


def kill_sweep_then_rerun(tmp_path, n_prompts: int, *extra: str) -> tuple[int, dict]:
    """Run the sweep command over tiny_10 and tiny_20, SIGKILL it after 3 part files, run it again.
    Returns the rows finished before the kill and the re-run's summary; checks every row is there once."""
    (tmp_path / "p.txt").write_text("\n".join(f"prompt number {i}" for i in range(n_prompts)))
    cmd = [
        sys.executable,
        "-m",
        "t2iroute.cli",
        "sweep",
        "backends=[tiny_10,tiny_20]",
        f"prompts={tmp_path / 'p.txt'}",
        "seeds=[0]",
        "chunk_size=2",
        f"out_dir={tmp_path / 'out'}",
        *extra,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    table = tmp_path / "out" / "quality.parquet"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(table.glob("part-*.parquet"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(finished_keys(table))
    assert 6 <= before < 2 * n_prompts
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["skipped_finished"] == before and summary["generated"] == 2 * n_prompts - before
    t = read_table(table)
    assert len(t) == 2 * n_prompts and not t.duplicated(["prompt_id", "backend", "seed"]).any()
    return before, summary


@pytest.mark.heavy
def test_sweep_killed_mid_run_resumes_without_loss_or_duplicates(tmp_path):
    """Kill a real sweep process with SIGKILL mid-run, then run the same command again."""
    kill_sweep_then_rerun(tmp_path, 24)


def test_offline_loop_sweep_train_bench(tmp_path):
    from t2iroute.cli import main

    backends = build_backends({"tiny_2": {**TINY, "steps": 2}, "tiny_4": {**TINY, "steps": 4}})
    run_sweep(
        backends,
        read_prompts("geneval", limit=40),
        [0],
        build_scorer(TINY_CLIP),
        tmp_path / "sw",
        chunk_size=20,
        progress=False,
    )
    table = tmp_path / "sw" / "quality.parquet"
    assert (
        main(
            [
                "train",
                "data=custom",
                f"data.path={table}",
                "features=[lexical]",
                "predictor=knn",
                "predictor.n_neighbors=5",
                f"out_dir={tmp_path / 'tr'}",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "bench",
                "data=custom",
                f"data.path={table}",
                "features=[lexical]",
                "predictor=knn",
                "predictor.n_neighbors=5",
                "throughput.enabled=false",
                f"out_dir={tmp_path / 'b'}",
            ]
        )
        == 0
    )
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert set(s["backends"]) == {"tiny_2", "tiny_4"}
    assert s["backends"]["tiny_4"]["cost"] > s["backends"]["tiny_2"]["cost"]  # measured latency


def test_temp_parts_of_killed_sweeps_are_never_data_and_are_cleaned(tmp_path):
    from t2iroute.errors import TableError

    table = tmp_path / "quality.parquet"
    table.mkdir()
    dead = 2**22 + 4321  # above the default pid_max: no such process
    pd.DataFrame(
        {"prompt_id": ["p"], "prompt": ["a cat"], "backend": ["b"], "seed": [0], "clip": [0.3], "cost": [1.0]}
    ).to_parquet(table / f".tmp-{dead}-part-0000-x.parquet")
    live = table / f".tmp-{os.getpid()}-part-0000-live.parquet"
    live.write_bytes(b"being written")
    with pytest.raises(TableError, match="holds no parquet files"):
        read_table(table)  # a folder holding only temp parts is not a table
    backends = build_backends({"tiny_2": {**TINY, "steps": 2}})
    run_sweep(backends, read_prompts("geneval", limit=2), [0], build_scorer(TINY_CLIP), tmp_path, progress=False)
    assert sorted(p.name for p in table.glob(".tmp-*")) == [live.name]
    assert len(read_table(table)) == 2
