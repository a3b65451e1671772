"""Probe: thousands of crafted artifacts, each refused with one clear error or routing finite values.

Runs the mutations of ``tests/test_fuzz_artifact.py`` (manifest values, types, nesting, format
version, costs, policy; arrays NaN / inf / zeros / huge / shapes / dtypes / missing / extra;
LightGBM model texts: numbers, fields, lines, truncation) with every checksum recomputed, plus
pinned loads of mutated artifacts (a pin refuses any change). LightGBM texts load in this
process: an abort would end the probe with no JSON line (rc 134), which counts as failing.

    python scripts/probe_artifacts.py [--cases 4000] [--seed 0] [--budget-s 170]

Prints one JSON line {"area": "artifacts", "tried": N, "held": M, "not_held": [...], ...};
exits 0 when every case held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=170.0, help="stop trying new cases after this long")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # format 1/2 warnings, one per case
    warnings.simplefilter("ignore")  # numpy's casts of NaN in the mutations

    from t2iroute import Router
    from t2iroute.errors import ArtifactError
    from tests.test_fuzz_artifact import (
        MUTATORS,
        RandomChooser,
        build_artifacts,
        outcome,
        read_manifest,
        try_case,
    )

    t0 = time.monotonic()
    tried, held, not_held = 0, 0, []
    outcomes: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("T2IROUTE_CACHE", str(tmp / "cache"))
        bases = build_artifacts(tmp)
        plan = [
            ("ridge", "manifest"),
            ("stack", "manifest"),
            ("ridge", "arrays"),
            ("stack", "arrays"),
            ("stack", "model_text"),
            ("stack", "model_text"),
            ("ridge", "pinned"),
            ("stack", "pinned"),
        ]
        for i in range(args.cases):
            if time.monotonic() - t0 > args.budget_s:
                break
            base_name, kind = plan[i % len(plan)]
            c = RandomChooser(args.seed * 1_000_003 + i)
            work = tmp / f"w{i % 4}"
            work.mkdir(exist_ok=True)
            tried += 1
            desc = "?"
            try:
                if kind == "pinned":
                    import shutil

                    base = bases[base_name]
                    pin = read_manifest(base)["manifest_sha256"]
                    path = work / "artifact"
                    shutil.rmtree(path, ignore_errors=True)
                    shutil.copytree(base, path)
                    sub = c.choice(["manifest", "arrays"] + (["model_text"] if base_name == "stack" else []))
                    desc = "pinned, " + MUTATORS[sub](path, c)
                    try:
                        same = read_manifest(path).get("manifest_sha256") == pin
                    except (ValueError, AttributeError):
                        same = False
                    if same:
                        got = "unchanged"
                    else:
                        try:
                            Router.load(path, expected_sha256=pin)
                            raise AssertionError("a changed artifact loaded under the publisher's pin")
                        except ArtifactError as e:
                            assert str(path) in str(e), str(e)
                            got = "refused"
                else:
                    desc, got = try_case(bases[base_name], kind, c, work)
                held += 1
                outcomes[f"{kind}:{got}"] += 1
            except Exception as e:  # noqa: BLE001 -- every other outcome is a promise not held
                not_held.append(f"{base_name}/{kind} case {i}: {desc[:120]} -> {type(e).__name__}: {str(e)[:200]}")
        assert outcome(bases["ridge"]) == "routed"
    print(
        json.dumps(
            {
                "area": "artifacts",
                "tried": tried,
                "held": held,
                "not_held": not_held[:50],
                "outcomes": dict(sorted(outcomes.items())),
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
    )
    return 0 if held == tried and tried > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
