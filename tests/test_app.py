"""The Streamlit app, driven by streamlit.testing.v1.AppTest (no browser)."""

import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from t2iroute.app import APP_FILE, BENCH_PAGE, ROUTE_PAGE, logic
from t2iroute.cli import main
from tests.conftest import make_table

TIMEOUT = 120


def _app(monkeypatch, artifact, bench=None) -> AppTest:
    monkeypatch.setenv("T2IROUTE_APP_ARTIFACT", str(artifact))
    if bench is not None:
        monkeypatch.setenv("T2IROUTE_APP_BENCH", str(bench))
    at = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def _metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def test_route_one_prompt_then_change_budget(monkeypatch, tiny_artifact):
    at = _app(monkeypatch, tiny_artifact)
    assert not _errors(at)
    m = _metrics(at)
    assert m["Routed to"] in {"fast", "mid", "slow"} and m["Policy"] == "lam 0"
    assert len(at.get("vega_lite_chart")) == 2  # predicted quality and cost of every backend
    at.text_area(key="prompts").input("two birds on a wire").run()
    assert at.text[0].value == "Decision for: two birds on a wire"
    assert _metrics(at)["Routed to"] == "slow"  # the synthetic table: 'slow' wins on 'two ...' prompts
    at.number_input(key="lam").set_value(1000.0).run()
    assert _metrics(at)["Routed to"] == "fast"  # a huge lambda: the cheapest
    at.radio(key="budget_mode").set_value("target mean cost").run()
    at.number_input(key="budget").set_value(0.11).run()
    assert _metrics(at)["Routed to"] == "fast" and not at.exception
    assert _metrics(at)["Policy"].startswith("budget 0.11 lambda")


def test_per_prompt_policies(monkeypatch, tiny_artifact):
    """quality floor and max cost, chosen in the sidebar, decide per prompt."""
    at = _app(monkeypatch, tiny_artifact)
    at.text_area(key="prompts").input("two birds on a wire").run()
    at.radio(key="budget_mode").set_value("max cost").run()
    at.number_input(key="max_cost").set_value(0.6).run()  # 'slow' (cost ~1.0) is over the cap
    m = _metrics(at)
    assert m["Routed to"] == "mid" and m["Policy"] == "max_cost 0.6", m
    at.radio(key="budget_mode").set_value("quality floor").run()
    at.number_input(key="quality_floor").set_value(-1000.0).run()  # every backend reaches it: the cheapest
    assert _metrics(at)["Routed to"] == "fast"
    at.number_input(key="quality_floor").set_value(1000.0).run()  # none does: the best predicted
    assert _metrics(at)["Routed to"] == "slow" and not at.exception


def test_many_prompts_table_and_counts(monkeypatch, tiny_artifact):
    at = _app(monkeypatch, tiny_artifact)
    at.text_area(key="prompts").input("a cat\ntwo birds on a wire\n\nthree apples on a table\n").run()
    m = _metrics(at)
    assert m["Prompts"] == "3"
    table = at.dataframe[0].value
    assert list(table.prompt) == ["a cat", "two birds on a wire", "three apples on a table"]
    assert set(table.backend) <= {"fast", "mid", "slow"}
    at.selectbox(key="pick").set_value(1).run()
    assert not at.exception


def test_generate_baseline_and_routed_side_by_side(monkeypatch, tiny_artifact):
    at = _app(monkeypatch, tiny_artifact)
    at.text_area(key="prompts").input("a cat").run()
    assert at.selectbox(key="baseline").value == "slow"  # the most expensive backend
    assert at.selectbox(key="scorer").value == "clip_tiny"  # tiny backends: the offline scorer
    at.button(key="generate").click().run()
    assert not at.exception and not _errors(at)
    assert len(at.get("image")) == 2
    text = " ".join(m.value for m in at.markdown)
    assert "Baseline: `slow`" in text and f"Routed: `{_metrics(at)['Routed to']}`" in text
    assert text.count("steps run") == 2 and text.count("early stop") == 2 and text.count("clip_tiny") == 2
    assert "steps run **2/2**" in text or "steps run **4/4**" in text or "/8**" in text
    # the results stay on screen across reruns and go when the prompt changes
    at.number_input(key="seed").set_value(0).run()
    assert len(at.get("image")) == 2
    at.text_area(key="prompts").input("a dog").run()
    assert len(at.get("image")) == 0


@pytest.mark.parametrize(
    "prompt, msg",
    [
        ("", "no prompt"),
        ("   \n  ", "no prompt"),
        ("x" * 10_000, "10000 characters"),
    ],
)
def test_bad_prompt_shows_error_and_app_recovers(monkeypatch, tiny_artifact, prompt, msg):
    at = _app(monkeypatch, tiny_artifact)
    at.text_area(key="prompts").input(prompt).run()
    assert not at.exception
    assert any(msg in e for e in _errors(at)), _errors(at)
    at.text_area(key="prompts").input("a cat").run()
    assert not _errors(at) and _metrics(at)["Routed to"]


