"""Every shipped config composes through the entry configs and builds into its object."""

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from t2iroute.paths import CONF_DIR
from tests.test_cli import _compose

CONF = Path(CONF_DIR)
# column blocks as the default features (MiniLM 384-d + lexical) lay them out, without loading MiniLM
BLOCKS = {"embedding": slice(0, 384), "lexical": slice(384, 408)}


def _names(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", _names("backends"))
def test_backend_configs_build(name):
    from t2iroute.backends import build_backend

    cfg = _compose("sweep", [f"backends=[{name}]"])
    spec = OmegaConf.to_container(cfg.backends, resolve=True)[name]
    b = build_backend(name, spec)  # validates every key; no model loads until the first image
    assert b.name == name


@pytest.mark.parametrize("name", _names("predictor"))
def test_predictor_configs_build(name):
    from t2iroute.predictors import build_predictor, resolve_blocks

    for entry in ("bench", "train"):
        cfg = _compose(entry, ["data=agiqa3k", f"predictor={name}"])
        spec = resolve_blocks(OmegaConf.to_container(cfg.predictor, resolve=True), BLOCKS)
        if name == "prior":  # its training-only keys resolve against the backends and features, as train does
            from t2iroute.complexity import COUNTS
            from t2iroute.training.prior import prior_spec

            feats = type("F", (), {"feature_names_": [f"lexical:{c}" for c in COUNTS]})()
            spec = prior_spec(spec, ["sd15_10", "sd15_50"], None, feats)
        p = build_predictor(spec)
        assert p.type_name == name


def test_auto_candidates_match_the_code_default():
    from t2iroute.predictors.auto import DEFAULT_CANDIDATES

    cfg = OmegaConf.to_container(_compose("bench", ["data=agiqa3k", "predictor=auto"]).predictor)
    assert cfg["candidates"] == DEFAULT_CANDIDATES


@pytest.mark.parametrize("name", _names("data"))
def test_data_configs_build(name, tmp_path):
    from t2iroute.training.train import load_matrix
    from tests.conftest import make_table

    overrides = [f"data={name}"]
    if name == "custom":
        make_table().to_csv(tmp_path / "t.csv", index=False)
        overrides.append(f"data.path={tmp_path / 't.csv'}")
    cfg = _compose("bench", overrides)
    if cfg.data.path is None:  # data=none: no table (predictor=prior trains without one)
        assert name == "none" and cfg.data.metric == "prior"
        return
    if not os.path.exists(cfg.data.path):
        pytest.skip(f"{cfg.data.path} is not here (../shared/data)")
    M = load_matrix(cfg.data, str(cfg.metric))
    assert len(M) > 0 and len(M.backends) == len(M.costs) >= 2


@pytest.mark.parametrize("name", _names("scorer"))
def test_scorer_configs_build(name):
    from t2iroute.scoring import build_scorer

    cfg = _compose("generate", [f"scorer={name}"])
    s = build_scorer(OmegaConf.to_container(cfg.scorer, resolve=True))  # weights load on first use
    assert s.metric and isinstance(s.higher_is_better, bool)


@pytest.mark.parametrize("name", _names("features"))
def test_feature_configs_build(name):
    from t2iroute.features import build_featurizer

    cfg = _compose("bench", ["data=agiqa3k", f"features=[{name}]"])
    f = build_featurizer(OmegaConf.to_container(cfg.features, resolve=True))
    assert [p.name for p in f.parts] == [name]


@pytest.mark.parametrize("entry", ["bench", "train", "sweep", "route", "generate"])
def test_entry_configs_share_the_hydra_settings(entry):
    cfg = _compose(entry, ["data=agiqa3k"] if entry in ("bench", "train") else [])
    from t2iroute.cli.schema import node

    entry_node = node(entry)  # the command's typed config as stored for Hydra
    assert "hydra" not in entry_node
    dflt = entry_node["defaults"]
    assert any(isinstance(d, dict) and "hydra" in d for d in dflt), dflt
    assert cfg is not None


def test_run_folder_keeps_its_config(tmp_path):
    from t2iroute.cli import main
    from tests.conftest import make_table

    make_table().to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "run"
    assert (
        main(
            [
                "bench",
                "data=custom",
                f"data.path={tmp_path / 't.csv'}",
                "features=[lexical]",
                "predictor=knn",
                "throughput.enabled=false",
                f"out_dir={out}",
            ]
        )
        == 0
    )
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.predictor.type == "knn" and saved.data.path == str(tmp_path / "t.csv")
    assert saved.out_dir == str(out)
