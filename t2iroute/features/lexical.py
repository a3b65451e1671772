"""Lexical prompt-complexity features: cheap, deterministic, no model.

Each feature counts a kind of demand a prompt makes on a text-to-image model (objects, counting,
colors and attributes to bind, spatial relations, text to render, style terms). The names are
stable: they are part of a trained router's featurizer spec.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CLIP_PIECE = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]")


def _words(*groups: str) -> frozenset[str]:
    return frozenset(w for g in groups for w in g.split())


NUMBER_WORDS = _words(
    "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen twenty "
    "dozen dozens pair pairs couple several many multiple few hundreds thousands both trio triple "
    "double single one"
)
COLORS = _words(
    "red green blue yellow orange purple pink brown black white gray grey silver gold golden "
    "violet cyan magenta teal turquoise beige maroon navy crimson scarlet emerald amber indigo "
    "colorful colourful pastel neon monochrome"
)
ATTRIBUTES = _words(
    "wooden metal metallic glass plastic stone leather fluffy furry shiny rusty round square "
    "rectangular triangular circular oval spherical cubic tiny small little big large huge giant "
    "tall short long thin thick fat old young new ancient broken wet dry hot cold soft hard "
    "smooth rough striped spotted checkered transparent translucent glowing wrinkled fuzzy"
)
SPATIAL_PHRASES = (
    "left of",
    "right of",
    "on top of",
    "in front of",
    "next to",
    "on the left",
    "on the right",
    "to the left",
    "to the right",
    "on the side of",
    "at the bottom",
    "at the top",
)
SPATIAL_WORDS = _words(
    "above below under beneath behind beside between inside outside near over underneath "
    "atop within around across along opposite facing"
)
TEXT_WORDS = _words(
    "text sign signs saying says written writing letters lettering word words caption logo "
    "title reads label poster banner typography"
)
STYLE_PHRASES = (
    "artstation",
    "octane",
    "unreal engine",
    "concept art",
    "digital art",
    "digital painting",
    "oil painting",
    "watercolor",
    "watercolour",
    "illustration",
    "anime",
    "manga",
    "3d render",
    "photorealistic",
    "hyperrealistic",
    "hyper realistic",
    "highly detailed",
    "intricate",
    "sharp focus",
    "4k",
    "8k",
    "trending on",
    "cinematic",
    "studio lighting",
    "bokeh",
    "sketch",
    "cartoon",
    "pixel art",
    "vector",
    "matte painting",
    "portrait",
    "photograph",
    "photo of",
    "dslr",
    "35mm",
    "greg rutkowski",
    "midjourney",
    "volumetric",
    "ray tracing",
    "low poly",
)
PEOPLE = _words(
    "man men woman women person people girl girls boy boys child children kid kids baby "
    "lady gentleman couple family crowd player soldier king queen astronaut"
)
HANDS_FACES = _words("hand hands finger fingers face faces eyes teeth holding")
CONJ = _words("and with while holding wearing riding")
NEGATION = _words("no not without none never")

FEATURE_NAMES = (
    "n_words",
    "log_words",
    "n_chars",
    "approx_clip_tokens",
    "over_77_tokens",
    "n_commas",
    "n_clauses",
    "n_conjunctions",
    "n_numerals",
    "n_number_words",
    "n_colors",
    "n_attributes",
    "n_spatial",
    "n_quoted",
    "n_text_words",
    "n_style_terms",
    "n_by_artist",
    "n_people",
    "n_hands_faces",
    "n_negations",
    "frac_upper",
    "frac_nonascii",
    "mean_word_len",
    "type_token_ratio",
)


_SENTENCE_SPLIT = re.compile(r"[,.;:!?]")
_DIGITS = re.compile(r"\d+")
_QUOTED = re.compile(r"[\"“”][^\"“”]+[\"“”]")
_SINGLE_QUOTED = re.compile(r"(?<!\w)'[^']{2,}'(?!\w)")
_BY_ARTIST = re.compile(r"\bby [a-z]")
# the word lists counted per word, in feature order: one dictionary look-up per word
_WORD_SETS = (CONJ, NUMBER_WORDS, COLORS, ATTRIBUTES, SPATIAL_WORDS, TEXT_WORDS, PEOPLE, HANDS_FACES, NEGATION)
_WORD_LISTS = {w: tuple(i for i, s in enumerate(_WORD_SETS) if w in s) for w in frozenset().union(*_WORD_SETS)}


def lexical_features(prompt: str) -> list[float]:
    text = str(prompt)
    low = text.lower()
    words = _WORD.findall(low)
    n = len(words)
    clip_tokens = len(_CLIP_PIECE.findall(low)) + 2  # + start/end tokens, roughly CLIP's BPE
    hits = [0] * len(_WORD_SETS)
    for w in words:
        for i in _WORD_LISTS.get(w, ()):
            hits[i] += 1
    conj, numbers, colors, attributes, spatial, text_words, people, hands, negations = hits
    if text.isascii():  # an ASCII upper-case character is a letter
        n_letters = sum(map(str.isalpha, text))
        n_upper = sum(map(str.isupper, text))
        nonascii = 0
    else:
        letters = [c for c in text if c.isalpha()]
        n_letters, n_upper = len(letters), sum(c.isupper() for c in letters)
        nonascii = sum(ord(c) > 127 for c in text)
    return [
        n,
        math.log1p(n),
        len(text),
        clip_tokens,
        float(clip_tokens > 77),
        low.count(","),
        len([s for s in _SENTENCE_SPLIT.split(low) if s.strip()]),
        conj,
        len(_DIGITS.findall(low)),
        numbers,
        colors,
        attributes,
        sum(map(low.count, SPATIAL_PHRASES)) + spatial,
        len(_QUOTED.findall(text)) + len(_SINGLE_QUOTED.findall(text)),
        text_words,
        sum(map(low.count, STYLE_PHRASES)),
        len(_BY_ARTIST.findall(low)),
        people,
        hands,
        negations,
        (n_upper / n_letters) if n_letters else 0.0,
        (nonascii / len(text)) if text else 0.0,
        (sum(map(len, words)) / n) if n else 0.0,
        (len(set(words)) / n) if n else 0.0,
    ]


class LexicalFeaturizer:
    """Counts of complexity cues in the prompt text (see FEATURE_NAMES)."""

    name = "lexical"
    LOCAL_KEYS: frozenset = frozenset()

    def __init__(self, **params: Any):
        if params:
            raise TypeError(f"LexicalFeaturizer takes no parameters, got {sorted(params)}")

    @property
    def feature_names_(self) -> list[str]:
        return list(FEATURE_NAMES)

    def transform(self, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray([lexical_features(p) for p in prompts], dtype=np.float32).reshape(
            len(prompts), len(FEATURE_NAMES)
        )

    def spec(self) -> dict[str, Any]:
        return {}
