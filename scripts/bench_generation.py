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


def sd15_random_pipeline(seed: int = 0):
    """SD 1.5's architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder) with random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from t2iroute.backends.tiny import _clip_vocab_and_merges

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=512,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2)
    vocab, merges = _clip_vocab_and_merges()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=768, intermediate_size=3072,
                                      num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77))
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def fidelity(img, ref) -> tuple[float, float]:
    a = np.asarray(img, dtype=np.float64) / 255.0
    b = np.asarray(ref, dtype=np.float64) / 255.0
    mse = float(((a - b) ** 2).mean())
    psnr = 99.0 if mse == 0 else float(10 * np.log10(1.0 / mse))
    av, bv = a.ravel() - 0.5, b.ravel() - 0.5
    cos = float(av @ bv / (np.linalg.norm(av) * np.linalg.norm(bv) + 1e-12))
    return psnr, cos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="hub id, local folder, or tiny")
    ap.add_argument("--arch", choices=["sd15"], help="random weights in this real architecture")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--budgets", default="10,20,30,50")
    ap.add_argument("--full", type=int, default=50, help="the full budget early stopping cuts")
    ap.add_argument("--thresholds", default="0.002,0.005,0.01,0.02,0.05")
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--out", default="outputs/bench-gen")
    ap.add_argument("--second-copy", action="store_true",
                    help="also load a second copy of the model, to show what sharing saves")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
    if args.arch == "sd15":  # register a random-weight SD 1.5 under a model key of its own
        import torch

        model = "random-sd15"
        pipe = sd15_random_pipeline().to(args.device, getattr(torch, args.dtype))
        pipe.set_progress_bar_config(disable=True)
        db._PIPELINES[(model, args.dtype, args.device, None)] = db._Shared(pipe)

    def backend(name, steps, early=None):
        return build_backend(name, {"model": model, "steps": steps, "scheduler": args.scheduler,
                                    "height": args.size, "width": args.size, "dtype": args.dtype,
                                    "device": args.device, "guidance_scale": 7.5, "early_stop": early})

    budgets = [int(b) for b in args.budgets.split(",")]
    # -- memory: one budget loaded vs N budgets of the same model -------------------------------
    first = backend(f"b{budgets[0]}", budgets[0])
    first.generate(prompts[:1], seeds=[0])
    rss_one = rss_mb()
    others = [backend(f"b{n}", n) for n in budgets[1:]]
    for b in others:
        b.generate(prompts[:1], seeds=[0])
    rss_all = rss_mb()
    memory = {"rss_before_load_mb": rss0, "rss_one_budget_mb": rss_one,
              f"rss_{len(budgets)}_budgets_mb": rss_all, "pipelines_loaded": db.loaded_pipelines(),
              "extra_rss_for_more_budgets_mb": rss_all - rss_one, "gpu_mb": gpu_mem_mb(args.device)}
    if args.second_copy:  # what one more budget would cost WITHOUT sharing: a second copy of the model
        import torch

        key = (model + "#copy", args.dtype, args.device, None)
        pipe2 = (sd15_random_pipeline(1) if args.arch == "sd15" else __import__(
            "t2iroute.backends.tiny", fromlist=["tiny_pipeline"]).tiny_pipeline(1))
        pipe2 = pipe2.to(args.device, getattr(torch, args.dtype))
        pipe2.set_progress_bar_config(disable=True)
        db._PIPELINES[key] = db._Shared(pipe2)
        build_backend("copy", {"model": key[0], "steps": 2, "height": args.size, "width": args.size,
                               "dtype": args.dtype, "device": args.device}).generate(prompts[:1], seeds=[0])
        memory["extra_rss_for_a_second_copy_mb"] = rss_mb() - rss_all
        del db._PIPELINES[key], pipe2

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
        stop[tau] = {"latency_s": dt, "mean_steps": float(np.mean([g.steps_run for g in gens])),
                     "mean_nfe": float(np.mean([g.nfe for g in gens])),
                     "stopped_early_frac": float(np.mean([g.stopped_early for g in gens])),
                     "steps_saved_pct": 100 * (1 - np.mean([g.steps_run for g in gens]) / args.full),
                     "psnr_db": float(np.mean([f[0] for f in fid])), "cos": float(np.mean([f[1] for f in fid]))}
    # fixed budgets at the same mean steps as each stopping rule (the right baseline)
    matched = {}
    for tau, s in stop.items():
        n = max(1, int(round(s["mean_steps"])))
        if n not in fixed:
            b = backend(f"fixed{n}", n)
            gens = b.generate(prompts, seeds=seeds)
            fixed[n] = {"steps_run": n, "nfe": gens[0].nfe, "images": gens}
        fid = [fidelity(g.image, r) for g, r in zip(fixed[n]["images"], ref)]
        matched[tau] = {"steps": n, "psnr_db": float(np.mean([f[0] for f in fid])),
                        "cos": float(np.mean([f[1] for f in fid]))}
    for n, f in fixed.items():
        fid = [fidelity(g.image, r) for g, r in zip(f.pop("images"), ref)]
        f["psnr_db"] = float(np.mean([x[0] for x in fid]))
        f["cos"] = float(np.mean([x[1] for x in fid]))
    result = {"model": args.arch or args.model, "device": args.device, "dtype": args.dtype, "size": args.size,
              "scheduler": args.scheduler, "n_prompts": len(prompts), "full_budget": args.full,
              "memory": memory, "fixed": {str(k): v for k, v in sorted(fixed.items())},
              "early_stop": {str(k): v for k, v in stop.items()},
              "fixed_at_matched_mean_steps": {str(k): v for k, v in matched.items()},
              "peak_rss_mb": peak_rss_mb()}
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
    except Exception as e:  # the figures matter more than the plot
        print(f"plot failed: {e}", file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
