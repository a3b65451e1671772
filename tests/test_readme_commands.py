"""Every README command that names the demo router (``outputs/demo/testbed/router``, made by
``make demo``) or ``artifact=DIR`` in the "Command line and app" block runs, against a router
built here like the demo's: the same testbed backends (their shipped configs and weights, which
generate on CPU in a fraction of a second) and the same cost scale, trained by ``t2iroute train``
from a quality table (lexical features and ridge, so that no embedding model loads).

``serve`` and ``app`` lines would start a server: they are checked with ``--cfg job`` (the
command line composes: every key and option is known) instead of being run.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from t2iroute.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = "outputs/demo/testbed/router"
#: the demo router's backends and costs (s per image, `make demo` on a 2-core CPU)
BACKENDS = {
    "testbed_big_4": 0.124,
    "testbed_small_8": 0.130,
    "testbed_big_32_es": 0.298,
    "testbed_big_8": 0.328,
    "testbed_big_16": 0.467,
}
PROMPTS = [
    "a red circle",
    "two dotted red squares",
    "a green triangle",
    "three small striped blue squares",
    "a blue circle left of a red square",
    "two green circles",
    "a dotted yellow triangle",
    "a large red square above a small blue circle",
]


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every ``t2iroute`` command line in the bash blocks of a README or
    docs page that names the demo router, or ``artifact=DIR`` inside a "Command line and app"
    section (or page)."""
    out, section, fence, held = [], "", None, ""
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith(("# ", "## ")):
            section = line.split(" ", 1)[1]
        if line.startswith("```"):
            fence, held = (None if fence is not None else line[3:].strip()), ""
            continue
        if fence == "bash" and line.rstrip().endswith("\\"):  # a command continued on the next line
            held += line.rstrip()[:-1] + " "
            continue
        line, held = held + line, ""
        if fence != "bash" or not any(
            w == "t2iroute" or w.endswith("/t2iroute") for w in shlex.split(line, comments=True)
        ):
            continue  # not a t2iroute command (a comment that names one is no command)
        if DEMO in line or ("artifact=DIR" in line and section.startswith("Command line")):
            out.append((n, line))
    return out


def _argv(line: str, artifact: Path) -> tuple[dict[str, str], list[str]]:
    """The environment assignments and the t2iroute arguments of a README line, the artifact's
    path substituted."""
    words = shlex.split(
        line.replace(DEMO, str(artifact)).replace("artifact=DIR", f"artifact={artifact}"), comments=True
    )
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        k, _, v = words.pop(0).partition("=")
        env[k] = v
    i = next(i for i, w in enumerate(words) if w == "t2iroute" or w.endswith("/t2iroute"))
    return env, words[i + 1 :]


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, int, str]]:
    """(file, line, command) of every documented command that names the demo router (README and docs)."""
    return [
        (f.relative_to(ROOT).as_posix(), n, c) for f in DOCS for n, c in readme_commands(f.read_text(encoding="utf-8"))
    ]


def test_readme_commands_are_found():
    cmds = [(n, c) for _, n, c in documented_commands()]
    assert {_argv(c, Path("A"))[1][0] for _, c in readme_commands((ROOT / "README.md").read_text())} >= {
        "route",
        "generate",
        "serve",
    }
    subs = {_argv(c, Path("A"))[1][0] for _, c in cmds}
    assert {"route", "generate", "serve"} <= subs, cmds
    assert not any(
        "outputs/demo/tiny" in ln
        for f in DOCS
        for ln in f.read_text().splitlines()
        if "--artifact" in ln or "artifact=" in ln
    ), "make demo does not make outputs/demo/tiny"


@pytest.fixture(scope="module")
def demo_like_router(tmp_path_factory):
    """A router over the demo's testbed backends at the demo's cost scale, trained as make demo
    trains its own (t2iroute train ... backends=[...] router.budget=0.5): the artifact carries the
    backends' configs, so it generates offline."""
    d = tmp_path_factory.mktemp("demo")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        prompt = f"{PROMPTS[i % len(PROMPTS)]} number {i}"
        hard = any(w in prompt for w in ("two", "three", "above", "left"))
        for b, c in BACKENDS.items():
            q = {
                "testbed_big_4": 0.2,
                "testbed_small_8": 0.25,
                "testbed_big_8": 0.35,
                "testbed_big_32_es": 0.4,
                "testbed_big_16": 0.45,
            }[b] - (0.15 if hard and b in ("testbed_big_4", "testbed_small_8") else 0)
            rows.append(
                dict(
                    prompt_id=f"p{i}",
                    prompt=prompt,
                    backend=b,
                    metric="testbed_check",
                    score=float(np.clip(q + rng.normal(0, 0.05), 0, 1)),
                    cost_s=c * (1 + rng.normal(0, 0.02)),
                    source="testbed",
                )
            )
    table = d / "quality.parquet"
    pd.DataFrame(rows).to_parquet(table)
    rc = main(
        [
            "train",
            "data=custom",
            f"data.path={table}",
            "metric=testbed_check",
            "features=[lexical]",
            "predictor=ridge",
            f"backends=[{','.join(BACKENDS)}]",
            "router.budget=0.5",
            f"out_dir={d / 'testbed'}",
        ]
    )
    assert rc == 0
    return d / "testbed" / "router"


def test_every_readme_command_runs_against_a_demo_like_router(demo_like_router, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("T2IROUTE_THREADS", "1")  # torch's CPU threads (README commands run as written)
    (tmp_path / "prompts.txt").write_text("a red circle\ntwo dogs\n")  # the prompts_file= example's file
    capsys.readouterr()
    cmds = documented_commands()
    assert len(cmds) >= 6, cmds
    for f, n, line in cmds:
        env, argv = _argv(line, demo_like_router)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        if argv[0] in ("serve", "app"):
            argv = argv + ["--cfg", "job"] if argv[0] == "serve" else ["--help"]
        rc = main(argv)
        cap = capsys.readouterr()
        assert rc == 0, f"{f} line {n}: {line}\n{cap.err}"
        if argv[0] in ("route", "generate") and "--cfg" not in argv:
            json.loads(cap.out)  # the command's JSON result
        for w in argv:
            if w.startswith("out="):
                assert (tmp_path / w[4:]).is_file(), (n, line)
            if w.startswith("out_dir="):
                assert any((tmp_path / w[8:]).glob("*.png")), (n, line)


def test_the_docs_home_page_is_the_readme_with_links_into_docs():
    """docs/hooks/readme_index.py serves README.md as the site's home page: every README link into
    docs/ becomes relative to the docs folder and names a page that exists (mkdocs --strict checks
    the rest when CI builds the site)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("readme_index", root / "docs" / "hooks" / "readme_index.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    index = hook.readme_as_index((root / "README.md").read_text())
    links = re.findall(r"\]\(([^)#\s]+)", index)
    assert links and not any(link.startswith("docs/") for link in links)
    for link in links:
        if "://" not in link:
            assert (root / "docs" / link).exists(), link
