"""Procedural captioned-scene testbed: a generator (:mod:`.scenes`) and a GenEval-like checker
(:mod:`.checker`) for training and judging small text-to-image models."""

from t2iroute.testbed.scenes import Obj, Scene, attributes, caption, parse_caption, render, sample_scene

__all__ = ["Obj", "Scene", "attributes", "caption", "parse_caption", "render", "sample_scene"]
