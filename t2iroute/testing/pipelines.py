"""Random-weight pipelines of the real SD-family classes, saved in the hub repos' folder layout.

No hub is reachable here, so the shipped backend configs (``conf/backends/``) are proven on
pipelines that have the real pipeline class, the real component classes and the real
scheduler configs of the repos they name, with random weights, in the manner of diffusers'
``get_dummy_components()``:

=============  =============================================  ======================================
family         hub repo it stands for                         what is particular
=============  =============================================  ======================================
``sd15``       stable-diffusion-v1-5/stable-diffusion-v1-5    PNDM scheduler, safety checker folder
``sd21``       stabilityai/sd-turbo (SD 2.1 architecture)     OpenCLIP-style text encoder (gelu),
                                                              linear projections, Euler trailing
``sdxl``       stabilityai/stable-diffusion-xl-base-1.0       two text encoders, ``text_time``
                                                              added conditioning, Euler leading
``sdxl_turbo`` stabilityai/sdxl-turbo                         as sdxl, Euler ancestral trailing
``bk_sdm``     nota-ai/bk-sdm-small                           one ResNet per down block, no mid block
=============  =============================================  ======================================

``size="tiny"`` builds components of a few hundred thousand parameters (an image in well
under a second on a CPU); ``size="full"`` builds the real dimensions (SD 1.5's 860M UNet,
SDXL's 2.6B), for GPU benchmarks. :func:`save_snapshot` writes a folder laid out like a hub
snapshot (``model_index.json``, one folder per component, optional ``fp16`` variant files,
safetensors or ``.bin`` only); :func:`save_lcm_lora` writes a LoRA adapter file the way
``latent-consistency/lcm-lora-sdv1-5`` ships one (``pytorch_lora_weights.safetensors``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FAMILIES = ("sd15", "sd21", "sdxl", "sdxl_turbo", "bk_sdm")

# the scheduler_config.json each repo ships (the keys that differ from the class defaults)
_SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
SCHEDULER_CONFIGS: dict[str, tuple[str, dict]] = {
    "sd15": ("PNDMScheduler", dict(_SD_BETAS, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)),
    "bk_sdm": ("PNDMScheduler", dict(_SD_BETAS, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)),
    "sd21": (
        "EulerDiscreteScheduler",
        dict(
            _SD_BETAS,
            prediction_type="epsilon",
            steps_offset=1,
            timestep_spacing="trailing",
            interpolation_type="linear",
        ),
    ),
    "sdxl": (
        "EulerDiscreteScheduler",
        dict(
            _SD_BETAS,
            prediction_type="epsilon",
            steps_offset=1,
            timestep_spacing="leading",
            interpolation_type="linear",
        ),
    ),
    "sdxl_turbo": (
        "EulerAncestralDiscreteScheduler",
        dict(_SD_BETAS, prediction_type="epsilon", steps_offset=1, timestep_spacing="trailing"),
    ),
}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown pipeline family {family!r}; known: {list(FAMILIES)}")


def _scheduler(family: str):
    import diffusers

    cls, cfg = SCHEDULER_CONFIGS[family]
    return getattr(diffusers, cls)(**cfg)


def _tokenizer(pad: str | None = None):
    from transformers import CLIPTokenizer

    from t2iroute.backends.tiny import _clip_vocab_and_merges

    vocab, merges = _clip_vocab_and_merges()  # CLIP's real BPE vocabulary (49,408 tokens)
    kw = {"pad_token": pad} if pad else {}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, **kw), vocab


def _text_encoder(
    vocab: dict,
    *,
    hidden: int,
    layers: int,
    heads: int,
    inter: int,
    act: str,
    projection_dim: int | None = None,
    with_projection: bool = False,
):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection_dim or hidden,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg).eval()


def _vae(full: bool, *, scaling_factor: float = 0.18215, force_upcast: bool = True):
    from diffusers import AutoencoderKL

    if full:
        ch, groups, lpb, sample = (128, 256, 512, 512), 32, 2, 512
    else:  # four blocks like the real VAE: the same 8x latent downsampling, few channels
        ch, groups, lpb, sample = (8, 8, 16, 16), 4, 1, 64
    return AutoencoderKL(
        block_out_channels=ch,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=lpb,
        norm_num_groups=groups,
        sample_size=sample,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    ).eval()


def _sd_unet(family: str, full: bool, cross_dim: int):
    from diffusers import UNet2DConditionModel

    kw: dict[str, Any] = {}
    if family == "sd21":
        kw.update(use_linear_projection=True)
    if family == "bk_sdm":  # BK-SDM-Small: SD 1.4's UNet, one ResNet per down block, no mid block
        kw.update(layers_per_block=1, mid_block_type=None)
    if full:
        heads = (5, 10, 20, 20) if family == "sd21" else 8
        return UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=cross_dim,
            attention_head_dim=heads,
            block_out_channels=(320, 640, 1280, 1280),
            **{"layers_per_block": 2, **kw},
        ).eval()
    # three blocks, cross-attention on the last (16x16 tokens at 512 px): a step in tens of ms on a CPU
    return UNet2DConditionModel(
        block_out_channels=(16, 32, 64),
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_dim,
        norm_num_groups=8,
        attention_head_dim=(2, 2, 4) if family == "sd21" else 4,
        **{"layers_per_block": 1, **kw},
    ).eval()


def _safety_checker(full: bool):
    """SD 1.5's repo ships a CLIP-vision safety checker (1.2 GB in real life); a tiny one here."""
    from transformers import CLIPConfig, CLIPImageProcessor

    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    cfg = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1},
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    return StableDiffusionSafetyChecker(cfg).eval(), CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})


