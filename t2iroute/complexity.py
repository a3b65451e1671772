"""Prompt complexity on the LLM rubric's 1-5 scale, estimated from lexical counts: the LLM
featurizer's stand-in when its server is down, and the prior predictor's complexity when no LLM is
configured. Pure: it reads named counts (``t2iroute.features.lexical.FEATURE_NAMES``)."""

from __future__ import annotations

from typing import Mapping

#: the lexical counts the estimate reads
COUNTS = (
    "n_conjunctions",
    "n_commas",
    "n_colors",
    "n_attributes",
    "n_spatial",
    "n_numerals",
    "n_number_words",
    "n_quoted",
    "n_text_words",
    "n_style_terms",
)
#: the scale
RANGE = (1.0, 5.0)


def estimate(f: Mapping[str, float]) -> dict[str, float]:
    """The rubric's fields and its ``complexity`` (1-5) from lexical counts ``f``."""
    objects = min(20.0, 1.0 + f["n_conjunctions"] + f["n_commas"] * 0.5)
    est = {
        "objects": objects,
        "attribute_bindings": min(20.0, f["n_colors"] + f["n_attributes"]),
        "spatial_relations": min(20.0, f["n_spatial"]),
        "counting": min(20.0, f["n_numerals"] + f["n_number_words"]),
        "text_to_render": float(f["n_quoted"] > 0 or f["n_text_words"] > 0),
        "detail_style": float(min(5.0, 1.0 + f["n_style_terms"])),
    }
    demands = est["attribute_bindings"] + est["spatial_relations"] + est["counting"] + 2 * est["text_to_render"]
    est["complexity"] = float(min(5.0, 1.0 + 0.5 * (objects - 1) + 0.5 * demands))
    return est
