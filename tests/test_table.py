import json

import numpy as np
import pandas as pd
import pytest

from t2iroute.errors import TableError
from t2iroute.training.table import pivot, read_table, split_prompts, validate_table


def test_read_csv_gz_and_parquet_roundtrip(table, tmp_path):
    table.to_csv(tmp_path / "t.csv.gz", index=False)
    table.to_parquet(tmp_path / "t.parquet")
    a = read_table(tmp_path / "t.csv.gz")
    b = read_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.drop(columns=["score"]), "missing column"),
        (lambda d: d.iloc[:0], "empty"),
        (lambda d: d.assign(score=d.score.astype(object).where(d.index != 3, "abc")), "non-numeric or NaN"),
        (lambda d: d.assign(score=d.score.where(d.index != 5, np.nan)), "non-numeric or NaN"),
        (lambda d: pd.concat([d, d.iloc[:2]]), "duplicate"),
        (lambda d: d.assign(cost_s=-1.0), "negative"),
    ],
)
def test_validation_errors_name_the_problem(table, mutate, message):
    with pytest.raises(TableError, match=message):
        validate_table(mutate(table), name="mytable.csv")
    with pytest.raises(TableError, match="mytable.csv"):
        validate_table(mutate(table), name="mytable.csv")


def test_missing_and_garbled_files(tmp_path):
    with pytest.raises(TableError, match="no such file"):
        read_table(tmp_path / "nope.csv")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(TableError, match="cannot be read"):
        read_table(bad)
    with pytest.raises(TableError, match="unknown format"):
        (tmp_path / "x.xlsx").write_text("x")
        read_table(tmp_path / "x.xlsx")


def test_pivot_keeps_incomplete_and_uses_median_cost(table, caplog):
    t = table[~((table.prompt_id == "p3") & (table.backend == "slow"))]
    with caplog.at_level("INFO"):
        M = pivot(t, "clip")
    p3 = list(M.prompt_ids).index("p3")
    assert not M.complete[p3] and M.complete.sum() == 119 and np.isnan(M.scores[p3, M.backends.index("slow")])
    assert "1 of 120 prompts miss a backend" in caplog.text
    assert M.scores.shape == (120, 3)
    assert M.backends == ["fast", "mid", "slow"]
    med = t[t.backend == "slow"].cost_s.median()
    assert M.costs[M.backends.index("slow")] == pytest.approx(med)
    assert M.cost_origin["slow"] == "table median"


def test_pivot_costs_from_config_when_table_has_none(table):
    t = table.assign(cost_s=np.nan)
    with pytest.raises(TableError, match="no cost_s"):
        pivot(t, "clip")
    M = pivot(t, "clip", costs={"fast": 1, "mid": 2, "slow": 3})
    assert list(M.costs) == [1, 2, 3] and set(M.cost_origin.values()) == {"config"}


def test_pivot_unknown_metric_or_backend(table):
    with pytest.raises(TableError, match="metric 'nima' not in the table"):
        pivot(table, "nima")
    with pytest.raises(TableError, match="backend\\(s\\) \\['zzz'\\]"):
        pivot(table, "clip", backends=["fast", "zzz"])


def test_pivot_averages_seeds():
    rows = [
        dict(prompt_id="a", prompt="x", backend=b, metric="clip", score=s, cost_s=1.0, source="S", seed=k)
        for b in ("b1", "b2")
        for k, s in enumerate((1.0, 3.0))
    ]
    M = pivot(validate_table(pd.DataFrame(rows)), "clip")
    assert M.scores.tolist() == [[2.0, 2.0]]


def test_splits_are_seeded_stratified_and_leak_free():
    prompts = np.array([f"prompt {i % 150}" for i in range(300)] + ["Prompt  7 ", "PROMPT 7"])
    sources = np.array(["A"] * 200 + ["B"] * 100 + ["A", "B"])
    parts = split_prompts(prompts, sources, fractions=(0.7, 0.1, 0.2), seed=3)
    again = split_prompts(prompts, sources, fractions=(0.7, 0.1, 0.2), seed=3)
    other = split_prompts(prompts, sources, fractions=(0.7, 0.1, 0.2), seed=4)
    assert all((a == b).all() for a, b in zip(parts, again))
    assert not all(len(a) == len(b) and (a == b).all() for a, b in zip(parts, other))
    allidx = np.concatenate(parts)
    assert sorted(allidx) == list(range(len(prompts)))
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    texts = [{norm(p) for p in prompts[ix]} for ix in parts]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    # stratified: each source appears in test in roughly its share
    test_src = sources[parts[2]]
    assert 0.5 < (test_src == "A").mean() < 0.85


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        split_prompts(np.array(["a"]), np.array(["s"]), fractions=(0.5, 0.2))


SHARED = __import__("t2iroute.paths", fromlist=["shared"]).shared


@pytest.mark.parametrize(
    "name, n_prompts, n_complete, n_backends",
    [("cems10k", 10_000, 10_000, 4), ("agiqa3k", 300, 287, 10), ("tifa160", 160, 160, 5)],
)
def test_real_tables_load(name, n_prompts, n_complete, n_backends):
    from pathlib import Path

    from t2iroute.paths import bundled

    path = Path(SHARED(f"quality/{name}.csv.gz"))
    if name != "cems10k":
        path = Path(bundled(f"quality/{name}.csv.gz"))  # bundled with the package
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/data is not beside this checkout)")
    t = read_table(path)
    metric = {"cems10k": "clip", "agiqa3k": "mos_quality", "tifa160": "human_avg"}[name]
    costs = None if name == "cems10k" else {b: 1.0 for b in t.backend.unique()}
    M = pivot(t, metric, costs=costs)
    assert M.scores.shape == (n_prompts, n_backends) and M.complete.sum() == n_complete