def build_pipeline(family: str, *, size: str = "tiny", seed: int = 0, safety_checker: bool | None = None):
    """A random-weight pipeline of ``family`` (see the module table) of the real classes.

    ``safety_checker``: include SD 1.5's safety checker and feature extractor as its repo does
    (default: for ``sd15`` at tiny size only).
    """
    _check_family(family)
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    from t2iroute._compat import ensure_torchvision

    ensure_torchvision()
    import torch

    full = size == "full"
    torch.manual_seed(seed)
    if family in ("sdxl", "sdxl_turbo"):
        from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

        tok, vocab = _tokenizer()
        tok2, _ = _tokenizer(pad="!")  # SDXL's second tokenizer pads with "!" (id 0)
        if full:  # CLIP ViT-L/14 + OpenCLIP ViT-bigG/14, UNet 2.6B
            te = _text_encoder(vocab, hidden=768, layers=12, heads=12, inter=3072, act="quick_gelu")
            te2 = _text_encoder(
                vocab,
                hidden=1280,
                layers=32,
                heads=20,
                inter=5120,
                act="gelu",
                projection_dim=1280,
                with_projection=True,
            )
            unet = UNet2DConditionModel(
                sample_size=128,
                block_out_channels=(320, 640, 1280),
                layers_per_block=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20),
                use_linear_projection=True,
                cross_attention_dim=2048,
                addition_embed_type="text_time",
                addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
            ).eval()
        else:
            te = _text_encoder(vocab, hidden=32, layers=2, heads=4, inter=37, act="quick_gelu")
            te2 = _text_encoder(
                vocab, hidden=32, layers=2, heads=4, inter=37, act="gelu", projection_dim=32, with_projection=True
            )
            # three blocks, attention on the last only: at SDXL's 1024 px (128x128 latents) the
            # attention runs on 32x32 tokens, so a test image takes seconds, not minutes
            unet = UNet2DConditionModel(
                sample_size=8,
                block_out_channels=(16, 32, 64),
                layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 1, 2),
                attention_head_dim=(2, 2, 4),
                use_linear_projection=True,
                cross_attention_dim=64,  # 32 + 32
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=80,
                norm_num_groups=8,
            ).eval()  # 6 * 8 + 32
        return StableDiffusionXLPipeline(
            vae=_vae(full, scaling_factor=0.13025),
            text_encoder=te,
            text_encoder_2=te2,
            tokenizer=tok,
            tokenizer_2=tok2,
            unet=unet,
            scheduler=_scheduler(family),
            image_encoder=None,
            feature_extractor=None,
            force_zeros_for_empty_prompt=True,
        )
    from diffusers import StableDiffusionPipeline

    tok, vocab = _tokenizer()
    if family == "sd21":
        dims = (
            dict(hidden=1024, layers=23, heads=16, inter=4096) if full else dict(hidden=32, layers=2, heads=4, inter=37)
        )
        te = _text_encoder(vocab, act="gelu", **dims)
    else:
        dims = (
            dict(hidden=768, layers=12, heads=12, inter=3072) if full else dict(hidden=32, layers=2, heads=4, inter=37)
        )
        te = _text_encoder(vocab, act="quick_gelu", **dims)
    unet = _sd_unet(family, full, dims["hidden"])
    with_checker = (family == "sd15" and not full) if safety_checker is None else bool(safety_checker)
    checker, extractor = _safety_checker(full) if with_checker else (None, None)
    return StableDiffusionPipeline(
        vae=_vae(full),
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=_scheduler(family),
        safety_checker=checker,
        feature_extractor=extractor,
        image_encoder=None,
        requires_safety_checker=with_checker,
    )


