"""Batch generation: Router.generate over a list, grouped by backend, batched, in input order."""

import numpy as np
import pytest
import torch
from PIL import Image

from t2iroute import Router
from t2iroute.backends import build_backend
from t2iroute.backends.base import DiffusionInfo, Generation
from t2iroute.backends.diffusers_backend import DiffusersBackend
from t2iroute.errors import GenerationError
from tests.conftest import TINY

PROMPTS = [
    "a cat",
    "two birds on a wire",
    "a sign saying 'hello'",
    "three apples",
    "a robot",
    "portrait of a woman",
    "a castle",
    "city at night",
]


class _Recorder:
    """A backend that records each call's prompts and makes one small image per prompt."""

    def __init__(self, name, fail=None):
        self.name, self.calls, self.fail = name, [], fail

    def generate(self, prompts, *, seeds, **opts):
        self.calls.append(list(prompts))
        if self.fail is not None:
            raise self.fail
        return [
            Generation(
                image=Image.new("RGB", (8, 8), (s % 255, 0, 0)),
                prompt=p,
                seed=s,
                backend=self.name,
                latency_s=0.5 / len(prompts),
                diffusion=DiffusionInfo(steps_run=3, steps_budget=4, nfe=6, stopped_early=True),
            )
            for p, s in zip(prompts, seeds)
        ]


def test_a_list_is_routed_once_grouped_by_backend_and_returned_in_input_order(tiny_artifact):
    router = Router.load(tiny_artifact)
    decisions = router.route(PROMPTS, lam=0.5)
    assert len({d.backend for d in decisions}) >= 2  # the test needs a mix
    router.backends = {b: _Recorder(b) for b in router.backend_names}
    res = router.generate(PROMPTS, seed=[10 + i for i in range(len(PROMPTS))], lam=0.5)
    assert [r.decision.prompt for r in res] == PROMPTS
    assert [r.backend for r in res] == [d.backend for d in decisions]
    assert [r.seed for r in res] == [10 + i for i in range(len(PROMPTS))]
    for b, be in router.backends.items():  # one call per backend, its prompts in input order
        mine = [p for p, d in zip(PROMPTS, decisions) if d.backend == b]
        assert be.calls == ([mine] if mine else [])
    for r in res:
        assert r.nfe == 6 and r.steps_run == 3 and r.stopped_early
        assert r.latency_s == pytest.approx(0.5 / sum(d.backend == r.backend for d in decisions))
        assert r.route_s > 0
    one = router.generate(PROMPTS, seed=4, lam=0.5)  # one seed: every prompt gets it
    assert [r.seed for r in one] == [4] * len(PROMPTS)


def test_a_failing_group_falls_back_prompt_by_prompt_to_each_ones_next_choice(tiny_artifact):
    router = Router.load(tiny_artifact)
    decisions = router.route(PROMPTS, lam=0.5)
    first = max({d.backend for d in decisions}, key=lambda b: sum(d.backend == b for d in decisions))
    router.backends = {
        b: _Recorder(b, fail=RuntimeError("CUDA out of memory") if b == first else None) for b in router.backend_names
    }
    res = router.generate(PROMPTS, lam=0.5)
    for r, d in zip(res, decisions):
        if d.backend == first:
            assert r.backend == d.ranking[1] and r.decision.backend == first
            assert r.fallbacks == [{"backend": first, "error": "RuntimeError: CUDA out of memory"}]
        else:
            assert r.backend == d.backend and not r.fallbacks
    assert len(router.backends[first].calls) == 1  # the whole group failed once, then regrouped


def test_a_prompt_no_backend_makes_raises_after_the_others_with_them_kept(tiny_artifact):
    router = Router.load(tiny_artifact)
    # forced backend failing on every prompt of a list: raised once all are tried, nothing made
    router.backends = {b: _Recorder(b, fail=MemoryError("no RAM")) for b in router.backend_names}
    with pytest.raises(GenerationError, match=r"every backend failed for 8 of 8 prompts.*MemoryError: no RAM") as e:
        router.generate(PROMPTS, backend="fast")
    assert e.value.results == [None] * 8
    # one backend down, no fallback: its prompts are lost, the others are kept on the error
    decisions = router.route(PROMPTS, lam=0.5)
    down = decisions[0].backend
    router.backends = {b: _Recorder(b, fail=MemoryError("no RAM") if b == down else None) for b in router.backend_names}
    with pytest.raises(GenerationError) as e:
        router.generate(PROMPTS, lam=0.5, fallback=False)
    kept = e.value.results
    assert [r is None for r in kept] == [d.backend == down for d in decisions]
    assert all(r.backend == d.backend for r, d in zip(kept, decisions) if r is not None)


def test_batches_follow_batch_size_and_match_one_at_a_time_images():
    be = build_backend("tiny_b", {**TINY, "steps": 3, "batch_size": 3})
    calls = []
    orig = DiffusersBackend._run

    def run(self, ps, ss, opts):
        calls.append(len(ps))
        return orig(self, ps, ss, opts)

    DiffusersBackend._run = run
    try:
        batched = be.generate(PROMPTS[:7], seeds=list(range(7)))
    finally:
        DiffusersBackend._run = orig
    assert calls == [3, 3, 1]
    single = build_backend("tiny_1", {**TINY, "steps": 3, "batch_size": 1})
    for i, g in enumerate(batched):
        alone = single.generate([PROMPTS[i]], seeds=[i])[0]
        assert g.prompt == PROMPTS[i] and g.seed == i and g.steps_run == 3 and g.nfe == 6
        diff = np.abs(np.asarray(g.image, dtype=float) - np.asarray(alone.image, dtype=float))
        assert diff.mean() < 1.0  # the same image: each has its own seeded generator


