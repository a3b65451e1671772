"""Train the testbed text-to-image models (t2iroute/testbed/models.py) from a seed, on CPU or GPU.

Stages (each reads the previous stage's files in --work):

    data    render N captioned scenes (levels 1-3 uniform) -> work/data.npz
    vae     train the shared f4 AutoencoderKL (L1 + MSE + tiny KL) -> work/vae/
    latents encode every image with the VAE (posterior mean) -> work/latents.npy
    unet    train a UNet2DConditionModel + CLIP text encoder (epsilon MSE, 10% empty captions,
            EMA) for --minutes or --steps; saves the full StableDiffusionPipeline (EMA weights,
            float16) to --out every --save-every seconds and at the end, with train_log.json

    python scripts/train_testbed.py data --work /tmp/tb --n 40000
    python scripts/train_testbed.py vae --work /tmp/tb --minutes 6
    python scripts/train_testbed.py latents --work /tmp/tb
    python scripts/train_testbed.py unet --work /tmp/tb --model big --minutes 60 --out t2iroute/testbed/weights/big

Deterministic from --seed for a given torch build, device and thread count (not bit-exact across
machines). The shipped weights' own train_log.json records the command, seed, steps and minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def _torch(threads: int, device: str):
    from t2iroute._compat import ensure_torchvision

    ensure_torchvision()
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    return torch


def stage_data(a):
    from t2iroute.testbed import scenes as S

    rng = np.random.default_rng(a.seed)
    imgs = np.empty((a.n, 64, 64, 3), np.uint8)
    caps = []
    levels = np.empty(a.n, np.int8)
    for i in range(a.n):
        sc = S.sample_scene(rng)
        imgs[i] = np.asarray(S.render(sc, 64, rng))
        caps.append(sc.caption)
        levels[i] = sc.level
    np.savez(Path(a.work) / "data.npz", images=imgs, captions=np.array(caps), levels=levels)
    print(f"data: {a.n} scenes -> {a.work}/data.npz")


def _images(a, torch):
    d = np.load(Path(a.work) / "data.npz")
    return torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0), d


def stage_vae(a):
    torch = _torch(a.threads, a.device)
    from t2iroute.testbed import models as M

    x, _ = _images(a, torch)
    torch.manual_seed(a.seed)
    vae = M.make_vae().to(a.device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=a.lr or 1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(a.seed)
    t0, step, log = time.time(), 0, []
    while (time.time() - t0) < a.minutes * 60 and (a.steps is None or step < a.steps):
        idx = torch.randint(0, len(x), (a.batch,), generator=g)
        xb = x[idx].to(a.device)
        post = vae.encode(xb).latent_dist
        z = post.sample(generator=None)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = (rec - xb).abs().mean() + (rec - xb).pow(2).mean() + 1e-6 * kl
        opt.zero_grad()
        loss.backward()
        frac = min(1.0, max((time.time() - t0) / (a.minutes * 60), step / a.steps if a.steps else 0.0))
        for pg in opt.param_groups:  # cosine decay to a tenth over the time (or step) budget
            pg["lr"] = (a.lr or 1e-3) * (0.1 + 0.45 * (1 + np.cos(np.pi * frac)))
        opt.step()
        step += 1
        if step % 50 == 0:
            log.append({"step": step, "s": round(time.time() - t0, 1), "loss": loss.item()})
            print(f"vae step {step} {time.time() - t0:.0f}s loss {loss.item():.4f}", flush=True)
    vae.eval()
    with torch.no_grad():
        zs = torch.cat([vae.encode(x[i : i + 256].to(a.device)).latent_dist.mean.cpu() for i in range(0, 4096, 256)])
    vae.register_to_config(scaling_factor=float(1.0 / zs.std()))
    vae.save_pretrained(Path(a.work) / "vae")
    json.dump(
        {"stage": "vae", "seed": a.seed, "steps": step, "seconds": round(time.time() - t0), "log": log},
        open(Path(a.work) / "vae" / "train_log.json", "w"),
        indent=1,
    )
    print(f"vae: {step} steps, scaling_factor {1.0 / float(zs.std()):.4f}")


def stage_latents(a):
    torch = _torch(a.threads, a.device)
    from diffusers import AutoencoderKL

    x, _ = _images(a, torch)
    vae = AutoencoderKL.from_pretrained(Path(a.work) / "vae").to(a.device).eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i : i + 512].to(a.device)).latent_dist.mean.cpu() for i in range(0, len(x), 512)])
    np.save(Path(a.work) / "latents.npy", (z * vae.config.scaling_factor).numpy().astype(np.float32))
    print(f"latents: {tuple(z.shape)}")


def _save_pipeline(a, unet, text_encoder, vae_dir, log, final):
    import torch
    from diffusers import AutoencoderKL
    from t2iroute.testbed import models as M

    out = Path(a.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    u = copy.deepcopy(unet).to("cpu", torch.float16)
    te = copy.deepcopy(text_encoder).to("cpu", torch.float16)
    vae = AutoencoderKL.from_pretrained(vae_dir).to(torch.float16)
    tok = M.make_tokenizer()
    M.assemble(u, vae, te, tok).save_pretrained(tmp)
    json.dump(log | {"final": final}, open(tmp / "train_log.json", "w"), indent=1)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def stage_unet(a):
    torch = _torch(a.threads, a.device)
    from diffusers import DDPMScheduler

    from t2iroute.testbed import models as M

    d = np.load(Path(a.work) / "data.npz")
    lat = torch.from_numpy(np.load(Path(a.work) / "latents.npy"))
    tok = M.make_tokenizer()
    caps = [str(c) for c in d["captions"]]
    ids = tok(caps, padding="max_length", max_length=M.MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=M.MAX_TOKENS, return_tensors="pt").input_ids
    torch.manual_seed(a.seed)
    unet = M.make_unet(a.model).to(a.device).train()
    te = M.make_text_encoder(len(tok)).to(a.device).train()
    if a.init:  # continue from a saved pipeline's (EMA) weights
        from diffusers import StableDiffusionPipeline

        prev = StableDiffusionPipeline.from_pretrained(a.init, torch_dtype=torch.float32)
        missing, unexpected = unet.load_state_dict(prev.unet.state_dict(), strict=False)
        if unexpected:
            raise SystemExit(f"--init {a.init}: weights this UNet does not have: {unexpected[:5]}")
        if missing:  # a module added since (e.g. the pooled text embedding): starts from its init
            print(f"--init: {len(missing)} new tensors start fresh: {sorted({k.split('.')[0] for k in missing})}")
        te.load_state_dict(prev.text_encoder.state_dict())
    ema_u, ema_t = copy.deepcopy(unet).eval(), copy.deepcopy(te).eval()
    params = list(unet.parameters()) + list(te.parameters())
    lr = a.lr or 1e-3
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = DDPMScheduler.from_config(M.SCHEDULER_CONFIG)
    acp = sched.alphas_cumprod.to(a.device)
    g = torch.Generator().manual_seed(a.seed)
    n_params = sum(p.numel() for p in unet.parameters())
    log = {
        "stage": "unet",
        "model": a.model,
        "seed": a.seed,
        "init": a.init,
        "batch": a.batch,
        "lr": lr,
        "device": a.device,
        "threads": a.threads,
        "min_snr": a.min_snr,
        "unet_params": n_params,
        "n_scenes": len(caps),
        "command": " ".join(sys.argv),
        "loss": [],
    }
    if a.init and (Path(a.init) / "train_log.json").is_file():  # the run this one continues
        log["previous"] = json.loads((Path(a.init) / "train_log.json").read_text())
    t0, step, last_save, run = time.time(), 0, time.time(), 0.0
    while (time.time() - t0) < a.minutes * 60 and (a.steps is None or step < a.steps):
        idx = torch.randint(0, len(caps), (a.batch,), generator=g)
        x0 = lat[idx].to(a.device)
        cid = ids[idx].clone()
        drop = torch.rand(a.batch, generator=g) < 0.1
        cid[drop] = empty[0]
        noise = torch.randn(x0.shape, generator=g).to(a.device)
        t = torch.randint(0, 1000, (a.batch,), generator=g).to(a.device)
        ab = acp[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        enc = te(cid.to(a.device))[0]
        err = (unet(xt, t, enc).sample - noise).pow(2).mean(dim=(1, 2, 3))
        if a.min_snr:  # min-SNR-gamma weighting (Hang et al. 2023) for epsilon prediction
            snr = ab.flatten() / (1 - ab.flatten())
            err = err * snr.clamp(max=a.min_snr) / snr
        loss = err.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        frac = min(1.0, max((time.time() - t0) / (a.minutes * 60), step / a.steps if a.steps else 0.0))
        for pg in opt.param_groups:  # 100 warm-up steps, then cosine to a tenth over the budget
            pg["lr"] = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.45 * (1 + np.cos(np.pi * frac)))
        opt.step()
        step += 1
        decay = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(list(ema_u.parameters()) + list(ema_t.parameters()), params):
                e.lerp_(p, 1 - decay)
        run = loss.item() if step == 1 else 0.98 * run + 0.02 * loss.item()
        if step % 50 == 0:
            log["loss"].append([step, round(time.time() - t0, 1), round(run, 5)])
            print(f"{a.model} step {step} {time.time() - t0:.0f}s loss {run:.4f}", flush=True)
        if time.time() - last_save > a.save_every:
            log.update(steps=step, seconds=round(time.time() - t0))
            _save_pipeline(a, ema_u, ema_t, Path(a.work) / "vae", log, final=False)
            last_save = time.time()
    log.update(steps=step, seconds=round(time.time() - t0))
    _save_pipeline(a, ema_u, ema_t, Path(a.work) / "vae", log, final=True)
    print(f"{a.model}: {step} steps in {time.time() - t0:.0f}s -> {a.out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["data", "vae", "latents", "unet"])
    p.add_argument("--work", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=40000)
    p.add_argument("--model", choices=["big", "small"], default="big")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--min-snr", type=float, default=0.0, help="unet: min-SNR-gamma loss weighting (0: plain MSE)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--save-every", type=float, default=600.0)
    p.add_argument("--out", default=None)
    p.add_argument("--init", default=None, help="unet: start from this saved pipeline's weights (continue training)")
    a = p.parse_args(argv)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    needs = {"vae": ["data.npz"], "latents": ["data.npz", "vae"], "unet": ["data.npz", "vae", "latents.npy"]}
    for f in needs.get(a.stage, []):  # each stage reads the earlier stages' output
        if not (Path(a.work) / f).exists():
            earlier = {"data.npz": "data", "vae": "vae", "latents.npy": "latents"}[f]
            p.error(f"{a.stage}: {Path(a.work) / f} is missing: run the '{earlier}' stage with --work {a.work} first")
    if a.init and not (Path(a.init) / "model_index.json").is_file():
        p.error(f"--init {a.init}: not a saved pipeline folder (no model_index.json)")
    if a.stage == "unet" and not a.out:
        p.error("unet needs --out")
    {"data": stage_data, "vae": stage_vae, "latents": stage_latents, "unet": stage_unet}[a.stage](a)


if __name__ == "__main__":
    main()
