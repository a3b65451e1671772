"""Generate the hand-labelled testbed image set (issue 23): images the shipped testbed backends
actually draw, for validating the testbed checker against human labels.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/make_label_set.py [--out t2iroute/data/testbed-labels]
        [--sheets /tmp/sheets] [--seed 0] [--per-level 18 71 71]
    # the second set, drawn by the weights of commit 173b00a (the big model's fourth run):
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/make_label_set.py --out t2iroute/data/testbed-labels-2 \
        --sheets /tmp/sheets2 --seed 1 --per-level 18 31 31
    # the third set, same weights, labelled blind by four labellers of 18 images:
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/make_label_set.py --out t2iroute/data/testbed-labels-3 \
        --sheets /tmp/sheets3 --seed 2 --per-level 12 30 30 --no-extra --sheet-rows 3 --reference

Writes OUT/images/NNNN.png (64x64, as generated) and OUT/manifest.jsonl (index, file, prompt,
backend, seed, level, intended objects parsed by the scene grammar). Contact sheets (6x4 grids,
each image upscaled to 192 px nearest-neighbour, index drawn above) go to --sheets, outside the
repository, for looking at. The labels themselves (labels.jsonl) are written by hand from the sheets.

Selection (seeded, reproducible): all 18 level-1 prompts of the bundled "testbed" set, 71 level-2 and
71 level-3 prompts drawn without replacement (160 distinct prompts), rotated over the five testbed
backends; plus "a red circle" and "a green triangle" (issue 23's examples) at seed 0 on every backend, as in
the issue's reproduction (appended at the end). Seeds: the item index, 0 for those ten.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

import t2iroute
from t2iroute.backends.base import build_backend
from t2iroute.testbed import scenes as S
from t2iroute.training.prompts import read_prompts

BACKENDS = ["testbed_big_4", "testbed_big_8", "testbed_big_16", "testbed_big_32_es", "testbed_small_8"]
EXTRA = ["a red circle", "a green triangle"]
N_PER_LEVEL = {"level1": 18, "level2": 71, "level3": 71}


def intended(prompt: str) -> dict:
    sc = S.parse_caption(prompt)
    return {
        "level": sc.level,
        "relation": sc.relation,
        "objects": [
            {"shape": o.shape, "colour": o.color, "size": o.size, "texture": o.texture, "count": o.count}
            for o in sc.objects
        ],
    }


def select(seed: int, per_level: dict | None = None, extra: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    df = read_prompts("testbed")
    chosen = []
    for level, n in (per_level or N_PER_LEVEL).items():
        ps = df[df.label == level].prompt.tolist()
        idx = sorted(rng.choice(len(ps), size=n, replace=False)) if n < len(ps) else range(len(ps))
        chosen += [ps[i] for i in idx]
    order = rng.permutation(len(chosen))  # mix levels, then rotate backends
    items = [{"prompt": chosen[j], "backend": BACKENDS[k % len(BACKENDS)]} for k, j in enumerate(order)]
    for i, it in enumerate(items):
        it["seed"] = i
    for p in EXTRA if extra else []:  # appended, so the items above keep their indices
        have = {it["backend"] for it in items if it["prompt"] == p and it["seed"] == 0}
        items += [{"prompt": p, "backend": b, "seed": 0} for b in BACKENDS if b not in have]
    for i, it in enumerate(items):
        it["index"] = i
        it["file"] = f"images/{i:04d}.png"
        it["intended"] = intended(it["prompt"])
    return items


def contact_sheets(images: list[Image.Image], out: Path, cols: int = 6, rows: int = 4, px: int = 192):
    out.mkdir(parents=True, exist_ok=True)
    per = cols * rows
    head = 22
    for s in range(0, len(images), per):
        sheet = Image.new("RGB", (cols * (px + 8), rows * (px + head + 8)), (255, 255, 255))
        d = ImageDraw.Draw(sheet)
        for k, im in enumerate(images[s : s + per]):
            x, y = (k % cols) * (px + 8), (k // cols) * (px + head + 8)
            d.text((x + 4, y + 4), f"{s + k:04d}", fill=(0, 0, 0))
            sheet.paste(im.resize((px, px), Image.NEAREST), (x, y + head))
        sheet.save(out / f"sheet_{s // per:02d}_{s:04d}-{min(s + per, len(images)) - 1:04d}.png")


def reference_sheet(path: Path, n: int = 24, seed: int = 7, px: int = 192) -> None:
    """Perfect renders of sampled scenes (levels 1-3) with their captions: the labellers' key to
    shapes, colours, sizes and textures. Seeded; not drawn by any model."""
    rng = np.random.default_rng(seed)
    scenes = [S.sample_scene(rng, level=1 + k % 3) for k in range(n)]
    cols, head = 4, 34
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (px + 8), rows * (px + head + 8)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for k, sc in enumerate(scenes):
        x, y = (k % cols) * (px + 8), (k // cols) * (px + head + 8)
        text = S.caption(sc)
        d.text((x + 4, y + 2), text[:34], fill=(0, 0, 0))
        d.text((x + 4, y + 14), text[34:68], fill=(0, 0, 0))
        im = S.render(sc, 64, np.random.default_rng(k)).convert("RGB")
        sheet.paste(im.resize((px, px), Image.NEAREST), (x, y + head))
    sheet.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(t2iroute.__file__).parent / "data" / "testbed-labels"))
    ap.add_argument("--sheets", default="/tmp/sheets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--per-level",
        type=int,
        nargs=3,
        default=list(N_PER_LEVEL.values()),
        metavar=("L1", "L2", "L3"),
        help="prompts drawn per level (default: 18 71 71)",
    )
    ap.add_argument(
        "--no-extra",
        action="store_true",
        help="leave out the seed-0 'a red circle' / 'a green triangle' items (a later set of the same weights)",
    )
    ap.add_argument("--sheet-rows", type=int, default=4, help="rows of 6 images per contact sheet")
    ap.add_argument(
        "--reference",
        action="store_true",
        help="also write a sheet of perfect renders with their captions (what labellers see besides the rules)",
    )
    a = ap.parse_args()
    out = Path(a.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = select(a.seed, dict(zip(N_PER_LEVEL, a.per_level)), extra=not a.no_extra)
    conf = Path(t2iroute.__file__).parent / "conf" / "backends"
    images: dict[int, Image.Image] = {}
    for name in BACKENDS:
        spec = yaml.safe_load((conf / f"{name}.yaml").read_text())
        b = build_backend(name, spec)
        mine = [it for it in items if it["backend"] == name]
        gens = b.generate([it["prompt"] for it in mine], seeds=[it["seed"] for it in mine])
        for it, g in zip(mine, gens):
            im = g.image.convert("RGB")
            assert im.size == (64, 64), im.size
            im.save(out / it["file"], optimize=True)
            images[it["index"]] = im
        print(f"{name}: {len(mine)} images", flush=True)
    with open(out / "manifest.jsonl", "w") as f:
        for it in items:
            f.write(json.dumps({k: it[k] for k in ("index", "file", "prompt", "backend", "seed", "intended")}) + "\n")
    contact_sheets([images[i] for i in range(len(items))], Path(a.sheets), rows=a.sheet_rows)
    if a.reference:
        reference_sheet(Path(a.sheets) / "reference.png")
    print(f"{len(items)} images -> {out}; sheets -> {a.sheets}")


if __name__ == "__main__":
    main()
