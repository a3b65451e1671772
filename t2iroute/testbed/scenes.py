"""Deterministic procedural captioned scenes.

Grammar (the generator's own; :func:`parse_caption` accepts exactly this)::

    caption  := group [relation group]
    group    := article [size] [texture] colour noun
    article  := "a" | "an" (count 1; "an" before a vowel) | "two" | "three"
    size     := "small" | "large"            (absent: unspecified, rendered medium, not checked)
    texture  := "striped" | "dotted" | "checked" | "plain"   (absent: plain; "plain" is never written)
    noun     := shape, plural ("circles", ...) when the count is above one
    relation := "left of" | "right of" | "above" | "below"

Levels: 1 = one plain object of unspecified size ("a red circle"); 2 = one group with at least one
of size / texture / count > 1; 3 = two groups of different colours with a relation.

Rendering: light-grey background, flat palette colours far apart in RGB, textures drawn in a
near-black ink inside the shape with a 4 px period (2 px stripes / 2x2 dots / 2 px checks),
objects separated by at least ``GAP`` px (bounding boxes), and for a relation every object of the
first group lies strictly on the named side of every object of the second. Everything is
deterministic from a seed (``numpy.random.default_rng``).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (240, 225, 20),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (140, 50, 180),
}
BACKGROUND = (230, 230, 230)
INK = (25, 25, 25)  # texture colour
SIZES = ("small", "large")
TEXTURES = ("plain", "striped", "dotted", "checked")
COUNTS = (1, 2, 3)
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {2: "two", 3: "three"}
#: radius (half the bounding-box side, minus half a pixel) at 64 px, by size (None: unspecified)
RADIUS = {"small": 4, None: 6, "large": 8}
GAP = 3
PERIOD = 4


@dataclass
class Obj:
    shape: str
    color: str
    size: str | None = None  # "small" | "large" | None (unspecified)
    texture: str = "plain"
    count: int = 1


@dataclass
class Scene:
    objects: list[Obj]
    relation: str | None = None
    caption: str = ""
    level: int = 1


def _level(objects: list[Obj], relation: str | None) -> int:
    if relation is not None:
        return 3
    o = objects[0]
    return 2 if (o.size is not None or o.texture != "plain" or o.count != 1) else 1


def _group_text(o: Obj) -> str:
    words = [w for w in (o.size, None if o.texture == "plain" else o.texture, o.color) if w]
    noun = o.shape + ("s" if o.count > 1 else "")
    if o.count == 1:
        art = "an" if (words[0] if words else noun)[0] in "aeiou" else "a"
    else:
        art = COUNT_WORDS[o.count]
    return " ".join([art, *words, noun])


def caption(scene: Scene) -> str:
    """The canonical caption of ``scene`` (grammatical articles and plurals)."""
    text = _group_text(scene.objects[0])
    if scene.relation is not None:
        text += f" {scene.relation} {_group_text(scene.objects[1])}"
    return text


def _make(objects: list[Obj], relation: str | None) -> Scene:
    s = Scene(objects=objects, relation=relation, level=_level(objects, relation))
    s.caption = caption(s)
    return s


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def sample_scene(rng: np.random.Generator, level: int | None = None) -> Scene:
    """A random scene of ``level`` (1, 2, 3; None: uniform over the three)."""
    if level is None:
        level = int(rng.integers(1, 4))
    if level not in (1, 2, 3):
        raise ValueError(f"level must be 1, 2 or 3, got {level!r}")
    if level == 1:
        return _make([Obj(_pick(rng, SHAPES), _pick(rng, list(COLORS)))], None)

    def group(color: str) -> Obj:
        return Obj(_pick(rng, SHAPES), color, _pick(rng, (None, *SIZES)), _pick(rng, TEXTURES), _pick(rng, COUNTS))

    if level == 2:
        while True:
            o = group(_pick(rng, list(COLORS)))
            if _level([o], None) == 2:
                return _make([o], None)
    ca, cb = (list(COLORS)[i] for i in rng.choice(len(COLORS), size=2, replace=False))
    return _make([group(ca), group(cb)], _pick(rng, RELATIONS))


_GROUP_RE = re.compile(
    r"(?P<art>a|an|two|three) (?:(?P<size>small|large) )?(?:(?P<tex>plain|striped|dotted|checked) )?"
    r"(?P<color>" + "|".join(COLORS) + r") (?P<noun>" + "|".join(SHAPES) + r")(?P<pl>s?)"
)
_CAPTION_RE = re.compile(r"(?P<a>.+?)(?: (?P<rel>" + "|".join(RELATIONS) + r") (?P<b>.+))?")


def _parse_group(g: str, text: str) -> Obj:
    m = _GROUP_RE.fullmatch(g)
    if not m:
        raise ValueError(f"caption {text!r} does not parse: bad group {g!r}")
    count = {"a": 1, "an": 1, "two": 2, "three": 3}[m["art"]]
    if (count > 1) != bool(m["pl"]):
        raise ValueError(f"caption {text!r} does not parse: count and noun disagree in {g!r}")
    if count == 1:
        nxt = g.split(" ")[1]
        if m["art"] != ("an" if nxt[0] in "aeiou" else "a"):
            raise ValueError(f"caption {text!r} does not parse: wrong article in {g!r}")
    return Obj(m["noun"], m["color"], m["size"], m["tex"] or "plain", count)


def parse_caption(text: str) -> Scene:
    """Parse a caption of the generator's grammar back to a :class:`Scene` (strict, lower case,
    single spaces); ValueError naming ``text`` otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"caption {text!r} does not parse: not a string")
    m = _CAPTION_RE.fullmatch(text)
    if not m:
        raise ValueError(f"caption {text!r} does not parse")
    objs = [_parse_group(m["a"], text)]
    if m["rel"] is not None:
        objs.append(_parse_group(m["b"], text))
    return _make(objs, m["rel"])


