"""The layering contract (pyproject's [tool.importlinter], issue 24): runtime packages never import
training, serving, the app or the CLI, and each layer imports only those below it."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    shutil.copytree(ROOT / "t2iroute", tmp_path / "t2iroute",
                    ignore=lambda d, names: [n for n in names if n in ("data", "weights", "conf", "__pycache__")])
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    core = tmp_path / "t2iroute" / "router" / "core.py"
    core.write_text(core.read_text() + "\n\ndef _upward():\n    from t2iroute.training import train  # noqa: F401\n")
    r = _lint(tmp_path, tmp_path)
    assert r.returncode != 0, r.stdout[-3000:]
    assert "BROKEN" in r.stdout and "t2iroute.router.core -> t2iroute.training" in r.stdout, r.stdout[-3000:]