# --- the optional columns: a table of prompt_id, prompt, backend, metric, score only -------------------


def _bare(table):
    return table.drop(columns=["cost_s", "source"])


def test_source_and_cost_are_optional(table):
    t = validate_table(_bare(table), name="bare.csv")
    assert set(t.source) == {"table"} and t.cost_s.isna().all()
    M = pivot(t, "clip", costs={"fast": 1, "mid": 2, "slow": 3})
    assert list(M.costs) == [1, 2, 3] and set(M.sources) == {"table"}
    tr, va, te = split_prompts(M.prompts, M.sources, seed=0)
    assert len(tr) + len(va) + len(te) == len(M)
    # still required: the five that carry the data
    with pytest.raises(TableError, match=r"missing column\(s\) \['backend'\].*cost_s and source are optional"):
        validate_table(_bare(table).drop(columns=["backend"]), name="bare.csv")


def test_no_cost_anywhere_is_one_error_naming_the_backends_and_the_fix(table):
    t = validate_table(_bare(table), name="bare.csv")
    with pytest.raises(TableError) as e:
        pivot(t, "clip", costs={"fast": 1}, name="bare.csv")
    msg = str(e.value)
    assert "bare.csv" in msg and "['mid', 'slow'] have no cost" in msg and "\n" not in msg
    assert "data.costs={mid: <cost per image>, slow: <cost per image>}" in msg and "cost_s column" in msg
    with pytest.raises(TableError, match="data.costs.fast='abc': a cost must be a number"):
        pivot(t, "clip", costs={"fast": "abc", "mid": 1, "slow": 2}, name="bare.csv")


def test_backend_config_costs_fill_what_table_and_data_costs_leave(table, tmp_path):
    from t2iroute.training.train import load_matrix

    path = tmp_path / "bare.csv"
    _bare(table).to_csv(path, index=False)
    specs = {
        "fast": {"type": "diffusers", "model": "tiny", "cost_s": 0.25},
        "slow": {"type": "openai_images", "cost": 4.0},
        "mid": {"type": "diffusers", "model": "tiny"},
    }
    M = load_matrix({"path": str(path), "costs": {"mid": 1.5}}, "clip", specs)
    assert dict(zip(M.backends, M.costs)) == {"fast": 0.25, "mid": 1.5, "slow": 4.0}
    assert M.cost_origin == {"fast": "backend config", "mid": "config", "slow": "backend config"}
    with pytest.raises(TableError, match=r"\['mid'\] have no cost"):
        load_matrix({"path": str(path), "costs": {}}, "clip", specs)
    # the table's own costs come before a backend config's default
    table.to_csv(path, index=False)
    M = load_matrix({"path": str(path)}, "clip", specs)
    assert M.cost_origin["fast"] == "table median" and M.costs[0] == pytest.approx(0.1, rel=0.05)


def test_bench_and_train_on_a_five_column_table(table, tmp_path, capsys):
    from t2iroute import Router
    from t2iroute.cli import main

    path = tmp_path / "bare.csv"
    _bare(table).to_csv(path, index=False)
    fast = ["features=[lexical]", "predictor=ridge", "throughput.enabled=false"]
    capsys.readouterr()
    rc = main(["bench", "data=custom", f"data.path={path}", *fast, f"out_dir={tmp_path / 'b0'}"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "have no cost" in err[0] and "data.costs={" in err[0], err
    costs = "data.costs={fast: 0.1, mid: 0.5, slow: 1.0}"
    assert main(["bench", "data=custom", f"data.path={path}", costs, *fast, f"out_dir={tmp_path / 'b'}"]) == 0
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert set(s["by_source"]) == {"table"} and s["cost_origin"] == {b: "config" for b in ("fast", "mid", "slow")}
    assert (
        main(
            [
                "train",
                "data=custom",
                f"data.path={path}",
                costs,
                "features=[lexical]",
                "predictor=ridge",
                f"out_dir={tmp_path / 't'}",
            ]
        )
        == 0
    )
    r = Router.load(tmp_path / "t" / "router")
    assert dict(zip(r.backend_names, r.costs)) == {"fast": 0.1, "mid": 0.5, "slow": 1.0}
    # train: the backend configs' costs fill what data.costs leaves
    tiny = "type: diffusers, model: tiny, steps: 2, height: 64, width: 64"
    assert (
        main(
            [
                "train",
                "data=custom",
                f"data.path={path}",
                "data.costs={mid: 0.5}",
                "features=[lexical]",
                "predictor=ridge",
                f"+backends.fast={{{tiny}, cost_s: 0.2}}",
                "+backends.slow={type: openai_images, model: m, base_url: 'http://127.0.0.1:9/v1', cost: 2}",
                f"out_dir={tmp_path / 't2'}",
            ]
        )
        == 0
    )
    r = Router.load(tmp_path / "t2" / "router")
    assert dict(zip(r.backend_names, r.costs)) == {"fast": 0.2, "mid": 0.5, "slow": 2.0}
    assert r.manifest["data"]["cost_origin"] == {"fast": "backend config", "mid": "config", "slow": "backend config"}