def attributes(scene: Scene) -> list[tuple]:
    """Ground-truth attributes the checker verifies, as ``(kind, group_index, value)`` tuples
    (``("relation", (0, 1), rel)`` for the relation). Size is listed only when stated, texture
    only when not plain."""
    out: list[tuple] = []
    for i, o in enumerate(scene.objects):
        out += [("presence", i, o.shape), ("color", i, o.color), ("count", i, o.count)]
        if o.size is not None:
            out.append(("size", i, o.size))
        if o.texture != "plain":
            out.append(("texture", i, o.texture))
    if scene.relation is not None:
        out.append(("relation", (0, 1), scene.relation))
    return out


# -- rendering ----------------------------------------------------------------------------------
def _regions(relation: str | None, size: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) boxes (exclusive ends) that each group's objects must lie inside."""
    full = (0, 0, size, size)
    if relation is None:
        return [full]
    h = size // 2
    lo, hi = (0, 0, h - 1, size), (h + 1, 0, size, size)
    if relation in ("above", "below"):
        lo, hi = (0, 0, size, h - 1), (0, h + 1, size, size)
    return [lo, hi] if relation in ("left of", "above") else [hi, lo]


def _layout(scene: Scene, size: int, rng) -> list[tuple[Obj, int, int, int]]:
    scale = size / 64.0
    gap = max(1, round(GAP * scale))
    regions = _regions(scene.relation, size)
    items = [
        (o, gi, max(2, round(RADIUS[o.size] * scale))) for gi, o in enumerate(scene.objects) for _ in range(o.count)
    ]
    for _restart in range(200):
        placed: list[tuple[Obj, int, int, int]] = []
        for o, gi, r in items:
            x0, y0, x1, y1 = regions[gi]
            if x1 - x0 < 2 * r + 3 or y1 - y0 < 2 * r + 3:
                raise ValueError(f"scene {scene.caption!r} does not fit in {size} px")
            for _try in range(100):
                cx = int(rng.integers(x0 + r + 1, x1 - r - 1))
                cy = int(rng.integers(y0 + r + 1, y1 - r - 1))
                if all(max(abs(cx - px) - (r + pr), abs(cy - py) - (r + pr)) >= gap + 1 for _, px, py, pr in placed):
                    placed.append((o, cx, cy, r))
                    break
            else:
                break
        else:
            return placed
    raise RuntimeError(f"could not place the objects of {scene.caption!r} in {size} px")


def _texture_mask(texture: str, size: int, scale: float) -> np.ndarray:
    p = max(2, round(PERIOD * scale))
    half = p // 2
    yy, xx = np.mgrid[0:size, 0:size]
    if texture == "striped":
        return (yy % p) >= half
    if texture == "dotted":
        return ((yy % p) < half) & ((xx % p) < half)
    if texture == "checked":
        return ((yy // half) + (xx // half)) % 2 == 1
    return np.zeros((size, size), bool)


def render(scene: Scene, size: int = 64, rng: np.random.Generator | None = None) -> Image.Image:
    """An RGB ``size`` x ``size`` image of ``scene``. ``rng`` drives placement; None: a generator
    seeded from the caption (same scene -> same image)."""
    if rng is None:
        rng = np.random.default_rng(zlib.crc32(caption(scene).encode()))
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = BACKGROUND
    scale = size / 64.0
    for o, cx, cy, r in _layout(scene, size, rng):
        layer = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(layer)
        box = [cx - r, cy - r, cx + r, cy + r]
        if o.shape == "circle":
            d.ellipse(box, fill=255)
        elif o.shape == "square":
            d.rectangle(box, fill=255)
        else:
            d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=255)
        m = np.asarray(layer) > 0
        canvas[m] = COLORS[o.color]
        canvas[m & _texture_mask(o.texture, size, scale)] = INK
    return Image.fromarray(canvas, "RGB")


def prompt_set(n: int = 500, seed: int = 2026) -> list[dict]:
    """``n`` distinct captions, interleaved over the levels (all 18 level-1 captions exist, so
    level 1 is capped there), each ``{"prompt_id", "prompt", "tag": "level<k>"}``. Seed 2026 is
    the bundled ``testbed`` set; the models train on seed-0 scenes (level-1 and most level-2
    captions occur in both: the grammar has only 18 and 630 of them)."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: list[dict] = []
    quota = {1: min(18, n // 3), 2: (n - min(18, n // 3)) // 2}
    quota[3] = n - quota[1] - quota[2]
    for _ in range(200 * n):
        if len(out) == n:
            break
        level = int(rng.integers(1, 4))
        if quota[level] == 0:
            continue
        c = sample_scene(rng, level).caption
        if c in seen:
            continue
        seen.add(c)
        quota[level] -= 1
        out.append({"prompt_id": f"testbed-{len(out):05d}", "prompt": c, "tag": f"level{level}"})
    return out
