"""The runtime stands alone: routing with a loaded artifact imports no training code and no heavy
library it does not use (checked in a fresh interpreter)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import t2iroute

PKG = Path(t2iroute.__file__).parent


def test_router_package_never_imports_training():
    for f in (PKG / "router").glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n.startswith("t2iroute.training") for n in names), (f.name, names)


def test_routing_a_loaded_artifact_imports_no_heavy_library(tiny_artifact):
    code = (
        "import json, sys\n"
        "from t2iroute import Router\n"
        f"r = Router.load({str(tiny_artifact)!r})\n"
        "d = r.route('two birds on a wire', max_cost=0.6)\n"
        "heavy = ['torch', 'diffusers', 'sklearn', 'scipy', 'pandas', 'sentence_transformers', 'lightgbm',\n"
        "         'hydra', 't2iroute.training']\n"
        "print(json.dumps({'backend': d.backend, 'loaded': [m for m in heavy if m in sys.modules]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"backend": "mid", "loaded": []}, res
