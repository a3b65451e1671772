"""scripts/testbed_report.py sweep: the backend table and early stopping vs fixed budgets, on a sweep
whose answer is known (the README's testbed figures come from this code)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from t2iroute.testbed.scenes import parse_caption, render

ROOT = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location("testbed_report", ROOT / "scripts" / "testbed_report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("testbed_report", mod)
    spec.loader.exec_module(mod)
    return mod


PROMPTS = ["a red circle", "a small blue square", "two green triangles", "a large yellow circle above a red square"]
# backend: (nfe, latency_s, score for each prompt)
FIXED = {"testbed_big_8": (16, 0.2, 0.5), "testbed_big_16": (32, 0.4, 0.7)}


def _write_sweep(d: Path, es_nfe: float, es_score: float, images: bool) -> None:
    rows = []
    for i, p in enumerate(PROMPTS):
        for b, (nfe, lat, q) in {**FIXED, "testbed_big_32_es": (es_nfe, 0.2 + (es_nfe - 16) / 80, es_score)}.items():
            path = None
            if images:
                path = f"img/{b}-{i}.png"
                (d / "img").mkdir(parents=True, exist_ok=True)
                # the early-stopping backend draws a blank canvas for the first prompt, the others draw the scene
                blank = b == "testbed_big_32_es" and i == 0
                im = (
                    Image.new("RGB", (64, 64), (240, 240, 240))
                    if blank
                    else render(parse_caption(p), 64, np.random.default_rng(i))
                )
                im.save(d / path)
            rows.append(
                dict(
                    prompt_id=f"p{i}",
                    prompt=p,
                    backend=b,
                    metric="testbed_check",
                    higher_is_better=True,
                    score=q,
                    cost_s=lat,
                    source="t",
                    seed=0,
                    latency_s=lat,
                    steps_run=int(nfe // 2),
                    nfe=nfe,
                    stopped_early=b.endswith("_es"),
                    image_path=path,
                )
            )
    (d / "quality.parquet").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(d / "quality.parquet" / "part-00000.parquet")


@pytest.mark.parametrize("es_score, expected", [(0.6, 0.0), (0.75, 0.15)])
def test_sweep_figures_interpolate_fixed_budgets_at_equal_nfe_and_latency(tmp_path, es_score, expected):
    _write_sweep(tmp_path, es_nfe=24, es_score=es_score, images=False)  # halfway between 16 and 32 NFE
    out = _report().main(["sweep", "--sweep", str(tmp_path), "--bootstrap", "50", "--out", str(tmp_path / "s.json")])
    (es,) = out["early_stop"]
    assert es["backend"] == "testbed_big_32_es"
    assert es["delta_at_equal_nfe"] == pytest.approx(expected, abs=1e-4)
    assert es["delta_at_equal_latency_s"] == pytest.approx(expected, abs=1e-4)  # latency is linear in NFE here
    lo, hi = es["delta_at_equal_nfe_ci95"]
    assert lo <= es["delta_at_equal_nfe"] <= hi
    tab = {r["backend"]: r for r in out["backends"]}
    assert [r["backend"] for r in out["backends"]] == ["testbed_big_8", "testbed_big_32_es", "testbed_big_16"]
    assert tab["testbed_big_16"]["score_level1"] == pytest.approx(0.7)
    assert "blank_share" not in tab["testbed_big_16"]  # no images saved: no blank figure
    assert (tmp_path / "s.json").exists()


def test_sweep_figures_count_blank_images_when_the_sweep_saved_them(tmp_path):
    _write_sweep(tmp_path, es_nfe=24, es_score=0.6, images=True)
    out = _report().main(["sweep", "--sweep", str(tmp_path), "--bootstrap", "10"])
    tab = {r["backend"]: r for r in out["backends"]}
    assert tab["testbed_big_32_es"]["blank_share"] == pytest.approx(0.25)
    assert tab["testbed_big_16"]["blank_share"] == 0.0
