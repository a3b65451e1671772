"""Tiny random-weight Stable Diffusion pipelines, built in process (no download).

The same architecture family as SD 1.5 (UNet2DConditionModel, AutoencoderKL, CLIP text encoder,
CLIP BPE tokenizer with CLIP's real vocabulary shipped inside open_clip), a few hundred
thousand parameters: a 64x64 image in tens of milliseconds on a CPU. Used by tests, the offline
demo and ``model: tiny`` backends. ``save_tiny_pipeline`` writes a folder that
``from_pretrained`` loads, so the real loading code is exercised too.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path


def byte_chars() -> list[str]:
    """CLIP's byte-level BPE alphabet: the 256 bytes as printable characters, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@lru_cache(maxsize=1)
def _clip_vocab_and_merges():
    from importlib.util import find_spec

    spec = find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tiny pipelines take CLIP's BPE vocabulary from open_clip: pip install open_clip_torch")
    bpe = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = byte_chars()
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {v: i for i, v in enumerate(vocab)}, merges


def tiny_components(seed: int = 0, scheduler: str = "ddim"):
    from t2iroute._compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from t2iroute.backends.diffusers_backend import make_scheduler

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=64,
    )
    vocab, merges = _clip_vocab_and_merges()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": make_scheduler(scheduler, None),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_source(ref: str):
    """The ``tiny`` model source: ``model: tiny`` or ``tiny:SEED``, random weights built in process."""
    try:
        seed = int(ref) if ref else 0
    except ValueError:
        raise ValueError(f"model 'tiny:{ref}': the part after 'tiny:' is a seed (an integer)") from None
    return tiny_pipeline(seed)


def tiny_pipeline(seed: int = 0, scheduler: str = "ddim"):
    components = tiny_components(seed, scheduler)  # first: it makes diffusers' pipelines importable
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**components, requires_safety_checker=False)


def save_tiny_pipeline(path, seed: int = 0, scheduler: str = "ddim") -> Path:
    path = Path(path)
    tiny_pipeline(seed, scheduler).save_pretrained(path)
    return path
