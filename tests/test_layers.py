"""The layering contract (pyproject's [tool.importlinter], issue 24): runtime packages never import
training, serving, the app or the CLI, and each layer imports only those below it; and no two
modules import each other, directly or through others."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    r = _lint(ROOT, ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "2 kept, 0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """A copy of the package (code only) where the router imports training: lint-imports fails and names it."""
    shutil.copytree(
        ROOT / "t2iroute",
        tmp_path / "t2iroute",
        ignore=lambda d, names: [n for n in names if n in ("data", "weights", "conf", "__pycache__")],
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    core = tmp_path / "t2iroute" / "router" / "core.py"
    core.write_text(core.read_text() + "\n\ndef _upward():\n    from t2iroute.training import train  # noqa: F401\n")
    r = _lint(tmp_path, tmp_path)
    assert r.returncode != 0, r.stdout[-3000:]
    assert "BROKEN" in r.stdout and "t2iroute.router.core -> t2iroute.training" in r.stdout, r.stdout[-3000:]


def _import_cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(edges[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    return cycles


def test_no_import_cycles_between_modules():
    """grimp's graph counts imports inside functions too: a cycle is not broken by hiding one side
    in a function. What both sides need goes into a lower module (features.sentence_models,
    predictors.candidates, t2iroute.rules), or the registry resolves it by name."""
    graph = grimp.build_graph("t2iroute", include_external_packages=False, cache_dir=None)
    cycles = _import_cycles(graph)
    lines = []
    for comp in cycles:
        lines.append("cycle: " + ", ".join(comp))
        for a in comp:
            for b in sorted(set(graph.find_modules_directly_imported_by(a)) & set(comp)):
                where = graph.get_import_details(importer=a, imported=b)
                lines.append(f"    {a} -> {b} (line {', '.join(str(d['line_number']) for d in where)})")
    assert not cycles, "\n".join(lines)


def test_the_cycle_check_finds_a_cycle():
    """The check itself: two modules that import each other (one inside a function) are one cycle."""
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b", line_number=1, line_contents="from p.b import x")
    graph.add_import(importer="p.b", imported="p.a", line_number=9, line_contents="    from p.a import y")
    graph.add_import(importer="p.c", imported="p.a", line_number=1, line_contents="import p.a")
    assert _import_cycles(graph) == [["p.a", "p.b"]]