def test_missing_and_damaged_artifact(monkeypatch, tiny_artifact, tmp_path):
    at = _app(monkeypatch, tmp_path / "nowhere")
    assert any("no such folder" in e for e in _errors(at)) and not at.exception
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_artifact, damaged)
    (damaged / "manifest.json").write_text("{not json")
    at.text_input(key="artifact").input(str(damaged)).run()
    assert any("manifest.json is damaged" in e for e in _errors(at))
    at.text_input(key="artifact").input("").run()
    assert any("no router artifact given" in e for e in _errors(at))
    at.text_input(key="artifact").input(str(tiny_artifact)).run()  # usable again
    assert not _errors(at) and _metrics(at)["Routed to"]


def test_artifact_without_backend_configs(monkeypatch, routeonly_artifact):
    at = _app(monkeypatch, routeonly_artifact)
    assert _metrics(at)["Routed to"] and not _errors(at)
    assert any("can route but not generate" in w.value for w in at.warning)
    assert len(at.button) == 1  # Route only: no Generate button


def test_generate_failure_is_an_error_box(monkeypatch, tiny_artifact, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifact, broken)
    m = json.loads((broken / "manifest.json").read_text())
    for b in m["backends"]:
        b["spec"]["model"] = str(tmp_path / "no-such-model")
    from t2iroute.router.artifact import manifest_digest

    m["manifest_sha256"] = manifest_digest(m)  # as its publisher would write it
    (broken / "manifest.json").write_text(json.dumps(m))
    at = _app(monkeypatch, broken)
    at.button(key="generate").click().run()
    assert not at.exception
    errs = _errors(at)
    assert errs and "Cannot generate" in errs[0] and "no-such-model" in errs[0]
    at.text_area(key="prompts").input("a dog").run()
    assert _metrics(at)["Routed to"]


def test_a_scorer_that_cannot_load_is_an_error_box_before_any_image(monkeypatch, tiny_artifact):
    from t2iroute.router.core import Router

    made = []
    real = Router.generate
    monkeypatch.setattr(Router, "generate", lambda self, *a, **k: made.append(a) or real(self, *a, **k))
    at = _app(monkeypatch, tiny_artifact)
    at.selectbox(key="scorer").select("clip").run()  # open_clip's weights tag: not on this machine
    at.button(key="generate").click().run()
    assert not at.exception
    errs = _errors(at)
    assert errs and "Cannot generate" in errs[0] and "scorer" in errs[0] and "clip" in errs[0], errs
    assert made == [] and "generated" not in at.session_state


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    make_table(n_prompts=200).to_parquet(tmp / "table.parquet")
    rc = main(
        [
            "bench",
            "data=custom",
            f"data.path={tmp / 'table.parquet'}",
            "features=[lexical]",
            "predictor=ridge",
            "throughput.enabled=false",
            f"out_dir={tmp / 'out'}",
        ]
    )
    assert rc == 0
    return tmp / "out"


def test_bench_page(monkeypatch, tiny_artifact, bench_dir, tmp_path):
    at = _app(monkeypatch, tiny_artifact, bench=bench_dir)
    at.switch_page(str(BENCH_PAGE)).run()
    assert not at.exception and not _errors(at)
    summary = json.loads((bench_dir / "summary.json").read_text())
    m = _metrics(at)
    assert m["Cost saved at equal quality"] == f"{summary['router']['cost_saved_pct']:.1f}%"
    assert len(at.get("vega_lite_chart")) == 1
    at.multiselect(key="series").set_value(["router (each lambda)"]).run()
    at.checkbox(key="log_x").check().run()
    assert not at.exception and len(at.get("vega_lite_chart")) == 1
    at.text_input(key="bench_dir").input(str(tmp_path / "none")).run()
    assert any("no such folder" in e for e in _errors(at))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "summary.json").write_text("{}")
    at.text_input(key="bench_dir").input(str(tmp_path / "half")).run()
    assert any("curves.json is missing" in e for e in _errors(at))
    at.switch_page(str(ROUTE_PAGE)).run()
    assert _metrics(at)["Routed to"]


def test_logic_helpers():
    with pytest.raises(TypeError, match="prompts must be text"):
        logic.parse_prompts(b"bytes")
    assert logic.parse_prompts(" a \n\n b ") == ["a", "b"]
    assert "clip_tiny" in logic.scorer_names()


@pytest.fixture(scope="module")
def domain_artifact(tmp_path_factory):
    """The tiny router with what training records: the metric's observed range and the domain."""
    from t2iroute.router.domain import Domain
    from t2iroute.training.table import pivot
    from tests.conftest import make_tiny_router

    r = make_tiny_router()
    M = pivot(make_table(), "clip")
    r.domain = Domain.fit(r.featurizer.transform(list(M.prompts)), featurizer=r.featurizer)
    r.metric_range = {"observed": [float(M.scores.min()), float(M.scores.max())]}
    path = tmp_path_factory.mktemp("domain") / "router"
    r.save(path)
    return path


