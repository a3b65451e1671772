"""The command line's promises (README, "Command line and app"): bad input exits with status 2 and
ONE line on stderr naming the input, found before any model loads; stdout carries only the
command's JSON result (JSON Lines under -m); stderr is quiet on success unless verbose=true."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from t2iroute.cli import COMMANDS, main
from t2iroute.cli import split_prompts as _split_prompts
from tests.conftest import make_table

ROOT = Path(__file__).resolve().parents[1]
FAST_BENCH = ["features=[lexical]", "predictor=knn", "throughput.enabled=false"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "t.csv"
    make_table(n_prompts=40).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def unwritable(tmp_path_factory):
    """A folder this process cannot write in (as root, a sysfs folder)."""
    d = tmp_path_factory.mktemp("ro")
    d.chmod(0o555)
    if os.access(d, os.W_OK):  # root
        d = Path("/sys/t2iroute-test")
    yield d
    if d.parent != Path("/sys"):
        d.chmod(0o755)


def _one_line(capsys, argv):
    """main(argv) -> (rc, the one stderr line); stdout must be empty."""
    capsys.readouterr()
    rc = main(list(argv))
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert cap.out == "", (argv, cap.out)
    assert len(lines) == 1, (argv, cap.err)
    return rc, lines[0]


def _bad_inputs(art, table, tmp, unwritable):
    afile = tmp / "a-file"
    afile.write_text("not a folder")
    a, d = f"artifact={art}", f"data.path={table}"
    png = f"out={tmp / 'img.png'}"
    return [
        # Hydra's errors: unknown keys and group options, with a close match
        (["route", "a cat", a, "lamda=0.1"], ["unknown key 'lamda'", "did you mean lam?"]),
        (["route", "a cat", a, "backends=[nope]"], ["backends=[nope]", "'nope'", "tiny_10"]),
        (["bench", "data=custom", d, "predictor=knnn"], ["predictor=knnn", "did you mean knn?"]),
        (["bench", "data=custom", d, "features=[embeding]"], ["features=[embeding]", "did you mean embedding?"]),
        (["bench", "data=custm", d], ["data=custm", "did you mean custom?"]),
        (["train", "data=custom", d, "budget=3"], ["unknown key 'budget'", "did you mean router.budget?"]),
        (["sweep", "scorer=clp"], ["scorer=clp", "did you mean clip?"]),
        (["route", "a cat", a, "~nope"], ["~nope", "'nope'"]),
        (["route", "a cat", a, "lam=[1"], ["lam=[1"]),
        (["route", "a cat", a, "lam=0,1"], ["lam=0,1", "-m"]),
        (["bench", "--cgf", "job"], ["--cgf", "did you mean --cfg?"]),
        (["bench", "data=agiqa3k", "--cfg", "jbo"], ["--cfg jbo"]),
        (["bench", "data=agiqa3k", "extra"], ["'extra'"]),
        (["bench", "data=agiqa3k", "--", "a prompt"], ["'--'"]),
        # prompts that read as settings: an error that says how to pass them
        (["route", "style=oil painting of a cat", a], ["unknown key 'style'", "-- 'style=oil painting of a cat'"]),
        (["route", "--no-text logo", a], ["unknown option '--no-text logo'", "-- '--no-text logo'"]),
        (["generate", "-5 degrees outside", a, png], ["'-5 degrees outside'", "after --"]),
        # values of the wrong type or range, named with their key
        (["generate", "a cat", a, png, "seed=abc"], ["seed=abc", "integer"]),
        (["generate", "a cat", a, png, "seed=1.5"], ["seed=1.5", "integer"]),
        (["generate", "a cat", a, png, "seed=2**70"], ["seed=2**70", "integer"]),
        (["generate", "a cat", a, png, f"seed={2**70}"], [f"seed={2**70}", "2**63-1"]),
        (["generate", "a cat", a, png, "seed=-1"], ["seed=-1"]),
        (["generate", "a cat", a, png, "fallback=maybe"], ["fallback=maybe", "true or false"]),
        (["route", "a cat", a, "lam=abc"], ["lam=abc", "number"]),
        (["route", "a cat", a, "budget=abc"], ["budget=abc", "number"]),
        (["route", "a cat", a, "max_cost=nan"], ["max_cost=nan", "finite"]),
        (["route", "a cat", a, "verbose=maybe"], ["verbose=maybe"]),
        (["sweep", "seeds=[abc]"], ["seeds=[abc]", "integer"]),
        (["sweep", f"seeds=[0,{2**70}]"], ["seeds=[0,", "2**63-1"]),
        (["sweep", "seeds=[]"], ["seeds=[]"]),
        (["sweep", "chunk_size=0"], ["chunk_size=0", ">= 1"]),
        (["sweep", "limit=abc"], ["limit=abc"]),
        (["sweep", "shard=2", "num_shards=2"], ["shard=2 num_shards=2"]),
        (["sweep", "keep_images=maybe"], ["keep_images=maybe"]),
        (["bench", "data=custom", d, "seed=abc"], ["seed=abc"]),
        (["bench", "data=custom", d, "anchor=maybe"], ["anchor=maybe"]),
        (["bench", "data=custom", d, "throughput.n_batch=0"], ["throughput.n_batch=0"]),
        (["bench", "data=custom", d, "split.fractions=[0.5,0.5]"], ["split.fractions=[0.5,0.5]"]),
        # required inputs
        (["bench"], ["data= is required", "agiqa3k", "cems10k", "custom", "tifa160"]),
        (["train", "out_dir=x"], ["data= is required", "agiqa3k"]),
        (["bench", "data=custom"], ["data.path is required"]),
        (["route", "a cat"], ["artifact=DIR is required"]),
        # folders and files that cannot be written: no traceback
        (["bench", "data=custom", d, f"out_dir={afile}"], [f"out_dir={afile}", "a file is there"]),
        (["sweep", f"out_dir={afile / 'sub'}"], [f"out_dir={afile / 'sub'}", "is a file"]),
        (["bench", "data=custom", d, *FAST_BENCH, f"out_dir={unwritable / 'b'}"], ["out_dir", str(unwritable)]),
        (["generate", "a cat", a, f"out={afile / 'x.png'}"], [f"out={afile / 'x.png'}", "is a file"]),
        (["generate", "a cat", a, f"out={unwritable / 'x.png'}"], [f"out={unwritable / 'x.png'}", "cannot write"]),
        (["generate", "a cat", a, f"out={tmp}"], [f"out={tmp}", "a folder is there"]),
        # prompts that cannot be routed
        (["route", "caf\udce9", a], ["prompt #0", "not valid text"]),
        (["generate", "caf\udce9", a, png], ["prompt #0", "not valid text"]),
        (["route", "a cat", "", a], ["prompt #1 is empty"]),
        (["route", "\t ", a], ["prompt #0 is empty"]),
        (["generate", "x" * 4001, a, png], ["4001 characters"]),
        (["route", a, "--"], ["no prompt given"]),
        # an error printed once, not as a log line too
        (["bench", "data=custom", "data.path=/nonexistent/t.csv", f"out_dir={tmp / 'once'}"], ["no such file"]),
        (["serve"], ["artifact=DIR is required"]),
        # '+KEY' adds nothing route, generate and serve read: refused as an unknown key is
        (["route", "a cat", a, "+foo=bar"], ["unknown key 'foo'", "'+foo=bar'"]),
        (["generate", "a cat", a, png, "+foo=bar"], ["unknown key 'foo'", "'+foo=bar'"]),
        (["serve", a, "+foo=bar"], ["unknown key 'foo'", "'+foo=bar'"]),
        (["route", "a cat", a, "+llm.foo=1"], ["unknown key 'llm.foo'"]),
        (["route", "a cat", a, "++nope.x=1"], ["unknown key 'nope.x'"]),
        # the LLM's endpoint and timing, the loading user's: checked, named
        (["route", "a cat", a, "llm.base_url=notaurl"], ["llm.base_url=notaurl", "http(s)://host[:port][/path]"]),
        (["generate", "a cat", a, png, "llm.base_url=ftp://h/v1"], ["llm.base_url=ftp://h/v1", "http(s)://"]),
        (["serve", a, "llm.base_url=http://user:pw@h/v1"], ["llm.base_url=http://[redacted]@h/v1"]),
        (["route", "a cat", a, "llm.host='not a host'"], ["llm.host=not a host"]),
        (["route", "a cat", a, "llm.deadline_s=0"], ["llm.deadline_s=0", "> 0"]),
        (["route", "a cat", a, "llm.timeout=abc"], ["llm.timeout=abc"]),
        (["generate", "a cat", a, png, "llm.retries=-1"], ["llm.retries=-1"]),
        (["serve", a, "llm.concurrency=0"], ["llm.concurrency=0"]),
        (["serve", a, "llm.backoff_s=-1"], ["llm.backoff_s=-1"]),
        (
            ["route", "a cat", a, "llm.api_key_env=T2IROUTE_TEST_NO_SUCH_VAR"],
            ["llm.api_key_env=T2IROUTE_TEST_NO_SUCH_VAR", "not set"],
        ),
    ]


def test_bad_inputs_exit_2_with_one_line_naming_the_input(
    tiny_artifact, table, tmp_path, unwritable, capsys, monkeypatch
):
    from t2iroute.router.core import Router

    def no_load(*a, **k):
        raise AssertionError("a model loaded before the input was checked")

    monkeypatch.setattr(Router, "load", classmethod(no_load))
    failed = []
    runs = tmp_path / "runs"
    for argv, needles in _bad_inputs(tiny_artifact, table, tmp_path, unwritable):
        if (
            argv[0] in ("bench", "train", "sweep")
            and not any(a.startswith("out_dir=") for a in argv)
            and "--" not in argv
        ):
            argv = argv + [f"out_dir={runs}"]
        rc, line = _one_line(capsys, argv)
        if rc != 2 or not line.startswith(f"t2iroute {argv[0]}: error: ") or not all(n in line for n in needles):
            failed.append((argv[:4], rc, line))
    assert not failed, "\n".join(map(str, failed))
    assert not (tmp_path / "img.png").exists() and not runs.exists()  # refused before a run folder is made
    log = next((tmp_path / "once").glob("*.log")).read_text()  # the run's log file keeps the error
    assert "no such file" in log


def test_unknown_command_is_one_line(capsys):
    rc, line = _one_line(capsys, ["rout", "a cat"])
    assert rc == 2 and "unknown command 'rout'" in line and "did you mean route?" in line


def test_entry_point_bad_input_one_line(tiny_artifact, tmp_path):
    """The installed script as a user runs it, argv bytes that are not UTF-8 included."""
    exe = str(ROOT / ".venv" / "bin" / "t2iroute")
    if not os.path.exists(exe):
        exe = None
    base = [exe] if exe else [sys.executable, "-m", "t2iroute.cli"]
    cases = [
        (["route", "a cat", f"artifact={tiny_artifact}", "lamda=0.1"], "did you mean lam?"),
        (["route", "--no-text logo", f"artifact={tiny_artifact}"], "unknown option '--no-text logo'"),
        ([b"route", b"caf\xe9", f"artifact={tiny_artifact}".encode()], "not valid text"),
        (["generate", "a cat", f"artifact={tiny_artifact}", f"out={tmp_path / 'a.png'}", "seed=2**70"], "seed=2**70"),
        (["bench"], "data= is required"),
        (["serve"], "artifact=DIR is required"),  # was two lines: the error logged, then printed
        (["route", "a cat", f"artifact={tiny_artifact}", "+foo=bar"], "unknown key 'foo' in '+foo=bar'"),
        (["serve", f"artifact={tiny_artifact}", "llm.base_url=notaurl"], "llm.base_url=notaurl"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [os.fsencode(x) for x in base] + [os.fsencode(x) for x in argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        for argv, _ in cases
    ]
    for p, (argv, needle) in zip(procs, cases):
        out, err = p.communicate(timeout=180)
        err = err.decode("utf-8", "replace")
        assert p.returncode == 2 and out == b"", (argv, p.returncode, out, err)
        assert len(err.strip().splitlines()) == 1 and needle in err, (argv, err)


@pytest.mark.parametrize("cmd", ["route", "generate", "serve"])
def test_llm_settings_reach_the_loader_on_every_artifact_command(cmd, tiny_artifact, tmp_path, capsys, monkeypatch):
    """llm.* (endpoint, key variable, timing) go to Router.load(local=...) on route, generate and
    serve: the loading user's, whatever the artifact says."""
    from t2iroute.router.core import Router

    seen = {}

    class Stop(ValueError):
        pass

    def fake_load(cls, path, **kw):
        seen.update(kw)
        raise Stop("stopped after load")

    monkeypatch.setattr(Router, "load", classmethod(fake_load))
    monkeypatch.setenv("T2IROUTE_TEST_LLM_KEY", "sk-test")
    argv = {
        "route": ["route", "a cat"],
        "generate": ["generate", "a cat", f"out={tmp_path / 'x.png'}"],
        "serve": ["serve"],
    }[cmd]
    rc = main(
        [
            *argv,
            f"artifact={tiny_artifact}",
            "llm.base_url=http://127.0.0.1:9/v1",
            "llm.deadline_s=5",
            "llm.timeout=2",
            "llm.retries=1",
            "llm.backoff_s=0.1",
            "llm.concurrency=3",
            "llm.api_key_env=T2IROUTE_TEST_LLM_KEY",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "stopped after load" in err and "sk-test" not in err
    assert seen["local"]["llm"] == {
        "base_url": "http://127.0.0.1:9/v1",
        "deadline_s": 5,
        "timeout": 2,
        "retries": 1,
        "backoff_s": 0.1,
        "concurrency": 3,
        "api_key_env": "T2IROUTE_TEST_LLM_KEY",
    }


def test_generate_success_is_quiet_json_and_world_readable(tiny_artifact, tmp_path):
    """stdout: the JSON result only; stderr: nothing (no INFO lines, no open_clip notice for the
    tiny random CLIP, no loading bars); the image 0644 in a new 0755 folder; costs with their unit."""
    out = tmp_path / "new" / "car.png"
    out.parent.mkdir(mode=0o755)
    dead = 2**22 + 777  # above the default pid_max: a killed run's leftover
    (out.parent / f".t2iroute-{dead}-x.png").write_bytes(b"half an image")
    live = out.parent / f".t2iroute-{os.getpid()}-y.png"  # a run in progress keeps its temp file
    live.write_bytes(b"being written")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "t2iroute.cli",
            "generate",
            "a red car",
            f"artifact={tiny_artifact}",
            f"out={out}",
            "scorer=clip_tiny",
            "backend=fast",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=lambda: os.umask(0o022),
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    g = json.loads(r.stdout)
    assert g["out"] == str(out) and g["cost_unit"] == "s" and "clip" in g["score"]
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert oct(out.parent.stat().st_mode & 0o777) == "0o755"
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([live.name, "car.png"])


def test_prompts_after_double_dash(tiny_artifact, capsys):
    argv = [
        "route",
        f"artifact={tiny_artifact}",
        "lam=0",
        "--",
        "style=oil painting of a cat",
        "--no-text logo",
        "~tilde",
        "lam=1",
    ]
    assert main(argv) == 0
    ds = json.loads(capsys.readouterr().out)
    assert [d["prompt"] for d in ds] == ["style=oil painting of a cat", "--no-text logo", "~tilde", "lam=1"]
    assert all(d["policy"] == {"type": "lam", "lam": 0.0} and d["cost_unit"] == "s" for d in ds)
    # without --: a space before the first '=' makes a prompt
    assert _split_prompts(["E = mc2", "a=b", "--", "x=y"]) == (["E = mc2", "x=y"], ["a=b"])


def test_multirun_prints_json_lines(tiny_artifact, table, tmp_path, capsys):
    assert main(["route", "a cat", f"artifact={tiny_artifact}", "-m", "lam=0,1e9"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(ln)["backend"] for ln in lines] == ["mid", "fast"]
    out = tmp_path / "m"
    assert (
        main(
            [
                "bench",
                "data=custom",
                f"data.path={table}",
                *FAST_BENCH,
                "-m",
                "seed=0,1",
                f"out_dir={out}/s${{seed}}",
                f"hydra.sweep.dir={tmp_path / 'sweep'}",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(ln)["seed"] for ln in lines] == [0, 1]
    assert (out / "s0" / "summary.json").exists() and (out / "s1" / "summary.json").exists()
    # every run is checked before the first starts
    rc, line = _one_line(
        capsys,
        [
            "bench",
            "data=custom",
            f"data.path={table}",
            *FAST_BENCH,
            "-m",
            "seed=0,abc",
            f"out_dir={tmp_path / 'n'}/s${{seed}}",
        ],
    )
    assert rc == 2 and "seed=abc" in line and not (tmp_path / "n").exists()


def test_bench_and_train_quiet_unless_verbose_with_cost_unit(table, tmp_path, capsys):
    base = ["bench", "data=custom", f"data.path={table}", *FAST_BENCH]
    assert main(base + [f"out_dir={tmp_path / 'q'}"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and json.loads(cap.out)["cost_unit"] == "s"
    assert "INFO" in next((tmp_path / "q").glob("*.log")).read_text()  # the log file keeps INFO
    assert main(base + [f"out_dir={tmp_path / 'v'}", "verbose=true"]) == 0
    assert "[INFO]" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "data=custom",
                f"data.path={table}",
                "features=[lexical]",
                "predictor=ridge",
                f"out_dir={tmp_path / 't'}",
                "data.cost_unit=usd",
            ]
        )
        == 0
    )
    cap = capsys.readouterr()
    assert cap.err == "" and json.loads(cap.out)["cost_unit"] == "usd"


def test_cfg_job_and_searchpath_still_work(table, tmp_path, capsys):
    assert main(["bench", "data=agiqa3k", "--cfg", "job"]) == 0
    assert OmegaConf.create(capsys.readouterr().out).data.name == "agiqa3k"
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(f"name: mine\npath: {table}\nmetric: clip\nbackends: null\ncosts: {{}}\n")
    assert (
        main(
            [
                "bench",
                f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                "data=mine",
                *FAST_BENCH,
                f"out_dir={tmp_path / 'o'}",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["data"] == "mine"


def test_sweep_progress_goes_to_stderr(tmp_path, capsys):
    import pandas as pd

    from t2iroute.sweeps.local import run_sweep

    empty = pd.DataFrame({c: pd.Series([], dtype=str) for c in ("prompt_id", "prompt", "source")})
    run_sweep({"b": object()}, empty, [0], object(), tmp_path, progress=False)
    cap = capsys.readouterr()
    assert cap.out == "" and "sweep: 0 items" in cap.err


def _leaf_keys(cfg, groups):
    keys = []

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                walk(v, key + ".")
            else:
                keys.append(key)

    walk({k: v for k, v in OmegaConf.to_container(cfg).items() if k not in groups}, "")
    return keys


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c != "app"])
def test_help_lists_every_key_with_a_description(cmd, capsys):
    from tests.test_cli import _compose

    assert main([cmd, "--help"]) == 0
    text = capsys.readouterr().out
    cfg = _compose(cmd, ["data=agiqa3k"] if cmd in ("bench", "train", "replay") else [])
    groups = {"data", "features", "predictor", "backends", "scorer"}
    for g in _group_names(cmd):
        assert re.search(rf"^  {g}=\S.*\(options: ", text, re.M), (cmd, g)
    for key in _leaf_keys(cfg, groups):
        assert re.search(rf"^  {re.escape(key)}=.*?\s{{2,}}\S", text, re.M), (cmd, key, text)


def _group_names(cmd):
    from t2iroute.cli.schema import defaults_list

    return {next(iter(d)) for d in defaults_list(cmd) if isinstance(d, dict)} - {"hydra"}


def test_top_and_app_help(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(re.search(rf"^  {c}\s", text, re.M) for c in COMMANDS) and " -- " in text
    assert main(["app", "--help"]) == 0
    text = capsys.readouterr().out
    assert all(re.search(rf"^  {k}=\S*\s{{2,}}\S", text, re.M) for k in ("artifact", "bench", "port", "address"))


def test_documented_bench_and_train_commands_name_their_data():
    lines = []
    for p in [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md"))]:
        if p.exists():
            lines += [ln for ln in p.read_text().splitlines() if re.search(r"bin/t2iroute (bench|train)\b", ln)]
    assert lines and all("data=" in ln for ln in lines), [ln for ln in lines if "data=" not in ln]


def test_scorer_that_cannot_load_fails_before_generating(tiny_artifact, tmp_path, capsys, monkeypatch):
    """A scorer that cannot load (CLIP weights not on this machine: a missing checkpoint here, the
    model hub off in the issue) is one line, exit 2, naming the scorer, why, and the scorers that
    need no download; no image is generated (was: a 101-line traceback after generating, exit 1,
    and no image written). Same for several prompts."""
    from t2iroute.router.core import Router

    calls = []
    monkeypatch.setattr(Router, "generate", lambda self, *a, **k: calls.append(a))
    monkeypatch.setattr(Router, "generate_iter", lambda self, *a, **k: calls.append(a) or iter(()))
    bad = ["scorer=clip", f"scorer.pretrained={tmp_path / 'no-such-clip.pt'}"]
    for argv in (
        ["generate", "a red car", f"out={tmp_path / 'a.png'}"],
        ["generate", "a red car", "two dogs", f"out_dir={tmp_path / 'many'}"],
    ):
        rc, line = _one_line(capsys, [*argv, f"artifact={tiny_artifact}", *bad])
        assert rc == 2 and "scorer=clip: cannot load" in line and "no such checkpoint file" in line, line
        assert "need no download: clip_tiny (random weights), testbed_check" in line, line
    assert calls == [] and not (tmp_path / "a.png").exists() and not (tmp_path / "many").exists()


def test_score_failing_at_scoring_time_keeps_the_image(tiny_artifact, tmp_path, capsys, caplog, monkeypatch):
    """A scorer that loads but fails on the image: the image is written, the score is null with
    the reason (never made up), one warning; several prompts: each record carries its score."""
    import t2iroute.cli.route as cli_route

    class Broken:
        metric, higher_is_better = "clip", True

        def score(self, images, prompts):
            raise RuntimeError("out of memory")

    monkeypatch.setattr(cli_route, "load_scorer", lambda cfg: Broken())
    out = tmp_path / "a.png"
    assert main(["generate", "a red car", f"artifact={tiny_artifact}", f"out={out}", "backend=fast"]) == 0
    cap = capsys.readouterr()
    g = json.loads(cap.out)
    assert out.is_file() and g["score"] == {"clip": None} and "out of memory" in g["score_error"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "score unavailable (clip): out of memory"
    ]
    monkeypatch.undo()
    d = tmp_path / "many"
    assert (
        main(
            [
                "generate",
                "a red car",
                "two dogs",
                f"artifact={tiny_artifact}",
                f"out_dir={d}",
                "backend=fast",
                "scorer=testbed_check",
            ]
        )
        == 0
    )
    recs = [json.loads(ln) for ln in (d / "generations.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(isinstance(r["score"]["testbed_check"], float) for r in recs)


def test_version_and_python_m(capsys):
    """t2iroute --version prints the package metadata's version; python -m t2iroute is the command."""
    from importlib.metadata import version

    want = f"t2iroute {version('t2iroute')}"
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == want
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "t2iroute", "--version"], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0 and r.stdout.strip() == want and r.stderr == ""
    r = subprocess.run([sys.executable, "-m", "t2iroute", "rout"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "did you mean route?" in r.stderr


def test_help_names_what_exists_and_the_llm_ports_the_code_uses(capsys, monkeypatch):
    """--help's example names the artifact make demo makes (not outputs/demo/tiny/router); the
    LLM default of route/generate/serve is the one the loader uses, and the help says that bench
    and train (conf/features/llm.yaml) use another port."""
    from t2iroute.features.llm import default_base_url

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "outputs/demo/tiny" not in text and "outputs/demo/testbed/router" in text
    for var in ("T2IROUTE_LLM_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    code_port = re.search(r":(\d+)/", default_base_url()).group(1)
    conf_url = OmegaConf.load(ROOT / "t2iroute/conf/features/llm.yaml").base_url
    conf_port = code_port if conf_url is None else re.search(r":(\d+)/", str(conf_url)).group(1)
    for cmd in ("route", "generate", "serve"):
        assert main([cmd, "--help"]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if "llm.base_url=" in ln)
        assert re.search(rf"or http://127\.0\.0\.1:{code_port}/v1", line), (cmd, line)
        assert code_port == conf_port or f":{conf_port}" in line, (cmd, line)


def test_one_default_llm_port_everywhere(monkeypatch):
    """route --help, the features config, scripts/serve_llm.py and the featurizer all mean the same
    server (issue 23: help said :8080 while the config said :8090)."""
    import inspect

    import yaml

    from t2iroute.features import llm, llm_server
    from t2iroute.paths import CONF_DIR

    monkeypatch.delenv("T2IROUTE_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    port = llm.default_base_url().split(":")[-1].split("/")[0]
    assert port == "8080"
    assert f'"--port", type=int, default={port})' in inspect.getsource(llm_server)
    assert yaml.safe_load((CONF_DIR / "features" / "llm.yaml").read_text())["base_url"] is None
    assert llm.OpenAIProvider("m").base_url == f"http://127.0.0.1:{port}/v1"  # what base_url: null resolves to
    from t2iroute.cli.schema import Llm

    text = Llm.__dataclass_fields__["base_url"].metadata["help"]  # route, generate and serve's llm.base_url
    assert "8090" not in text and f":{port}/v1" in text


def test_a_reader_that_stops_early_gets_no_traceback():
    """`t2iroute --help | head -1`: the reader closes the pipe before the help is written."""
    import subprocess

    p = subprocess.Popen([sys.executable, "-m", "t2iroute", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the command has imported anything, so its first write meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and "Traceback" not in err, err


def test_cli_reference_page_is_generated_from_the_schema():
    """docs/reference/cli.md is what the typed configs say now (`make cli-reference` writes it), and
    every key the schema declares is listed there and in --help, with the same help text."""
    from t2iroute.cli.help import command_help, reference_markdown
    from t2iroute.cli.schema import CONFIGS
    from t2iroute.cli.typed import keys

    page = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert page == reference_markdown(), "docs/reference/cli.md is stale: run make cli-reference"
    for cmd, cls in CONFIGS.items():
        text = command_help(cmd)
        for k in keys(cls):
            if not k.section:
                assert f"| `{k.name}` |" in page and k.help.replace("|", "\\|") in page, (cmd, k.name)
                assert f"  {k.name}=" in text, (cmd, k.name)
