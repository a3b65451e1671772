"""The testbed's text-to-image models: real diffusers classes at a size a CPU trains and runs.

Two Stable-Diffusion-shaped pipelines share one small VAE (64 px RGB <-> 32x32x12 latents, f2):

- ``big``: ``UNet2DConditionModel`` (32, 64, 64) channels, cross-attention at 16x16 and 8x8;
  step budgets of it are routes.
- ``small``: the same layout at (16, 32, 32) channels: a quarter of the parameters, about half
  the time per step on a CPU.

Text goes through a ``CLIPTextModel`` (2 layers, width 64) and a real ``CLIPTokenizer`` (byte-level
BPE) whose vocabulary is learned from the testbed grammar's words, so every grammar word is one
token and any other text still tokenizes (into characters). ``scripts/train_testbed.py`` trains
them from a seed; the trained weights ship in ``t2iroute/testbed/weights/<name>/`` (float16) and
load with ``StableDiffusionPipeline.from_pretrained(folder)`` -- the same code path as SD 1.5.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from t2iroute.testbed import scenes as S

NAMES = ("big", "small")
MAX_TOKENS = 32
#: 32x32x12 latents for 64x64x3 images (f2). An f4 VAE cannot work here: the textures have a 4 px
#: period, and a stride-4 translation-equivariant encoder maps any 4-periodic region to a constant
#: latent, so no decoder can draw the stripes back (seen: f4 VAEs, 4 and 12 channels, lost every texture)
LATENT_CHANNELS = 12
#: the scheduler every testbed pipeline ships with: SD 1.5's (DDIM, scaled-linear betas)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
UNETS = {
    "big": dict(block_out_channels=(32, 64, 64), attention_head_dim=8),
    "small": dict(block_out_channels=(16, 32, 32), attention_head_dim=4),
}
WEIGHTS = Path(__file__).parent / "weights"


def weights_dir(name: str) -> Path:
    """The shipped pipeline folder of testbed model ``name`` (``big`` / ``small``)."""
    if name not in NAMES:
        raise ValueError(f"unknown testbed model {name!r}; known: {list(NAMES)}")
    path = WEIGHTS / name
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"testbed model {name!r}: no weights at {path} (run scripts/train_testbed.py)")
    return path


def testbed_source(ref: str) -> str:
    """The ``testbed`` model source: ``model: testbed:big`` / ``testbed:small``, the shipped folders."""
    return str(weights_dir(ref))


def grammar_words() -> list[str]:
    words = {"a", "an", "two", "three", *S.SIZES, *S.TEXTURES, *S.COLORS}
    words |= {s for s in S.SHAPES} | {s + "s" for s in S.SHAPES}
    for r in S.RELATIONS:
        words |= set(r.split())
    return sorted(words)


def learn_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style byte-level BPE learned on ``words`` until each is one token: (vocab, merges).
    Applying the merges in rank order reproduces the learned segmentation (BPE's own property)."""
    from t2iroute.backends.tiny import byte_chars

    chars = byte_chars()
    vocab = chars + [c + "</w>" for c in chars]
    segs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for seg in segs.values():
            for a, b in zip(seg, seg[1:]):
                pairs[(a, b)] += 1
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, seg in segs.items():
            out, i = [], 0
            while i < len(seg):
                if i + 1 < len(seg) and (seg[i], seg[i + 1]) == best:
                    out.append(seg[i] + seg[i + 1])
                    i += 2
                else:
                    out.append(seg[i])
                    i += 1
            segs[w] = out
    vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {v: i for i, v in enumerate(vocab)}, merges


def make_tokenizer(folder: Path | None = None):
    """The testbed CLIPTokenizer (written to ``folder`` first when given, then loaded from files)."""
    import tempfile

    from transformers import CLIPTokenizer

    vocab, merges = learn_bpe(grammar_words())
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(folder) if folder is not None else Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        (d / "vocab.json").write_text(json.dumps(vocab))
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
        tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=MAX_TOKENS)
        tok.model_max_length = MAX_TOKENS  # transformers 5 drops the keyword here
        return tok


def make_vae(tiny: bool = False):
    from diffusers import AutoencoderKL

    ch = (8, 16) if tiny else (16, 32)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        block_out_channels=ch,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=64,
        mid_block_add_attention=False,
    )


def make_text_encoder(vocab_size: int, tiny: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel

    w = 16 if tiny else 64
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=w,
            intermediate_size=2 * w,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )


def make_unet(name: str, tiny: bool = False):
    from diffusers import UNet2DConditionModel

    spec = dict(UNETS[name])
    if tiny:
        spec = dict(block_out_channels=(8, 8, 8), attention_head_dim=2)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16 if tiny else 64,
        norm_num_groups=8,
        # a pooled text embedding added to the time embedding (diffusers' TextTimeEmbedding): a global
        # path for colour, shape and count beside cross-attention; the undertrained cross-attention-only
        # models ignored the caption (purple blobs for every prompt)
        addition_embed_type="text",
        addition_embed_type_num_heads=2 if tiny else 4,
        **spec,
    )


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(SCHEDULER_CONFIG)


def assemble(unet, vae, text_encoder, tokenizer):
    """A StableDiffusionPipeline from testbed components (no safety checker: synthetic shapes)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def untrained_pipeline(name: str = "big", seed: int = 0, tiny: bool = True):
    """Random weights of the testbed classes (tests): ``tiny`` shrinks every width."""
    from t2iroute._compat import ensure_torchvision

    ensure_torchvision()
    import torch

    torch.manual_seed(seed)
    tok = make_tokenizer()
    return assemble(make_unet(name, tiny).eval(), make_vae(tiny).eval(), make_text_encoder(len(tok), tiny).eval(), tok)
