"""Testbed scene generator and GenEval-like checker (t2iroute.testbed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.contracts import ScorerContract
from t2iroute.testbed import scenes as S
from t2iroute.testbed.checker import BREAKS, TestbedChecker, break_scene, validate


def test_deterministic_from_seed():
    a = [S.sample_scene(np.random.default_rng(7)) for _ in range(3)]
    b = [S.sample_scene(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    s = a[0]
    im1 = S.render(s, rng=np.random.default_rng(1))
    im2 = S.render(s, rng=np.random.default_rng(1))
    assert np.array_equal(np.asarray(im1), np.asarray(im2))
    assert np.array_equal(np.asarray(S.render(s)), np.asarray(S.render(s)))


def test_caption_round_trip_and_levels():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        s = S.sample_scene(rng)
        assert S.parse_caption(s.caption) == s
        assert S.caption(s) == s.caption
        seen.add(s.level)
        if s.level == 3:
            assert s.relation in S.RELATIONS and len(s.objects) == 2
            assert s.objects[0].color != s.objects[1].color
        else:
            assert s.relation is None and len(s.objects) == 1
    assert seen == {1, 2, 3}


def test_grammar():
    assert S.parse_caption("a red circle").level == 1
    s = S.parse_caption("three small striped blue squares left of an orange triangle")
    assert s.objects[0] == S.Obj("square", "blue", "small", "striped", 3)
    assert s.objects[1] == S.Obj("triangle", "orange", None, "plain", 1)
    assert s.relation == "left of" and s.level == 3
    assert S.caption(S.Scene([S.Obj("circle", "orange")])) == "an orange circle"
    for bad in ("a orange circle", "two red circle", "a red circles", "a red car", "a red circle near a blue square"):
        with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
            S.parse_caption(bad)
    attrs = S.attributes(s)
    assert ("texture", 0, "striped") in attrs and ("relation", (0, 1), "left of") in attrs
    assert not any(a[0] == "texture" and a[1] == 1 for a in attrs)


def test_render_size_mode():
    s = S.sample_scene(np.random.default_rng(3), level=3)
    for n in (64, 128):
        im = S.render(s, size=n)
        assert im.mode == "RGB" and im.size == (n, n)


@pytest.fixture(scope="module")
def figures():
    return validate(n=120, seed=1)


def test_truth_scores_high(figures):
    assert figures["truth_all"] >= 0.9
    assert all(v >= 0.85 for v in figures["truth"].values())


@pytest.mark.parametrize("kind", BREAKS)
def test_breaks_score_clearly_lower(figures, kind):
    assert figures["n_breaks"][kind] > 0
    assert figures["breaks"][kind] <= figures["paired_truth"][kind] - 0.1


def test_break_scene_keeps_caption():
    s = S.sample_scene(np.random.default_rng(0), level=3)
    b = break_scene(s, "wrong_relation", np.random.default_rng(0))
    assert b.caption == s.caption and b.relation != s.relation


def test_blank_and_noise_score_low():
    chk = TestbedChecker()
    rng = np.random.default_rng(0)
    caps = [S.sample_scene(rng).caption for _ in range(30)]
    blank = Image.new("RGB", (64, 64), S.BACKGROUND)
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    assert max(chk.score([blank] * 30, caps)) == 0.0
    assert max(chk.score([white] * 30, caps)) == 0.0
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(30)]
    assert np.mean(chk.score(noise, caps)) < 0.2


def test_higher_resolution_images_are_resized():
    s = S.sample_scene(np.random.default_rng(5), level=2)
    assert TestbedChecker().score([S.render(s, size=128)], [s.caption])[0] >= 0.8


def test_out_of_grammar_prompt_scores_zero_or_raises_when_strict():
    im = S.render(S.parse_caption("a red circle"))
    assert TestbedChecker().score([im], ["a red car"]) == [0.0]
    with pytest.raises(ValueError, match="a red car"):
        TestbedChecker(strict=True).score([im], ["a red car"])
    with pytest.raises(ValueError):
        TestbedChecker().score([im], [])


class TestTestbedCheckerContract(ScorerContract):
    def make_scorer(self):
        return TestbedChecker()

    def test_registered(self, scorer, monkeypatch):
        # registration in t2iroute/registry.py is another change; prove it works once added
        from t2iroute import registry

        if registry.type_name("scorers", scorer) is None:
            monkeypatch.setitem(registry._EXTRA["scorers"], "testbed_check", "t2iroute.testbed.checker:TestbedChecker")
        assert registry.type_name("scorers", scorer) == "testbed_check"
        built = registry.build("scorers", {"type": "testbed_check", "resolution": 64})
        assert isinstance(built, TestbedChecker)


# -- issue 23: a checker that sees what the models draw --------------------------------------
from t2iroute.testbed.checker import DEGRADATIONS, agreement, degrade, validate_degraded  # noqa: E402


@pytest.fixture(scope="module")
def degraded():
    return validate_degraded(n=45, seed=2)


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_degraded_truth_still_scores_high_and_breaks_lower(degraded, kind):
    f = degraded[kind]
    assert f["truth"] >= 0.9, f
    for b, v in f["breaks"].items():
        assert v <= f["truth"] - 0.08, (b, f)


def test_degrade_changes_the_image_and_rejects_unknown_kinds():
    s = S.sample_scene(np.random.default_rng(4), level=2)
    im = S.render(s)
    for kind in DEGRADATIONS:
        assert np.asarray(degrade(im, kind, np.random.default_rng(0))).tolist() != np.asarray(im).tolist(), kind
    with pytest.raises(ValueError, match="smudge"):
        degrade(im, "smudge", np.random.default_rng(0))


def test_checker_agrees_with_the_hand_labels():
    """The bundled hand-labelled model outputs: the old fixed-radius checker agreed on 68% of the
    attributes the labels decide and its scores did not correlate with the labels' (r 0.01)."""
    f = agreement()
    assert f["n_images"] == 170
    assert f["decided"]["all_attributes"] >= 0.86, f
    assert f["blank"] >= 0.95 and f["score_corr"] >= 0.5, f
    assert min(f["decided"]["per_attribute"].values()) >= 0.7, f


