import json
import os

import pytest
from hydra import compose, initialize_config_dir

from t2iroute.cli import main, register
from t2iroute.paths import CONF_DIR
from tests.conftest import make_table


def _compose(name, overrides):
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_configs_compose():
    cfg = _compose("bench", ["data=cems10k", "metric=nima", "seed=3"])
    assert cfg.metric == "nima" and cfg.seed == 3
    assert cfg.data.path.endswith("quality/cems10k.csv.gz")
    assert list(cfg.features) == ["embedding", "lexical"]
    assert cfg.predictor.type
    cfg = _compose("bench", ["data=agiqa3k", "features=[lexical]", "predictor=ridge"])
    assert cfg.metric == "mos_quality" and list(cfg.features) == ["lexical"]
    assert cfg.data.costs["sd1.5_normal"] == 2.0
    for d in ("agiqa3k", "tifa160"):
        assert os.path.exists(_compose("bench", [f"data={d}"]).data.path)
    cfg = _compose("train", ["data=tifa160", "router.budget=3.0"])
    assert cfg.router.budget == 3.0 and cfg.metric == "human_avg"


def test_bench_end_to_end_on_custom_table(tmp_path, capsys):
    path = tmp_path / "table.parquet"
    make_table(n_prompts=200).to_parquet(path)
    out = tmp_path / "bench"
    rc = main(
        [
            "bench",
            "data=custom",
            f"data.path={path}",
            "features=[lexical]",
            "predictor=lgbm",
            "predictor.params.n_estimators=50",
            "throughput.n_batch=50",
            "throughput.n_single=5",
            f"out_dir={out}",
        ]
    )
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "metric",
        "n_train",
        "n_test",
        "backends",
        "best_single",
        "oracle",
        "router",
        "by_source",
        "route_throughput_prompts_per_s",
        "calibration",
    ):
        assert key in s, key
    for key in (
        "quality_at_best_single_cost",
        "quality_gain_at_equal_cost",
        "cost_to_match_best_single",
        "cost_saved_pct",
        "aiq",
    ):
        assert key in s["router"], key
    assert set(s["by_source"]) == {"A", "B"}
    assert s["n_train"] + s["n_test"] == 200
    assert (out / "curves.png").stat().st_size > 10_000
    # the synthetic table has learnable structure: routing beats the best single backend
    assert s["router"]["cost_saved_pct"] > 10
    printed = json.loads(capsys.readouterr().out)
    assert printed["router"]["cost_saved_pct"] == s["router"]["cost_saved_pct"]


def test_train_writes_a_loadable_artifact(tmp_path, capsys):
    path = tmp_path / "table.csv"
    make_table(n_prompts=150).to_csv(path, index=False)
    out = tmp_path / "train"
    rc = main(
        [
            "train",
            "data=custom",
            f"data.path={path}",
            "features=[lexical]",
            "predictor=ridge",
            "router.budget=0.4",
            f"out_dir={out}",
        ]
    )
    assert rc == 0
    from t2iroute import Router

    r = Router.load(out / "router")
    assert r.lam > 0 and r.manifest["data"]["metric"] == "clip"
    assert r.manifest["metrics"]["at_default_policy"]["test_mean_cost"] <= 0.6


@pytest.mark.parametrize(
    "override, msg",
    [
        ("data.path=/nonexistent/table.csv", "no such file"),
        ("metric=nima", "metric 'nima' not in the table"),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, override, msg):
    path = tmp_path / "table.csv"
    make_table(n_prompts=40).to_csv(path, index=False)
    rc = main(
        ["bench", "data=custom", f"data.path={path}", "features=[lexical]", override, f"out_dir={tmp_path / 'o'}"]
    )
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["--help"]) == 0


def _records(out):
    recs = [json.loads(ln) for ln in (out / "generations.jsonl").read_text().splitlines()]
    return {r["index"]: r for r in recs}


def test_generate_budget_resumed_decides_as_an_uninterrupted_run(tiny_artifact, tmp_path, capsys, monkeypatch):
    """budget= over 24 prompts in chunks of 5: lambda is calibrated once on all the run's prompts
    (not per chunk), kept with the run, and a run stopped after 7 images then resumed makes the
    same decisions and the same images as one that was never stopped."""
    import t2iroute.cli.route as cli_route
    from t2iroute.cli.checks import bad

    words = [
        "a cat",
        "two red cars left of a tree",
        "a bowl",
        "three dogs on a sofa",
        "a blue kite",
        "a castle at dusk with five towers",
        "a cup",
        "two birds",
        "a robot holding a sign that says hi",
        "an apple",
        "four green boats",
        "a lamp",
    ]
    prompts = [f"{w} #{i}" for i, w in enumerate(words * 2)]
    args = ["generate", *prompts, f"artifact={tiny_artifact}", "budget=0.5", "seed=1", "chunk_size=5"]
    whole = tmp_path / "whole"
    assert main([*args, f"out_dir={whole}"]) == 0
    capsys.readouterr()
    # the same run, stopped after 7 images (the 8th cannot be written), then run again
    resumed = tmp_path / "resumed"
    real, n = cli_route.write_image, {"images": 0}

    def failing_write(image, out, fmt, key="out"):
        if n["images"] == 7:
            raise bad(key, out, "disk full (simulated)")
        n["images"] += 1
        return real(image, out, fmt, key)

    monkeypatch.setattr(cli_route, "write_image", failing_write)
    assert main([*args, f"out_dir={resumed}"]) == 2
    monkeypatch.setattr(cli_route, "write_image", real)
    assert len(_records(resumed)) == 7
    assert main([*args, f"out_dir={resumed}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_finished"] == 7 and summary["generated"] == 17
    a, b = _records(whole), _records(resumed)
    assert sorted(a) == sorted(b) == list(range(24))
    lams = {r["decision"]["lambda"] for r in a.values()}
    assert len(lams) == 1  # one lambda for the whole run, not one per chunk
    assert {r["decision"]["lambda"] for r in b.values()} == lams
    assert [a[i]["decision"]["backend"] for i in range(24)] == [b[i]["decision"]["backend"] for i in range(24)]
    assert all(a[i]["decision"]["policy"] == b[i]["decision"]["policy"] for i in range(24))
    assert all((whole / a[i]["file"]).read_bytes() == (resumed / b[i]["file"]).read_bytes() for i in range(24))
    assert len({r["decision"]["backend"] for r in a.values()}) > 1  # the budget really mixes backends
