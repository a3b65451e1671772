"""examples/ run as a user runs them, against a trained router artifact."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(script, tiny_artifact, tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), str(tiny_artifact), str(tmp_path / "out.png")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "T2IROUTE_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), "an example prints what it did"
    if script == "route_and_generate.py":
        assert (tmp_path / "out.png").stat().st_size > 0
    if script == "plugin_policy.py":
        assert "cheapest_within" in r.stdout