def test_checker_agrees_with_the_held_out_labels_of_the_current_weights():
    """The second set: 90 images the shipped weights draw, labelled blind and kept out of the
    thresholds' choice (issue 23's goal: >= 90% of the decided attributes)."""
    root = Path(S.__file__).resolve().parents[1] / "data" / "testbed-labels-2"
    f = agreement(root)
    assert f["n_images"] == 90
    assert f["decided"]["all_attributes"] >= 0.90, f
    assert f["blank"] >= 0.95 and f["score_corr"] >= 0.6, f
    both = agreement([root.with_name("testbed-labels"), root])
    assert both["n_images"] == 260


def test_checker_agrees_with_every_held_out_label_of_the_current_weights():
    """The second and third sets together: 162 images of the shipped weights, labelled blind by
    other labellers than the tuning set's (issue 23: >= 150 images, >= 90% of the attributes the
    labels decide); the third set alone too."""
    root = Path(S.__file__).resolve().parents[1] / "data"
    third = agreement(root / "testbed-labels-3")
    assert third["n_images"] == 72 and third["decided"]["all_attributes"] >= 0.90, third
    held_out = agreement([root / "testbed-labels-2", root / "testbed-labels-3"])
    assert held_out["n_images"] == 162
    assert held_out["decided"]["all_attributes"] >= 0.90, held_out
    assert held_out["blank"] >= 0.95 and held_out["score_corr"] >= 0.6, held_out
    assert min(held_out["decided"]["per_attribute"].values()) >= 0.8, held_out


def test_a_small_soft_disc_is_a_circle_not_a_square():
    """The demo router's "a red circle" (seed 0) is a 13 px disc with a soft edge that fills half
    of its box's corners; the first shape rule (filled corners) called it a square."""
    root = Path(S.__file__).resolve().parents[1] / "data" / "testbed-labels-2"
    rows = {r["index"]: r for r in map(json.loads, (root / "labels.jsonl").read_text().splitlines())}
    r = rows[82]
    assert (r["prompt"], r["backend"], r["seed"]) == ("a red circle", "testbed_big_16", 0)
    ck = TestbedChecker()
    (det,) = ck.detect(Image.open(root / r["file"]))
    assert (det["shape"], det["color"]) == ("circle", "red")
    for cap in ("a red circle", "a large red circle", "a small red circle"):  # perfect renders keep both shapes apart
        assert ck.detect(S.render(S.parse_caption(cap)))[0]["shape"] == "circle"
        assert ck.detect(S.render(S.parse_caption(cap.replace("circle", "square"))))[0]["shape"] == "square"


def test_the_red_disc_the_issue_reported_is_credited():
    import json
    from pathlib import Path

    root = Path(S.__file__).resolve().parents[1] / "data" / "testbed-labels"
    rows = [json.loads(x) for x in (root / "labels.jsonl").read_text().splitlines()]
    ck = TestbedChecker()
    for r in rows:
        if r["index"] >= 160 and r["backend"] == "testbed_small_8":  # "a red circle", "a green triangle", seed 0
            assert ck.score_one(Image.open(root / r["file"]), r["prompt"]) == 1.0, r["prompt"]


def test_colour_is_named_by_hue_with_a_margin():
    ck = TestbedChecker(hue_margin=0.3)
    assert ck.colour_name(0.0) == "red" and ck.colour_name(285.0) == "purple"
    assert ck.colour_name(320.0) is None  # magenta: between red and purple
    assert TestbedChecker().colour_name(320.0) in ("red", "purple")  # default margin 0: nearest
    with pytest.raises(ValueError, match="hue_margin"):
        TestbedChecker(hue_margin=1.5)


def test_a_faint_object_is_found_where_a_fixed_radius_missed_it():
    """A soft, paler red disc (every pixel > 60 RGB from the palette red) is still a red circle."""
    s = S.parse_caption("a red circle")
    a = np.asarray(S.render(s), float)
    m = np.linalg.norm(a - np.array(S.COLORS["red"]), axis=-1) < 1
    a[m] = (215, 110, 120)
    im = Image.fromarray(a.astype(np.uint8))
    assert TestbedChecker().score_one(im, "a red circle") == 1.0
