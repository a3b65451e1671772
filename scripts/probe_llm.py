"""Probe the LLM featurizer's promises over many (fault x setting) cases, bounded (< 3 min).

Each case routes a few prompts through a router artifact with LLM features against the fake LLM
server of tests/test_llm_faults.py in one fault (hang, trickle, trickling headers, garbage, a huge
body, a redirect to another host, an echo of the request's headers, ...) and checks, with
tests/test_fake_llm.run_case: the route returned within the user's deadline + slack, finite
predictions with the LLM's features imputed and the fault logged once with a reason, the number of
requests within the bound, no redirect followed, the API key in no log line, decision or stat.

Settings: a hostile artifact (``deadline_s: null, timeout: 3600, retries: 1000000``) with the user's
deadline (Python API and ``t2iroute route ... llm.deadline_s=``), with the user's full timing, an
artifact with sane timing of its own, and the hostile artifact with no user timing at all (fast
faults only: its deadline is bounded to 60 s). Prints one JSON line
``{"area": "llm", "tried": N, "held": M, "not_held": [...]}``; exit status 0 if all held.

    python scripts/probe_llm.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.test_fake_llm import FAULTS, HOSTILE, QUICK, make_llm_artifact, run_case  # noqa: E402

BUDGET_S = 170  # stop starting new cases after this (the whole probe stays under 3 min)


def cases(quick: bool):
    """(artifact kind, provider, mode, user settings, via)"""
    modes = list(FAULTS)
    out = []
    for provider in ("openai", "ollama"):
        for mode in modes:
            out.append(("hostile", provider, mode, {"deadline_s": 1.0}, "api"))
            out.append(
                (
                    "hostile",
                    provider,
                    mode,
                    {"deadline_s": 1.5, "timeout": 0.5, "retries": 1, "backoff_s": 0.05, "concurrency": 2},
                    "api",
                )
            )
            out.append(("sane", provider, mode, {}, "api"))
        for mode in QUICK:  # no user timing: the artifact's, bounded (60 s deadline: fast faults only)
            out.append(("hostile", provider, mode, {}, "api"))
    for mode in modes:
        out.append(("hostile", "openai", mode, {"deadline_s": 1}, "cli"))
    if quick:
        out = out[::5]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every fifth case")
    a = ap.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    t0 = time.monotonic()
    tried, held, not_held, skipped = 0, 0, [], 0
    with tempfile.TemporaryDirectory(prefix="probe-llm-") as tmp:
        arts = {}
        for provider in ("openai", "ollama"):
            arts[("hostile", provider)] = make_llm_artifact(Path(tmp) / f"hostile-{provider}", provider, **HOSTILE)
            arts[("sane", provider)] = make_llm_artifact(
                Path(tmp) / f"sane-{provider}",
                provider,
                deadline_s=1.0,
                timeout=0.8,
                retries=2,
                backoff_s=0.1,
                concurrency=2,
            )
        for kind, provider, mode, user, via in cases(a.quick):
            if time.monotonic() - t0 > BUDGET_S:
                skipped += 1
                continue
            res = run_case(
                arts[(kind, provider)],
                mode,
                provider=provider,
                user=user,
                via=via,
                deadline=1.0 if kind == "sane" else None,
                tmp=tmp,
            )
            tried += 1
            if res["held"]:
                held += 1
            else:
                case = f"{kind}/{provider}/{via}/{mode} {json.dumps(user)}"
                not_held.append(f"{case}: {'; '.join(res['failures'])}"[:300])
    out = {"area": "llm", "tried": tried, "held": held, "not_held": not_held}
    if skipped:
        out["skipped_for_time"] = skipped
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out))
    return 0 if held == tried and not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
