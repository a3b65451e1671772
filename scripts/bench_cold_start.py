"""Cold start of routing: how long until a fresh process has routed one prompt.

    .venv/bin/python scripts/bench_cold_start.py --artifact DIR [--runs 3] [--runtime torch|onnx] [--out F.json]

times, in fresh subprocesses (median of --runs, after one untimed warm-up run of each, so that
the ONNX export and the OS file cache are out of the numbers):

    a. python -c 'import numpy'                      the baseline: an interpreter and numpy
    b. python -c 'import torch'
    c. python -c 'import sentence_transformers'      (after t2iroute._compat.ensure_torchvision())
    d. t2iroute route "a red car" artifact=DIR       the venv's entry point, the whole command
    e. python: Router.load(DIR) + route("a red car") timed around the subprocess and inside it
       (the embedding disk cache off: the first route loads and runs the embedding model)

and prints a table (seconds, ratio to a) and writes JSON with the machine (nproc, CPU model).
``--runtime`` sets T2IROUTE_EMBED_RUNTIME for d and e (the embedding featurizer's runtime).

    .venv/bin/python scripts/bench_cold_start.py --artifact DIR --agreement 200

routes the first 200 GenEval prompts twice, in two subprocesses, with T2IROUTE_EMBED_RUNTIME=torch
and =onnx (embedding caches off, so that both runtimes really embed), and reports the fraction of
identical backend decisions.

    .venv/bin/python scripts/bench_cold_start.py --embedding 1000

embeds the first 1000 PartiPrompts in this process with torch and ONNX Runtime, fp32 and int8,
and reports throughput (prompts/s) and the cosine agreement between the runtimes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNTIME_ENV = "T2IROUTE_EMBED_RUNTIME"  # t2iroute.features.embedding.RUNTIME_ENV (not imported: cheap start)

# e: load + first route, timed inside the subprocess too; prints one JSON line
_LOAD_AND_ROUTE = r"""
import json, sys, time
t0 = time.perf_counter()
from t2iroute.router.core import Router
router = Router.load(sys.argv[1])
parts = getattr(router.featurizer, "parts", [router.featurizer])
for p in parts:
    if hasattr(p, "runtime_"):
        p.cache = False  # a cached "a red car" would skip loading the embedding model
t1 = time.perf_counter()
decision = router.route("a red car")
t2 = time.perf_counter()
print(json.dumps({
    "load_s": t1 - t0, "first_route_s": t2 - t1, "inner_s": t2 - t0, "backend": decision.backend,
    "embed_runtime": [p.runtime_ for p in parts if hasattr(p, "runtime_")],
    "torch_imported": "torch" in sys.modules,
    "sentence_transformers_imported": "sentence_transformers" in sys.modules,
}))
"""

# --agreement: route a prompt list, write the decisions to a JSON file
_ROUTE_MANY = r"""
import json, sys
from t2iroute.router.core import Router
router = Router.load(sys.argv[1])
prompts = json.load(open(sys.argv[2]))
parts = getattr(router.featurizer, "parts", [router.featurizer])
for p in parts:
    if hasattr(p, "runtime_"):
        p.cache = False  # embed for real: a cached vector would hide the runtime under test
decisions = router.route(prompts)
json.dump({
    "embed_runtime": [p.runtime_ for p in parts if hasattr(p, "runtime_")],
    "decisions": [{"backend": d.backend, "predicted_quality": d.predicted_quality} for d in decisions],
}, open(sys.argv[3], "w"))
"""


def machine_info() -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    pkgs = {}
    for p in ("t2iroute", "numpy", "torch", "sentence-transformers", "onnxruntime", "tokenizers"):
        try:
            pkgs[p] = version(p)
        except PackageNotFoundError:
            pkgs[p] = None
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": pkgs,
    }


def _env(runtime: str | None) -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if runtime:
        env[RUNTIME_ENV] = runtime
    return env


def _entry_point() -> str:
    """The venv's ``t2iroute`` (beside this interpreter), else the one on PATH."""
    here = Path(sys.executable).parent / "t2iroute"
    found = str(here) if here.exists() else shutil.which("t2iroute")
    if not found:
        sys.exit("bench_cold_start: no t2iroute entry point beside this python nor on PATH (pip install -e .)")
    return found


