"""Any metric name, in either direction: tables, training, routing, summaries."""

import json

import numpy as np
import pytest

from t2iroute import Router
from t2iroute.cli import main
from t2iroute.errors import TableError
from t2iroute.training.table import pivot, validate_table
from tests.conftest import make_table


def _lower_is_better(n=150):
    """make_table's scores turned into an error metric: lower is better, 'slow' best on hard prompts."""
    t = make_table(n_prompts=n)
    t["score"] = 40.0 - t["score"]
    t["metric"] = "my_error_rate"
    return t


def test_any_metric_name_is_accepted():
    t = make_table()
    t["metric"] = "human_align"
    assert set(validate_table(t).metric) == {"human_align"}


def test_direction_from_table_column_or_config():
    t = _lower_is_better()
    assert pivot(validate_table(t), "my_error_rate").higher_is_better is True  # default
    assert pivot(validate_table(t), "my_error_rate", higher_is_better=False).higher_is_better is False
    t["higher_is_better"] = False
    M = pivot(validate_table(t), "my_error_rate")
    assert M.higher_is_better is False and (M.oriented == -M.scores).all()
    with pytest.raises(TableError, match="higher_is_better=False in the table but the config says True"):
        pivot(validate_table(t), "my_error_rate", higher_is_better=True)
    t.loc[t.index[:3], "higher_is_better"] = True
    with pytest.raises(TableError, match="marked both"):
        validate_table(t)


def test_router_prefers_the_lower_score(tmp_path, capsys):
    path = tmp_path / "err.csv"
    _lower_is_better().to_csv(path, index=False)
    out = tmp_path / "train"
    rc = main(
        [
            "train",
            "data=custom",
            f"data.path={path}",
            "metric=my_error_rate",
            "data.higher_is_better=false",
            "features=[lexical]",
            "predictor=ridge",
            f"out_dir={out}",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    r = Router.load(out / "router")
    assert r.higher_is_better is False and r.manifest["higher_is_better"] is False
    d = r.route("two birds on a wire")  # slow has the LOWEST error on 'two ...' prompts
    assert d.backend == "slow" and d.higher_is_better is False
    q = d.predicted_quality
    assert q["slow"] == min(q.values())  # predictions stay in the metric's own direction
    assert r.route("a cat", lam=1000).backend == "fast"
    # a floor in the metric's own units: the cheapest backend whose predicted error is at most it
    assert r.route("two birds on a wire", quality_floor=q["slow"] + 1e-6).backend == "slow"
    assert r.route("two birds on a wire", quality_floor=max(q.values())).backend == "fast"
    with pytest.raises(ValueError, match="observed range"):  # a floor beyond every score seen is refused
        r.route("two birds on a wire", quality_floor=max(q.values()) + 1)


def test_bench_summary_in_the_metrics_own_direction(tmp_path):
    path = tmp_path / "err.csv"
    t = _lower_is_better(200)
    t["higher_is_better"] = False
    t.to_csv(path, index=False)
    out = tmp_path / "bench"
    rc = main(
        [
            "bench",
            "data=custom",
            f"data.path={path}",
            "metric=my_error_rate",
            "features=[lexical]",
            "predictor=ridge",
            "throughput.enabled=false",
            f"out_dir={out}",
        ]
    )
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["higher_is_better"] is False
    means = {b: v["quality"] for b, v in s["backends"].items()}
    assert s["best_single"]["name"] == min(means, key=means.get)  # the lowest error is the best
    assert s["oracle"]["quality"] <= s["best_single"]["quality"]
    assert s["router"]["cost_saved_pct"] > 10 and s["router"]["quality_gain_at_equal_cost"] >= 0
    curves = json.loads((out / "curves.json").read_text())
    assert np.min(curves["oracle"]["quality"]) < s["best_single"]["quality"]  # own units: errors
    assert (out / "curves.png").is_file()
