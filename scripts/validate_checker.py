"""Validate the testbed checker three ways and save the figures (issue 23).

1. perfect renders and scenes broken on purpose (``checker.validate``);
2. the same, degraded the way the testbed models degrade (``checker.validate_degraded``);
3. agreement with the hand-labelled images in ``t2iroute/data/testbed-labels`` (``checker.agreement``):
   all attributes, and those the person's labels decide; on all 170 images and on the even / odd
   halves; and on the second set ``t2iroute/data/testbed-labels-2`` (90 images the current weights
   drew, labelled blind after the thresholds were set: held out), the third set
   ``t2iroute/data/testbed-labels-3`` (72 more of the current weights, labelled blind: held out),
   the held-out sets together (162 images), and every set together.

    python scripts/validate_checker.py --out docs/measurements/testbed-checker.json
    python scripts/validate_checker.py --compare /tmp/checker_v1.py [...]   # also score older checker files
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path


LABELS1 = Path(__file__).resolve().parents[1] / "t2iroute" / "data" / "testbed-labels"
LABELS2 = LABELS1.with_name("testbed-labels-2")  # drawn by the current weights; labelled blind, after the tuning
LABELS3 = LABELS1.with_name("testbed-labels-3")  # more of the same, labelled blind by four other labellers


def _load(path: str):
    spec = importlib.util.spec_from_file_location("checker_compare", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TestbedChecker()


def figures(ck, n: int) -> dict:
    from t2iroute.testbed import checker as C

    out = {"perfect": C.validate(n=n, seed=1, checker=ck), "degraded": C.validate_degraded(n=n, seed=2, checker=ck)}
    out["labels"] = {s: C.agreement(checker=ck, subset=s) for s in ("all", "even", "odd")}
    if (LABELS2 / "labels.jsonl").exists():
        out["labels2"] = C.agreement(LABELS2, checker=ck)
        out["labels_both"] = C.agreement([LABELS1, LABELS2], checker=ck)
    if (LABELS3 / "labels.jsonl").exists():
        out["labels3"] = C.agreement(LABELS3, checker=ck)
        out["labels_held_out"] = C.agreement([LABELS2, LABELS3], checker=ck)
        out["labels_every"] = C.agreement([LABELS1, LABELS2, LABELS3], checker=ck)
    return out


def _line(name: str, lab: dict) -> str:
    return (
        f"  {name} ({lab['n_images']}): all attributes {lab['all_attributes']:.3f}, decided "
        f"{lab['decided']['all_attributes']:.3f}; "
        + ", ".join(f"{k} {v:.2f}" for k, v in lab["decided"]["per_attribute"].items())
        + f"; blank {lab['blank']:.3f}; score MAE {lab['score_mae']:.3f}, r {lab['score_corr']:.2f}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=120, help="scenes per validation (levels 1-3 cycled)")
    p.add_argument("--out", default=None, help="save the figures as JSON here")
    p.add_argument(
        "--compare", nargs="+", default=[], help="checker.py files (e.g. older versions) to score the same way"
    )
    a = p.parse_args(argv)
    from t2iroute.testbed.checker import TestbedChecker

    res = {"checker": figures(TestbedChecker(), a.n)}
    for i, f in enumerate(a.compare):
        res[f"compare{i or ''}"] = {"file": f, **figures(_load(f), a.n)}
    for name, f in res.items():
        print(
            f"{name}: perfect renders {f['perfect']['truth_all']:.3f}; breaks "
            + ", ".join(f"{k} {v:.2f}" for k, v in f["perfect"]["breaks"].items())
        )
        print("  degraded truth: " + ", ".join(f"{k} {v['truth']:.3f}" for k, v in f["degraded"].items()))
        print(
            _line("labels, first set", f["labels"]["all"])
            + f" (decided: even {f['labels']['even']['decided']['all_attributes']:.3f}, "
            f"odd {f['labels']['odd']['decided']['all_attributes']:.3f})"
        )
        for key, title in (
            ("labels2", "labels, second set (current weights)"),
            ("labels_both", "labels, first and second sets"),
            ("labels3", "labels, third set (current weights)"),
            ("labels_held_out", "labels, held out (second and third sets)"),
            ("labels_every", "labels, every set"),
        ):
            if key in f:
                print(_line(title, f[key]))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1, default=float) + "\n")
        print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