def time_command(cmd: list[str], env: dict, runs: int, *, parse_json: bool = False) -> dict:
    """One untimed warm-up, then ``runs`` timed fresh subprocesses: wall times and their median."""
    out = {"cmd": cmd, "times_s": [], "inner": []}
    for i in range(runs + 1):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            out["error"] = f"exit {r.returncode}: {r.stderr.strip()[-2000:]}"
            break
        if i == 0:
            continue  # warm-up: ONNX export, OS file cache, .pyc files
        out["times_s"].append(wall)
        if parse_json:
            out["inner"].append(json.loads(r.stdout.strip().splitlines()[-1]))
    if out["times_s"]:
        out["median_s"] = statistics.median(out["times_s"])
    if out["inner"]:
        keys = [k for k, v in out["inner"][0].items() if isinstance(v, float)]
        out["inner_median"] = {k: statistics.median(d[k] for d in out["inner"]) for k in keys}
        out["inner_last"] = out["inner"][-1]
    return out


def cold_start(args) -> dict:
    py = sys.executable
    artifact = str(Path(args.artifact).resolve())
    base, routed = _env(None), _env(args.runtime)
    st_import = "from t2iroute._compat import ensure_torchvision; ensure_torchvision(); import sentence_transformers"
    cases = {
        "a. import numpy": ([py, "-c", "import numpy"], base, False),
        "b. import torch": ([py, "-c", "import torch"], base, False),
        "c. import sentence_transformers": ([py, "-c", st_import], base, False),
        "d. t2iroute route": ([_entry_point(), "route", "a red car", f"artifact={artifact}"], routed, False),
        "e. Router.load + route": ([py, "-c", _LOAD_AND_ROUTE, artifact], routed, True),
    }
    results = {}
    for name, (cmd, env, parse) in cases.items():
        print(f"timing {name} ...", file=sys.stderr, flush=True)
        results[name] = time_command(cmd, env, args.runs, parse_json=parse)
    ref = results["a. import numpy"].get("median_s")
    print(f"\n{'':34s} {'median s':>9s} {'x numpy':>8s}   runs")
    for name, r in results.items():
        if "median_s" not in r:
            print(f"{name:34s} {'failed':>9s}            {r.get('error', '')[:200]}")
            continue
        r["ratio_to_a"] = r["median_s"] / ref if ref else None
        runs = " ".join(f"{t:.2f}" for t in r["times_s"])
        print(f"{name:34s} {r['median_s']:9.3f} {r['ratio_to_a'] or 0:8.1f}   {runs}")
    inner = results["e. Router.load + route"].get("inner_median")
    if inner:
        last = results["e. Router.load + route"]["inner_last"]
        print(
            f"\ne inside the subprocess (median): load {inner['load_s']:.3f} s, first route "
            f"{inner['first_route_s']:.3f} s, both {inner['inner_s']:.3f} s; embedding runtime "
            f"{last['embed_runtime']}, torch imported: {last['torch_imported']}, "
            f"sentence_transformers imported: {last['sentence_transformers_imported']}"
        )
    return {"mode": "cold_start", "artifact": artifact, "runs": args.runs, "runtime": args.runtime, "results": results}


def agreement(args) -> dict:
    from t2iroute.training.prompts import read_prompts

    artifact = str(Path(args.artifact).resolve())
    prompts = read_prompts("geneval").prompt.tolist()[: args.agreement]
    got = {}
    with tempfile.TemporaryDirectory(prefix="t2iroute-agreement-") as tmp:
        pfile = Path(tmp) / "prompts.json"
        pfile.write_text(json.dumps(prompts))
        for rt in ("torch", "onnx"):
            out = Path(tmp) / f"{rt}.json"
            t0 = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-c", _ROUTE_MANY, artifact, str(pfile), str(out)],
                env=_env(rt),
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                sys.exit(f"bench_cold_start: routing with {RUNTIME_ENV}={rt} failed:\n{r.stderr[-3000:]}")
            got[rt] = json.loads(out.read_text())
            got[rt]["wall_s"] = time.perf_counter() - t0
    a, b = got["torch"]["decisions"], got["onnx"]["decisions"]
    same = [x["backend"] == y["backend"] for x, y in zip(a, b)]
    dq = [
        abs(x["predicted_quality"][k] - y["predicted_quality"][k]) for x, y in zip(a, b) for k in x["predicted_quality"]
    ]
    counts = {rt: {} for rt in got}
    for rt in got:
        for d in got[rt]["decisions"]:
            counts[rt][d["backend"]] = counts[rt].get(d["backend"], 0) + 1
    res = {
        "mode": "agreement",
        "artifact": artifact,
        "n_prompts": len(prompts),
        "identical_fraction": sum(same) / len(same) if same else None,
        "embed_runtime": {rt: got[rt]["embed_runtime"] for rt in got},
        "backend_counts": counts,
        "predicted_quality_abs_diff": {"mean": statistics.fmean(dq), "max": max(dq)} if dq else None,
        "disagreements": [
            {"prompt": p, "torch": x["backend"], "onnx": y["backend"]}
            for p, x, y, s in zip(prompts, a, b, same)
            if not s
        ][:20],
        "wall_s": {rt: got[rt]["wall_s"] for rt in got},
    }
    for rt in got:
        if got[rt]["embed_runtime"] and set(got[rt]["embed_runtime"]) != {rt}:
            print(f"warning: asked for {rt}, the embedding ran under {got[rt]['embed_runtime']}", file=sys.stderr)
    print(
        f"{len(prompts)} GenEval prompts: {sum(same)} identical decisions "
        f"({100 * res['identical_fraction']:.1f}%) between torch and onnx embeddings"
    )
    print(f"backend counts: torch {counts['torch']}, onnx {counts['onnx']}")
    if dq:
        print(f"|predicted quality difference|: mean {statistics.fmean(dq):.4g}, max {max(dq):.4g}")
    return res


