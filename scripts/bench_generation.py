"""Generation benchmark: latency, per-step time, NFE, early stopping vs fixed budgets, memory.

    python scripts/bench_generation.py --out outputs/bench-gen                 # tiny models, CPU
    python scripts/bench_generation.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --device cuda --dtype float16 --size 512 --out outputs/bench-gen-sd15  # real weights, GPU
    python scripts/bench_generation.py --arch sd15 --device cuda --size 512    # SD 1.5's real
        architecture with random weights (no download)

Prints and writes OUT/generation.json and OUT/stopping.png. Early stopping is judged against
fixed budgets at the same mean number of steps, by fidelity to the full-budget image of the same
seed (PSNR in dB and pixel cosine): with random weights no image-text score means anything,
while "how close does a cheaper run get to the full run" does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_mem_mb(device: str):
    if not device.startswith("cuda"):
        return None
    import torch

    return {"allocated": torch.cuda.memory_allocated() / 2**20, "peak": torch.cuda.max_memory_allocated() / 2**20}


def random_pipeline(arch: str, seed: int = 0):
    """A real architecture (sd15: UNet 860M + CLIP ViT-L; sdxl: UNet 2.6B + two text encoders)
    with random weights: :func:`t2iroute.testing.pipelines.build_pipeline` at full size."""
    from t2iroute.testing.pipelines import build_pipeline

    return build_pipeline(arch, size="full", seed=seed, safety_checker=False)


def fidelity(img, ref) -> tuple[float, float]:
    a = np.asarray(img, dtype=np.float64) / 255.0
    b = np.asarray(ref, dtype=np.float64) / 255.0
    mse = float(((a - b) ** 2).mean())
    psnr = 99.0 if mse == 0 else float(10 * np.log10(1.0 / mse))
    av, bv = a.ravel() - 0.5, b.ravel() - 0.5
    cos = float(av @ bv / (np.linalg.norm(av) * np.linalg.norm(bv) + 1e-12))
    return psnr, cos


def machine() -> dict:
    import platform

    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def shipped_spec(name: str) -> dict:
    import yaml

    from t2iroute.paths import CONF_DIR

    path = Path(CONF_DIR) / "backends" / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(f"--backends: no shipped config {path}")
    return yaml.safe_load(path.read_text())


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def throughput_suite(args) -> dict:
    """Images per second at each batch size vs one image per call, same backend, same run.

    ``--artifact DIR`` also measures ``Router.generate(list)`` (routed, grouped, batched) vs one
    ``Router.generate(prompt)`` per prompt, with each backend at the largest batch size."""
    from t2iroute._compat import ensure_torchvision

    ensure_torchvision()
    from t2iroute.backends import build_backend
    from t2iroute.training.prompts import read_prompts

    prompts = read_prompts("partiprompts").prompt.tolist()[: args.n_images]
    seeds = list(range(len(prompts)))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    result = {"suite": "throughput", "machine": machine(), "n_images": len(prompts), "backends": {}}
    for name in args.backends.split(","):
        spec = shipped_spec(name)
        spec["device"] = args.device  # the shipped hub configs say cuda
        one = build_backend(name, {**spec, "batch_size": 1})
        one.generate(prompts[:1], seeds=[0])  # load and warm
        dt = _timed(lambda: [one.generate([p], seeds=[s]) for p, s in zip(prompts, seeds)], spec["device"])
        row = {"one_at_a_time_img_s": len(prompts) / dt, "batch": {}}
        for b in sizes:
            be = build_backend(f"{name}_b{b}", {**spec, "batch_size": b})
            be.generate(prompts[:b], seeds=seeds[:b])  # warm this batch shape
            out = []
            dt = _timed(lambda: out.extend(be.generate(prompts, seeds=seeds)), spec["device"])
            row["batch"][str(b)] = {
                "img_s": len(prompts) / dt,
                "speedup_vs_one_at_a_time": (len(prompts) / dt) / row["one_at_a_time_img_s"],
                "mean_nfe": float(np.mean([g.nfe for g in out])),
            }
        result["backends"][name] = row
        print(
            f"{name:18s} one at a time {row['one_at_a_time_img_s']:6.2f} img/s | "
            + " | ".join(
                f"batch {b}: {v['img_s']:6.2f} img/s (x{v['speedup_vs_one_at_a_time']:.2f})"
                for b, v in row["batch"].items()
            ),
            file=sys.stderr,
        )
    if args.artifact:
        from t2iroute import Router

        router = Router.load(args.artifact)
        for be in router.backends.values():
            if hasattr(be, "batch_size"):
                be.batch_size = max(sizes)
        router.generate(prompts[:2], seed=0)  # load every backend the first prompts route to
        dt_one = _timed(lambda: [router.generate(p, seed=0) for p in prompts], args.device)
        res = []
        dt_list = _timed(lambda: res.extend(router.generate(prompts, seed=0)), args.device)
        from collections import Counter

        result["router"] = {
            "artifact": str(args.artifact),
            "batch_size": max(sizes),
            "one_at_a_time_img_s": len(prompts) / dt_one,
            "list_img_s": len(prompts) / dt_list,
            "speedup": dt_one / dt_list,
            "by_backend": dict(Counter(r.backend for r in res)),
        }
        print(
            f"router: one at a time {len(prompts) / dt_one:.2f} img/s, a list {len(prompts) / dt_list:.2f} img/s "
            f"(x{dt_one / dt_list:.2f}) {result['router']['by_backend']}",
            file=sys.stderr,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


GPU_ARCHS = {  # arch: (px, guidance, fixed budgets timed, batch-test steps)
    "sd15": (512, 7.5, (10, 30), 20),
    "sdxl": (1024, 5.0, (10, 30), 20),
}


def gpu_suite(args) -> dict:
    """The prepared GPU figures (one command, about 8 minutes on an H100/H200):

        python scripts/bench_generation.py --suite gpu --device cuda --out docs/measurements

    For SD 1.5 (512 px) and SDXL (1024 px), the real architectures with random weights in fp16:
    ms per step; early stopping's overhead per step (x0 capture + convergence check, latent and
    pixel signals, run with a threshold that never fires) as a share of a step; memory of N
    budgets sharing one pipeline vs N copies; batch throughput at --batch-sizes vs one at a time;
    routing one prompt as a share of the cheapest image. Writes OUT/gen-<gpu>.json. On a CPU
    (``--device cpu``) it is a dry run at tiny sizes that checks the script, into OUT/gen-cpu-dry.json.
    """
    from t2iroute._compat import ensure_torchvision

    ensure_torchvision()
    import torch

    from t2iroute.backends import build_backend
    from t2iroute.backends import diffusers_backend as db
    from t2iroute.testing.pipelines import build_pipeline
    from t2iroute.training.prompts import read_prompts

    dev = args.device
    cuda = dev.startswith("cuda")
    dry = not cuda
    dtype = "float16" if cuda else "float32"
    prompts = read_prompts("partiprompts").prompt.tolist()[:64]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    n_batch = max(sizes)
    mem = (lambda: torch.cuda.memory_allocated() / 2**20) if cuda else (lambda: rss_mb())
    result = {"suite": "gpu", "dry_run": dry, "machine": machine(), "dtype": dtype, "archs": {}}
    t_start = time.perf_counter()
    for arch, (px, guidance, budgets, batch_steps) in GPU_ARCHS.items():
        if dry:
            px = 64 if arch == "sd15" else 128
        r: dict = {"px": px}
        m0 = mem()
        with torch.device(dev):  # random init on the device: seconds, not minutes, for 3.5B parameters
            pipe = build_pipeline(arch, size="tiny" if dry else "full", safety_checker=False)
        pipe = pipe.to(dev, getattr(torch, dtype))
        r["params_m"] = {
            k: sum(p.numel() for p in getattr(pipe, k).parameters()) / 1e6
            for k in ("unet", "vae", "text_encoder", "text_encoder_2")
            if getattr(pipe, k, None) is not None
        }
        r["mem_one_copy_mb"] = mem() - m0
        model = f"random-{arch}"
        db.register_pipeline(model, pipe, dtype=dtype, device=dev)

        def backend(name, steps, batch_size=1, early=None):
            return build_backend(
                name,
                {
                    "model": model,
                    "steps": steps,
                    "height": px,
                    "width": px,
                    "dtype": dtype,
                    "device": dev,
                    "guidance_scale": guidance,
                    "batch_size": batch_size,
                    "early_stop": early,
                },
            )

        def per_image(b, n=3):
            b.generate(prompts[:1], seeds=[0])  # warm
            return _timed(lambda: [b.generate([p], seeds=[i]) for i, p in enumerate(prompts[:n])], dev) / n

        lo, hi = budgets
        t_lo, t_hi = per_image(backend(f"f{lo}", lo)), per_image(backend(f"f{hi}", hi))
        step = (t_hi - t_lo) / (hi - lo)
        r["ms_per_step"] = 1000 * step
        r["ms_fixed_per_image"] = 1000 * (t_lo - lo * step)  # text encoding + VAE decode
        r[f"s_per_image_{lo}"], r[f"s_per_image_{hi}"] = t_lo, t_hi
        never = {"threshold": 0.0, "window": 1, "patience": 1, "min_fraction": 0.0}  # checks, never fires
        for sig in ("latent", "pixel"):
            t_es = per_image(backend(f"es_{sig}", hi, early={**never, "signal": sig}))
            over = (t_es - t_hi) / hi
            r[f"early_stop_overhead_{sig}"] = {
                "ms_per_step": 1000 * over,
                "share_of_step": over / step if step > 0 else None,
            }
        # memory: N budgets of one model share the pipeline; N copies would cost N times the weights
        n_budgets = 5
        before = mem()
        for k in range(n_budgets):
            backend(f"share{k}", 2 + k).generate(prompts[:1], seeds=[0])
        if cuda:
            torch.cuda.synchronize()
        r["memory"] = {
            "n_budgets": n_budgets,
            "one_copy_mb": r["mem_one_copy_mb"],
            "n_budgets_shared_extra_mb": mem() - before,
            "pipelines_loaded_for_model": sum(1 for k in db._PIPELINES if k[0] == model),
            "n_copies_mb": n_budgets * r["mem_one_copy_mb"],
        }
        m1 = mem()
        with torch.device(dev):
            copy = build_pipeline(arch, size="tiny" if dry else "full", seed=1, safety_checker=False)
        copy = copy.to(dev, getattr(torch, dtype))
        r["memory"]["second_copy_measured_mb"] = mem() - m1
        del copy
        if cuda:
            torch.cuda.empty_cache()
        # batch throughput
        one = backend("bt1", batch_steps)
        one.generate(prompts[:1], seeds=[0])
        dt1 = _timed(lambda: [one.generate([p], seeds=[i]) for i, p in enumerate(prompts[:n_batch])], dev)
        r["throughput"] = {"steps": batch_steps, "n_images": n_batch, "one_at_a_time_img_s": n_batch / dt1}
        for b in sizes:
            be = backend(f"bt_b{b}", batch_steps, batch_size=b)
            be.generate(prompts[:b], seeds=list(range(b)))
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            dt = _timed(lambda: be.generate(prompts[:n_batch], seeds=list(range(n_batch))), dev)
            r["throughput"][f"batch_{b}"] = {
                "img_s": n_batch / dt,
                "speedup": dt1 / dt,
                "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            }
        # routing one prompt (lexical features + ridge over a bundled table, on the CPU) vs the cheapest image
        if arch == "sd15":
            r["routing"] = routing_share(prompts, t_lo, f"{arch} at {lo} steps")
        db.unload_pipeline(model)
        del pipe
        if cuda:
            torch.cuda.empty_cache()
        result["archs"][arch] = r
        _write_gpu_result(result, args.out, time.perf_counter() - t_start)  # partial results survive a timeout
        print(
            f"{arch}: {r['ms_per_step']:.1f} ms/step, ES overhead latent "
            f"{r['early_stop_overhead_latent']['ms_per_step']:.2f} ms/step, pixel "
            f"{r['early_stop_overhead_pixel']['ms_per_step']:.2f}; throughput {r['throughput']}",
            file=sys.stderr,
        )
    path = _write_gpu_result(result, args.out, time.perf_counter() - t_start)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return result


def _write_gpu_result(result: dict, out: str, wall_s: float) -> Path:
    result["wall_s"] = wall_s
    gpu = result["machine"].get("gpu", "cpu-dry").lower().replace("nvidia", "").strip().replace(" ", "-")
    Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out) / f"gen-{gpu}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def routing_share(prompts, cheapest_s: float, cheapest: str) -> dict:
    from t2iroute import Router
    from t2iroute.features import build_featurizer
    from t2iroute.predictors import RidgePredictor
    from t2iroute.training.table import pivot, read_table
    from t2iroute.paths import bundled

    import yaml

    from t2iroute.paths import CONF_DIR

    costs = yaml.safe_load((Path(CONF_DIR) / "data" / "agiqa3k.yaml").read_text())["costs"]
    M = pivot(read_table(bundled("quality/agiqa3k.csv.gz")), "mos_align", costs=costs)
    f = build_featurizer({"lexical": {}})
    router = Router(
        f,
        RidgePredictor().fit(f.transform(list(M.prompts)), M.scores),
        M.backends,
        M.costs,
        lam=0.1,
        metric="mos_align",
    )
    router.route(prompts[0])
    times = []
    for p in prompts[:50]:
        t0 = time.perf_counter()
        router.route(p)
        times.append(time.perf_counter() - t0)
    p50 = float(np.median(times))
    return {
        "features": "lexical",
        "route_p50_ms": 1000 * p50,
        "cheapest_image_s": cheapest_s,
        "cheapest": cheapest,
        "share_of_cheapest_image": p50 / cheapest_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="hub id, local folder, or tiny")
    ap.add_argument("--arch", choices=["sd15", "sdxl"], help="random weights in this real architecture")
    ap.add_argument(
        "--suite",
        choices=["throughput", "gpu"],
        help="throughput: batch 1/4/8 vs one at a time on --backends; gpu: the prepared GPU "
        "figures (SD 1.5 512 px + SDXL 1024 px, fp16) into OUT/gen-<gpu>.json",
    )
    ap.add_argument(
        "--backends",
        default="tiny_20,testbed_small_8,testbed_big_8",
        help="--suite throughput: shipped backend configs to measure",
    )
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--n-images", type=int, default=16, help="--suite throughput: images per measurement")
    ap.add_argument("--artifact", help="--suite throughput: also a router artifact's generate(list) vs one by one")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--budgets", default="10,20,30,50")
    ap.add_argument("--full", type=int, default=50, help="the full budget early stopping cuts")
    ap.add_argument("--thresholds", default="0.002,0.005,0.01,0.02,0.05")
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--out", default="outputs/bench-gen")
    ap.add_argument(
        "--second-copy", action="store_true", help="also load a second copy of the model, to show what sharing saves"
    )
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.suite == "throughput":
        return throughput_suite(args)
    if args.suite == "gpu":
        return gpu_suite(args)

    from t2iroute._compat import ensure_torchvision

    ensure_torchvision()
    from t2iroute.backends import build_backend
    from t2iroute.backends import diffusers_backend as db
    from t2iroute.training.prompts import read_prompts

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts("partiprompts").prompt.tolist()[: args.n_prompts]
    seeds = list(range(len(prompts)))
    model = args.model
    rss0 = rss_mb()
    if args.arch:  # register a random-weight pipeline of the real architecture under a key of its own
        import torch

        model = f"random-{args.arch}"
        pipe = random_pipeline(args.arch).to(args.device, getattr(torch, args.dtype))
        db.register_pipeline(model, pipe, dtype=args.dtype, device=args.device)

    def backend(name, steps, early=None):
        return build_backend(
            name,
            {
                "model": model,
                "steps": steps,
                "scheduler": args.scheduler,
                "height": args.size,
                "width": args.size,
                "dtype": args.dtype,
                "device": args.device,
                "guidance_scale": 7.5,
                "early_stop": early,
            },
        )

    budgets = [int(b) for b in args.budgets.split(",")]
    # -- memory: one budget loaded vs N budgets of the same model -------------------------------
    first = backend(f"b{budgets[0]}", budgets[0])
    first.generate(prompts[:1], seeds=[0])
    rss_one = rss_mb()
    others = [backend(f"b{n}", n) for n in budgets[1:]]
    for b in others:
        b.generate(prompts[:1], seeds=[0])
    rss_all = rss_mb()
    memory = {
        "rss_before_load_mb": rss0,
        "rss_one_budget_mb": rss_one,
        f"rss_{len(budgets)}_budgets_mb": rss_all,
        "pipelines_loaded": db.loaded_pipelines(),
        "extra_rss_for_more_budgets_mb": rss_all - rss_one,
        "gpu_mb": gpu_mem_mb(args.device),
    }
    if args.second_copy:  # what one more budget would cost WITHOUT sharing: a second copy of the model
        import torch

        pipe2 = (
            random_pipeline(args.arch, 1)
            if args.arch
            else __import__("t2iroute.backends.tiny", fromlist=["tiny_pipeline"]).tiny_pipeline(1)
        )
        pipe2 = pipe2.to(args.device, getattr(torch, args.dtype))
        db.register_pipeline(model + "#copy", pipe2, dtype=args.dtype, device=args.device)
        build_backend(
            "copy",
            {
                "model": model + "#copy",
                "steps": 2,
                "height": args.size,
                "width": args.size,
                "dtype": args.dtype,
                "device": args.device,
            },
        ).generate(prompts[:1], seeds=[0])
        memory["extra_rss_for_a_second_copy_mb"] = rss_mb() - rss_all
        db.unload_pipeline(model + "#copy")
        del pipe2

    # -- latency, per-step time, NFE of fixed budgets ----------------------------------------------
    fixed, ref = {}, None
    for n in sorted(set(budgets + [args.full])):
        b = backend(f"fixed{n}", n)
        b.generate(prompts[:1], seeds=[0])  # warm
        t0 = time.perf_counter()
        gens = b.generate(prompts, seeds=seeds)
        dt = (time.perf_counter() - t0) / len(prompts)
        fixed[n] = {"latency_s": dt, "per_step_s": dt / n, "nfe": gens[0].nfe, "steps_run": n, "images": gens}
        if n == args.full:
            ref = [g.image for g in gens]
    # -- early stopping ------------------------------------------------------------------------------
    stop = {}
    for tau in [float(t) for t in args.thresholds.split(",")]:
        b = backend(f"es{tau}", args.full, {"threshold": tau, "window": 2, "patience": 2, "min_fraction": 0.2})
        t0 = time.perf_counter()
        gens = b.generate(prompts, seeds=seeds)
        dt = (time.perf_counter() - t0) / len(prompts)
        fid = [fidelity(g.image, r) for g, r in zip(gens, ref)]
        stop[tau] = {
            "latency_s": dt,
            "mean_steps": float(np.mean([g.steps_run for g in gens])),
            "mean_nfe": float(np.mean([g.nfe for g in gens])),
            "stopped_early_frac": float(np.mean([g.stopped_early for g in gens])),
            "steps_saved_pct": 100 * (1 - np.mean([g.steps_run for g in gens]) / args.full),
            "psnr_db": float(np.mean([f[0] for f in fid])),
            "cos": float(np.mean([f[1] for f in fid])),
        }
    # fixed budgets at the same mean steps as each stopping rule (the right baseline)
    matched = {}
    for tau, s in stop.items():
        n = max(1, int(round(s["mean_steps"])))
        if n not in fixed:
            b = backend(f"fixed{n}", n)
            gens = b.generate(prompts, seeds=seeds)
            fixed[n] = {"steps_run": n, "nfe": gens[0].nfe, "images": gens}
        fid = [fidelity(g.image, r) for g, r in zip(fixed[n]["images"], ref)]
        matched[tau] = {
            "steps": n,
            "psnr_db": float(np.mean([f[0] for f in fid])),
            "cos": float(np.mean([f[1] for f in fid])),
        }
    for n, f in fixed.items():
        fid = [fidelity(g.image, r) for g, r in zip(f.pop("images"), ref)]
        f["psnr_db"] = float(np.mean([x[0] for x in fid]))
        f["cos"] = float(np.mean([x[1] for x in fid]))
    result = {
        "model": args.arch or args.model,
        "device": args.device,
        "dtype": args.dtype,
        "size": args.size,
        "scheduler": args.scheduler,
        "n_prompts": len(prompts),
        "full_budget": args.full,
        "memory": memory,
        "fixed": {str(k): v for k, v in sorted(fixed.items())},
        "early_stop": {str(k): v for k, v in stop.items()},
        "fixed_at_matched_mean_steps": {str(k): v for k, v in matched.items()},
        "peak_rss_mb": peak_rss_mb(),
    }
    (out / "generation.json").write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        fx = sorted((int(k), v["psnr_db"]) for k, v in result["fixed"].items() if int(k) < args.full)
        ax.plot([x for x, _ in fx], [y for _, y in fx], "o-", label="fixed budget")
        es = sorted((v["mean_steps"], v["psnr_db"], k) for k, v in result["early_stop"].items())
        ax.plot([x for x, _, _ in es], [y for _, y, _ in es], "s--", label="early stop (tau)")
        for x, y, k in es:
            ax.annotate(f"{float(k):g}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("mean steps run")
        ax.set_ylabel(f"PSNR to the {args.full}-step image (dB)")
        ax.set_title(f"{result['model']} {args.size}px {args.scheduler}: stopping vs fixed budgets", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "stopping.png")
    except Exception as e:  # noqa: BLE001 - the figures matter more than the plot
        print(f"plot failed: {e}", file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