FAR = "Ωµ∑ xyzzy quux frobnicate " * 8


def test_out_of_domain_prompt_shows_a_warning(monkeypatch, domain_artifact):
    at = _app(monkeypatch, domain_artifact)
    at.text_area(key="prompts").input("two birds number 3").run()
    assert not any("Out of domain" in w.value for w in at.warning)
    at.text_area(key="prompts").input(FAR).run()
    assert not at.exception and _metrics(at)["Routed to"]  # still routed, with a word of warning
    warns = [w.value for w in at.warning if "Out of domain" in w.value]
    assert warns and "nearest training prompt" in warns[0]
    at.text_area(key="prompts").input(f"two birds number 3\n{FAR}").run()
    warns = [w.value for w in at.warning if "Out of domain" in w.value]
    assert warns and "1 of 2 prompts" in warns[0] and "#2" in warns[0]
    assert list(at.dataframe[0].value.out_of_domain) == [False, True]


def test_quality_floor_outside_the_range_is_an_error_box(monkeypatch, domain_artifact):
    at = _app(monkeypatch, domain_artifact)
    at.radio(key="budget_mode").set_value("quality floor").run()
    assert not _errors(at) and _metrics(at)["Routed to"]  # the default floor lies in the range
    at.number_input(key="quality_floor").set_value(1000.0).run()
    errs = _errors(at)
    assert not at.exception and errs and "quality_floor=1000 is outside the metric's observed range" in errs[0]


def test_the_default_scorer_is_the_backends_own_offline_metric():
    from types import SimpleNamespace

    from t2iroute.app import logic

    testbed = SimpleNamespace(backend_specs={"a": {"model": "testbed:big"}, "b": {"model": "testbed:small"}})
    tiny = SimpleNamespace(backend_specs={"a": {"model": "tiny"}})
    other = SimpleNamespace(backend_specs={"a": {"model": "stabilityai/sd-turbo"}})
    assert [logic.default_scorer(r) for r in (testbed, tiny, other)] == ["testbed_check", "clip_tiny", None]


def test_rating_the_side_by_side_images_records_feedback(monkeypatch, tiny_artifact, tmp_path):
    from t2iroute.router.decisions import read_log

    log_dir = tmp_path / "log"
    monkeypatch.setenv("T2IROUTE_APP_LOG_DIR", str(log_dir))
    at = _app(monkeypatch, tiny_artifact)
    at.text_area(key="prompts").input("a cat").run()
    at.button(key="generate").click().run()
    assert not at.exception and not _errors(at)
    at.number_input(key="rate_baseline").set_value(0.30)
    at.number_input(key="rate_routed").set_value(0.40)
    at.radio(key="rate_better").set_value("baseline")  # contradicts the scores: they swap around the mean
    next(b for b in at.button if b.label == "Record feedback").click().run()
    assert not at.exception and not _errors(at), _errors(at)
    assert any("Recorded feedback" in s.value for s in at.success)
    df = read_log(log_dir).set_index("id")
    gen = at.session_state["generated"]
    b, r = df.loc[gen["baseline"].id], df.loc[gen["routed"].id]
    assert b.backend == "slow" and r.backend == gen["routed"].backend
    assert b.score_user > r.score_user and b.score_user + r.score_user == pytest.approx(0.70)
    # rated again "as scored": the same ids, replaced (idempotent per source), no new rows
    at.radio(key="rate_better").set_value("as scored")
    next(b for b in at.button if b.label == "Record feedback").click().run()
    df = read_log(log_dir).set_index("id")
    assert len(df) == 2 and df.loc[gen["routed"].id].score_user == pytest.approx(0.40)


def test_without_a_log_folder_there_is_nothing_to_rate(monkeypatch, tiny_artifact):
    monkeypatch.delenv("T2IROUTE_APP_LOG_DIR", raising=False)
    at = _app(monkeypatch, tiny_artifact)
    at.text_area(key="prompts").input("a cat").run()
    at.button(key="generate").click().run()
    assert not [b for b in at.button if b.label == "Record feedback"]
    assert any("decision log folder" in c.value for c in at.caption)


def test_preference_helpers():
    assert logic.apply_preference([0.3, 0.4], "as scored", 0.1) == [0.3, 0.4]
    assert logic.apply_preference([0.3, 0.4], "routed", 0.1) == [0.3, 0.4]  # already agrees
    assert logic.apply_preference([0.3, 0.4], "baseline", 0.1) == pytest.approx([0.4, 0.3])
    assert logic.apply_preference([0.3, 0.4], "the same", 0.1) == pytest.approx([0.35, 0.35])
    with pytest.raises(ValueError, match="preference 'worse'"):
        logic.apply_preference([0.3, 0.4], "worse", 0.1)
