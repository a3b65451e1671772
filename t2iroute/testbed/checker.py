"""GenEval-like programmatic checker for testbed captions (:mod:`t2iroute.testbed.scenes`).

Method (the image is first resized to ``resolution`` px with a box filter):

1. every pixel gets the nearest of {background, ink, palette colours} if within ``threshold``
   (RGB Euclidean distance), else "other";
2. foreground = palette or ink pixels; 4-connected components (``scipy.ndimage.label``) with holes
   filled and at least ``min_area`` px whose palette pixels are at least 60% one colour;
3. per component: colour = majority palette colour; shape from the fill ratio of its bounding box
   (square > 0.88 >= circle > 0.64 >= triangle; ideals 1, 0.785, 0.5); size = "large" when the
   larger bounding-box side is at least 13/64 of the image (small objects span 9 px, large 17);
   texture from the ink pixels inside the filled shape: ink fraction < 0.08 -> plain; else if the
   ink changes along one axis but hardly along the other -> striped; else ink fraction < 0.37 ->
   dotted (ideal 0.25), else checked (ideal 0.5);
4. per caption group, the matched components are those with its shape and colour.

Score = weighted fraction of the caption's attributes satisfied (in [0, 1]). Weights: per group
``presence`` 1 (a component of the group's shape, any colour), ``color`` 1 (a component of its
shape and colour), ``count`` 1 (exact: 1; else 0.5 * max(0, 1 - |n - c| / c)), ``size`` 1 when
stated (fraction of matched components of that size), ``texture`` 1 when stated and not plain
(fraction with that texture); ``relation`` 2 (the matched groups' centroids differ by more than
2/64 of the image along the named axis, in the named direction).

Prompts outside the generator's grammar score 0.0 (documented rule: the checker only judges its
own grammar); pass ``strict=True`` to raise the parser's ValueError instead.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from t2iroute.testbed import scenes as S

WEIGHTS = {"presence": 1.0, "color": 1.0, "count": 1.0, "size": 1.0, "texture": 1.0, "relation": 2.0}


class TestbedChecker:
    __test__ = False  # not a pytest class despite the name
    metric = "testbed_check"
    higher_is_better = True
    bounds = (0.0, 1.0)  # the share of the caption's attributes found: a router reports within it

    def __init__(self, *, resolution: int = 64, threshold: float = 60.0, min_area: int = 20,
                 strict: bool = False):
        self.resolution = int(resolution)
        self.threshold = float(threshold)
        self.min_area = int(min_area)
        self.strict = bool(strict)
        self._names = ["background", "ink", *S.COLORS]
        self._ref = np.array([S.BACKGROUND, S.INK, *S.COLORS.values()], float)

    # -- perception -------------------------------------------------------------------------
    def detect(self, image: Any) -> list[dict]:
        """The objects found in ``image``: dicts with shape, color, size, texture, cx, cy, area."""
        from scipy import ndimage

        im = image.convert("RGB")
        R = self.resolution
        if im.size != (R, R):
            im = im.resize((R, R), Image.BOX)
        a = np.asarray(im, float)
        d = np.linalg.norm(a[:, :, None, :] - self._ref[None, None], axis=-1)
        cls = d.argmin(-1)
        cls[d.min(-1) > self.threshold] = -1
        ink = cls == 1
        fg = (cls >= 1)
        lab, n = ndimage.label(fg)
        out = []
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            comp = lab[sl] == k
            filled = ndimage.binary_fill_holes(comp)
            area = int(filled.sum())
            c = cls[sl][comp]
            pal = c[c >= 2]
            if area < self.min_area or pal.size < 0.3 * area:
                continue
            counts = np.bincount(pal - 2, minlength=len(S.COLORS))
            if counts.max() < 0.6 * pal.size:
                continue
            h, w = filled.shape
            fill = area / float(h * w)
            shape = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"
            size = "large" if max(h, w) >= 13 * R / 64 else "small"
            out.append(dict(shape=shape, color=list(S.COLORS)[int(counts.argmax())], size=size,
                            texture=self._texture(ink[sl] & filled, filled), area=area,
                            cx=(sl[1].start + sl[1].stop - 1) / 2, cy=(sl[0].start + sl[0].stop - 1) / 2))
        return out

    @staticmethod
    def _texture(ink: np.ndarray, filled: np.ndarray) -> str:
        f = ink.sum() / max(1, filled.sum())
        if f < 0.08:
            return "plain"
        ph = filled[:, 1:] & filled[:, :-1]
        pv = filled[1:, :] & filled[:-1, :]
        th = (ink[:, 1:] != ink[:, :-1])[ph].mean() if ph.any() else 0.0
        tv = (ink[1:, :] != ink[:-1, :])[pv].mean() if pv.any() else 0.0
        if min(th, tv) < 0.12 and max(th, tv) > 0.3:
            return "striped"
        return "dotted" if f < 0.37 else "checked"

    # -- scoring ----------------------------------------------------------------------------
    def check(self, image: Any, prompt: str) -> dict[str, float]:
        """Per-attribute credit in [0, 1], keyed ``kind`` or ``kind:group`` (parses ``prompt``)."""
        scene = S.parse_caption(prompt)
        dets = self.detect(image)
        R = self.resolution
        groups = []
        credit: dict[str, float] = {}
        for i, o in enumerate(scene.objects):
            m = [x for x in dets if x["shape"] == o.shape and x["color"] == o.color]
            groups.append(m)
            credit[f"presence:{i}"] = float(any(x["shape"] == o.shape for x in dets))
            credit[f"color:{i}"] = float(bool(m))
            n = len(m)
            credit[f"count:{i}"] = 1.0 if n == o.count else 0.5 * max(0.0, 1 - abs(n - o.count) / o.count)
            if o.size is not None:
                credit[f"size:{i}"] = float(np.mean([x["size"] == o.size for x in m])) if m else 0.0
            if o.texture != "plain":
                credit[f"texture:{i}"] = float(np.mean([x["texture"] == o.texture for x in m])) if m else 0.0
        if scene.relation is not None:
            ok = 0.0
            if groups[0] and groups[1]:
                ax, sign = {"left of": ("cx", -1), "right of": ("cx", 1),
                            "above": ("cy", -1), "below": ("cy", 1)}[scene.relation]
                da = np.mean([x[ax] for x in groups[0]]) - np.mean([x[ax] for x in groups[1]])
                ok = float(sign * da > 2 * R / 64)
            credit["relation"] = ok
        return credit

    def score_one(self, image: Any, prompt: str) -> float:
        try:
            credit = self.check(image, prompt)
        except ValueError:
            if self.strict:
                raise
            return 0.0
        w = {k: WEIGHTS[k.split(":")[0]] for k in credit}
        return float(sum(w[k] * v for k, v in credit.items()) / sum(w.values()))

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        return [self.score_one(im, p) for im, p in zip(images, prompts)]


# -- validation -----------------------------------------------------------------------------
BREAKS = ("wrong_color", "wrong_count", "wrong_relation", "wrong_texture", "missing_object")
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def break_scene(scene: S.Scene, kind: str, rng: np.random.Generator) -> S.Scene | None:
    """A copy of ``scene`` with one attribute broken on purpose (None where ``kind`` does not
    apply). Rendered and scored against the ORIGINAL caption, it should score lower."""
    import copy

    objs = copy.deepcopy(scene.objects)
    rel = scene.relation
    i = int(rng.integers(len(objs)))
    if kind == "wrong_color":
        taken = {o.color for o in objs}
        objs[i].color = S._pick(rng, [c for c in S.COLORS if c not in taken])
    elif kind == "wrong_count":
        objs[i].count = S._pick(rng, [c for c in S.COUNTS if c != objs[i].count])
    elif kind == "wrong_relation":
        if rel is None:
            return None
        rel = _INVERSE[rel]
    elif kind == "wrong_texture":
        tex = [j for j, o in enumerate(objs) if o.texture != "plain"]
        if not tex:
            return None
        j = S._pick(rng, tex)
        objs[j].texture = S._pick(rng, [t for t in S.TEXTURES if t != objs[j].texture])
    elif kind == "missing_object":
        objs.pop(i)
        if not objs:
            return S.Scene(objects=[], relation=None, caption="", level=0)
        rel = None
    else:
        raise ValueError(f"unknown break kind {kind!r}; known: {BREAKS}")
    return S.Scene(objects=objs, relation=rel, caption=scene.caption, level=scene.level)


def _render_any(scene: S.Scene, size: int, rng) -> Image.Image:
    if not scene.objects:
        return Image.new("RGB", (size, size), S.BACKGROUND)
    return S.render(scene, size=size, rng=rng)


def validate(n: int = 200, seed: int = 0, size: int = 64, checker: TestbedChecker | None = None) -> dict:
    """Score ``n`` ground-truth scenes (levels cycling 1, 2, 3) and their broken variants.

    Returns ``{"truth": {level: mean}, "truth_all": mean, "breaks": {kind: mean}, "n_breaks":
    {kind: count}, "paired_truth": {kind: mean truth score over the same scenes}}``.
    """
    checker = checker or TestbedChecker()
    rng = np.random.default_rng(seed)
    truth: dict[int, list[float]] = {1: [], 2: [], 3: []}
    br: dict[str, list[float]] = {k: [] for k in BREAKS}
    paired: dict[str, list[float]] = {k: [] for k in BREAKS}
    for j in range(n):
        sc = S.sample_scene(rng, level=1 + j % 3)
        t = checker.score_one(S.render(sc, size=size, rng=rng), sc.caption)
        truth[sc.level].append(t)
        for kind in BREAKS:
            b = break_scene(sc, kind, rng)
            if b is None:
                continue
            br[kind].append(checker.score_one(_render_any(b, size, rng), sc.caption))
            paired[kind].append(t)
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"truth": {k: mean(v) for k, v in truth.items()},
            "truth_all": mean([x for v in truth.values() for x in v]),
            "breaks": {k: mean(v) for k, v in br.items()},
            "n_breaks": {k: len(v) for k, v in br.items()},
            "paired_truth": {k: mean(v) for k, v in paired.items()}}