def save_snapshot(
    pipe_or_family,
    path,
    *,
    variant: str | None = "fp16",
    default_weights: bool = True,
    bin_only: bool = False,
    seed: int = 0,
) -> Path:
    """Save a pipeline (or a fresh tiny one of a family) laid out like a hub snapshot.

    ``variant="fp16"``: also write ``*.fp16.safetensors`` weight files in float16, as the repos
    that configs load with ``variant: fp16`` do; ``default_weights=False`` leaves out the
    full-precision files (a variant-only snapshot); ``bin_only``: pickled ``.bin`` weights
    instead of safetensors (old repos).
    """
    import torch

    pipe = build_pipeline(pipe_or_family, seed=seed) if isinstance(pipe_or_family, str) else pipe_or_family
    path = Path(path)
    if default_weights:
        pipe.save_pretrained(path)
    if variant:
        half = pipe.to(torch.float16) if variant == "fp16" else pipe
        half.save_pretrained(path, variant=variant)
        pipe.to(torch.float32)
    if bin_only:
        to_bin(path)
    return path


def to_bin(path) -> list[Path]:
    """Replace every component's ``*.safetensors`` weights with the pickled ``.bin`` files old
    repos ship (``diffusion_pytorch_model.bin``, ``pytorch_model.bin``); returns the files written."""
    import torch
    from safetensors.torch import load_file

    written = []
    for st in sorted(Path(path).glob("*/*.safetensors")):
        stem = st.name[: -len(".safetensors")]
        name = stem.replace("model", "pytorch_model", 1) if stem.startswith("model") else stem
        dst = st.with_name(name + ".bin")
        torch.save(load_file(str(st)), dst)
        st.unlink()
        written.append(dst)
    return written


def save_lcm_lora(path, pipe=None, *, family: str = "sd15", rank: int = 4, seed: int = 0) -> Path:
    """A random LoRA adapter on ``pipe``'s UNet attention projections, saved as
    ``PATH/pytorch_lora_weights.safetensors`` (the file ``load_lora_weights`` looks for)."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_pipeline(family, seed=seed) if pipe is None else pipe
    unet = pipe.unet
    unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
        ),
        adapter_name="lcm",
    )
    torch.manual_seed(seed)
    layers = get_peft_model_state_dict(unet, adapter_name="lcm")
    type(pipe).save_lora_weights(save_directory=str(path), unet_lora_layers=layers, safe_serialization=True)
    unet.delete_adapters("lcm")
    return Path(path)


def model_index(path) -> dict:
    return json.loads((Path(path) / "model_index.json").read_text())