def embedding(args) -> dict:
    """Throughput and agreement of the two runtimes on the first N PartiPrompts, in this process."""
    import numpy as np

    from t2iroute.features.embedding import SentenceEmbeddingFeaturizer
    from t2iroute.training.prompts import read_prompts

    prompts = read_prompts("partiprompts").prompt.tolist()[: args.embedding]
    vecs, speed = {}, {}
    for rt in ("torch", "onnx"):
        for q in ("int8", None):
            name = f"{rt} {q or 'fp32'}"
            f = SentenceEmbeddingFeaturizer(quantize=q, runtime=rt, cache=False)
            f.warmup()  # load (and export) first: steady-state throughput
            if f.runtime_ != rt:
                sys.exit(f"bench_cold_start: {rt} was asked for, the featurizer fell back to {f.runtime_}")
            t0 = time.perf_counter()
            vecs[name] = f.transform(prompts)
            speed[name] = len(prompts) / (time.perf_counter() - t0)
            print(f"{name:11s} {speed[name]:7.1f} prompts/s", flush=True)

    def cos(a, b):
        c = (vecs[a] * vecs[b]).sum(1) / (np.linalg.norm(vecs[a], axis=1) * np.linalg.norm(vecs[b], axis=1))
        return {"mean": float(c.mean()), "min": float(c.min()), "p05": float(np.quantile(c, 0.05))}

    pairs = [
        ("onnx fp32", "torch fp32"),
        ("onnx int8", "torch int8"),
        ("onnx int8", "torch fp32"),
        ("torch int8", "torch fp32"),
        ("onnx fp32", "torch int8"),
    ]
    cosines = {f"{a} vs {b}": cos(a, b) for a, b in pairs}
    for k, c in cosines.items():
        print(f"cosine {k:25s} mean {c['mean']:.5f}  p05 {c['p05']:.5f}  min {c['min']:.5f}")
    return {"mode": "embedding", "n_prompts": len(prompts), "prompts_per_s": speed, "cosine": cosines}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", help="a router artifact folder (t2iroute train ... -> OUT/router)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per command (median); default 3")
    ap.add_argument("--runtime", choices=("torch", "onnx"), help=f"set {RUNTIME_ENV} for d and e")
    ap.add_argument(
        "--agreement",
        type=int,
        metavar="PROMPTS_N",
        help="route the first N GenEval prompts under torch and onnx; fraction of equal decisions",
    )
    ap.add_argument(
        "--embedding",
        type=int,
        metavar="N",
        help="embedding throughput and cosine agreement on the first N PartiPrompts (no artifact)",
    )
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args(argv)
    machine = machine_info()  # the load average before the runs
    if args.embedding:
        res = embedding(args)
    elif not args.artifact:
        ap.error("--artifact is required (except with --embedding)")
    elif not (Path(args.artifact) / "manifest.json").is_file():
        ap.error(f"--artifact {args.artifact}: no manifest.json there (not a router artifact)")
    elif args.agreement:
        res = agreement(args)
    else:
        res = cold_start(args)
    machine["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    res["machine"] = machine
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