def test_early_stopping_in_a_batch_counts_each_image_the_steps_the_batch_ran():
    spec = {**TINY, "steps": 12, "early_stop": {"threshold": 0.2, "window": 1, "patience": 1, "min_fraction": 0.25}}
    gens = build_backend("es_b", {**spec, "batch_size": 4}).generate(PROMPTS[:4], seeds=[0, 1, 2, 3])
    assert len({g.steps_run for g in gens}) == 1  # the batch stops once all have converged
    assert all(g.nfe == 2 * g.steps_run for g in gens)
    alone = [
        build_backend("es_1", {**spec, "batch_size": 1}).generate([p], seeds=[s])[0]
        for p, s in zip(PROMPTS[:4], [0, 1, 2, 3])
    ]
    assert gens[0].steps_run == max(g.steps_run for g in alone)  # the slowest image sets the batch's steps


def test_out_of_memory_splits_the_batch_until_it_fits():
    be = build_backend("tiny_oom", {**TINY, "steps": 2, "batch_size": 8})
    sizes = []
    orig = DiffusersBackend._run

    def run(self, ps, ss, opts):
        sizes.append(len(ps))
        if len(ps) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return orig(self, ps, ss, opts)

    DiffusersBackend._run = run
    try:
        gens = be.generate(PROMPTS, seeds=list(range(8)))
        assert [g.prompt for g in gens] == PROMPTS and [g.seed for g in gens] == list(range(8))
        assert sizes == [8, 4, 2, 2, 4, 2, 2]
        sizes.clear()

        def never(self, ps, ss, opts):
            sizes.append(len(ps))
            raise torch.OutOfMemoryError("CUDA out of memory")

        DiffusersBackend._run = never
        with pytest.raises(torch.OutOfMemoryError):
            be.generate(PROMPTS[:2], seeds=[0, 1])
        assert sizes == [2, 1]  # split down to one image, then the error is the caller's
    finally:
        DiffusersBackend._run = orig


# -- the command line ------------------------------------------------------------------------------


def test_cli_generates_several_prompts_into_out_dir_and_resumes(tiny_artifact, tmp_path, capsys):
    import json

    from t2iroute.cli import main

    out = tmp_path / "imgs"
    prompts = ["a cat", "two birds on a wire", "three apples", "a robot", "a castle"]
    argv = [
        "generate",
        *prompts,
        f"artifact={tiny_artifact}",
        f"out_dir={out}",
        "lam=0.5",
        "seed=3",
        "progress=true",
        "chunk_size=2",
    ]
    assert main(argv) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert summary["generated"] == 5 and summary["skipped_finished"] == 0 and summary["failed"] == 0
    assert sum(summary["by_backend"].values()) == 5 and summary["images_per_s"] > 0
    assert "5/5" in cap.err  # the progress bar, on stderr
    assert sorted(p.name for p in out.iterdir()) == [f"000{i}.png" for i in range(5)] + ["generations.jsonl"]
    recs = [json.loads(ln) for ln in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in recs) == list(range(5))
    for r in recs:
        assert r["file"] == f"{r['index']:04d}.png" and r["decision"]["prompt"] == prompts[r["index"]]
        assert r["seed"] == 3 and r["nfe"] >= r["steps_run"] >= 1 and r["latency_s"] > 0
    # a re-run skips what is there
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["generated"] == 0 and again["skipped_finished"] == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # a killed run: one image gone, a half-written last line; the re-run makes just the missing ones
    lines = (out / "generations.jsonl").read_text().splitlines()
    lost = json.loads(lines[-1])["index"]
    (out / f"{lost:04d}.png").unlink()
    (out / "generations.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    assert main(argv) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["generated"] == 1 and third["skipped_finished"] == 4
    recs = [json.loads(ln) for ln in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in recs) == list(range(5))
    # another run's prompts into the same folder: refused, nothing touched
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["generate", "a dog", "a bird", f"artifact={tiny_artifact}", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "holds another run's images" in err and "'a dog'" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot


def test_cli_prompts_file_and_forced_backend(tiny_artifact, tmp_path, capsys):
    import json

    from t2iroute.cli import main

    f = tmp_path / "prompts.txt"
    f.write_text("a cat\n\ntwo dogs\nthree apples\n")
    out = tmp_path / "o"
    assert main(["generate", f"artifact={tiny_artifact}", f"prompts_file={f}", f"out_dir={out}", "backend=fast"]) == 0
    cap = capsys.readouterr()
    s = json.loads(cap.out)
    assert s["by_backend"] == {"fast": 3} and cap.err == ""  # no bar when stderr is no terminal
    recs = [json.loads(ln) for ln in (out / "generations.jsonl").read_text().splitlines()]
    assert [r["decision"]["prompt"] for r in sorted(recs, key=lambda r: r["index"])] == [
        "a cat",
        "two dogs",
        "three apples",
    ]


@pytest.mark.slow
def test_gpu_benchmark_script_dry_runs_on_cpu(tmp_path):
    """scripts/bench_generation.py --suite gpu is the one prepared GPU command; on a CPU it runs the
    same code at tiny sizes, so the script is known to work before a GPU is lent."""
    import json
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "scripts/bench_generation.py", "--suite", "gpu", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "gen-cpu-dry.json").read_text())
    assert res["dry_run"] and set(res["archs"]) == {"sd15", "sdxl"}
    for a in res["archs"].values():
        assert a["ms_per_step"] > 0 and a["memory"]["pipelines_loaded_for_model"] == 1
        assert {"batch_1", "batch_4", "batch_8"} <= set(a["throughput"])
    assert 0 < res["archs"]["sd15"]["routing"]["share_of_cheapest_image"]
