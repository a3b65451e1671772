import numpy as np
import pytest

from t2iroute.errors import ConfigError
from t2iroute.features import build_featurizer
from t2iroute.features.embedding import SentenceEmbeddingFeaturizer
from t2iroute.features.lexical import FEATURE_NAMES, LexicalFeaturizer


def test_lexical_names_are_stable_and_counts_right():
    f = LexicalFeaturizer()
    assert f.feature_names_ == list(FEATURE_NAMES)
    X = f.transform(['Two red cats to the left of a blue "STOP" sign, by Greg Rutkowski, artstation'])
    row = dict(zip(f.feature_names_, X[0]))
    assert row["n_number_words"] == 1
    assert row["n_colors"] == 2
    assert row["n_spatial"] >= 1
    assert row["n_quoted"] == 1
    assert row["n_text_words"] == 1
    assert row["n_by_artist"] == 1
    assert row["n_style_terms"] >= 2
    assert row["n_commas"] == 2
    assert X.dtype == np.float32 and X.shape == (1, len(FEATURE_NAMES))
    assert f.transform(["a white wall"])[0][f.feature_names_.index("n_words")] == 3


@pytest.mark.parametrize(
    "prompt",
    ["Two RED cats and a dog, holding hands", "Ⅷ KINGS in ÉCOLE", "İstanbul straße, no people", "", "1 2 3"],
)
def test_lexical_word_counts_and_fractions_by_definition(prompt):
    """The counts as the feature names define them (the featurizer counts all word lists in one
    pass and takes a shortcut for ASCII text: the same numbers)."""
    from t2iroute.features import lexical as L

    row = dict(zip(FEATURE_NAMES, L.lexical_features(prompt)))
    words = L._WORD.findall(prompt.lower())
    for name, words_of in [
        ("n_conjunctions", L.CONJ),
        ("n_number_words", L.NUMBER_WORDS),
        ("n_colors", L.COLORS),
        ("n_attributes", L.ATTRIBUTES),
        ("n_text_words", L.TEXT_WORDS),
        ("n_people", L.PEOPLE),
        ("n_hands_faces", L.HANDS_FACES),
        ("n_negations", L.NEGATION),
    ]:
        assert row[name] == sum(w in words_of for w in words), name
    low = prompt.lower()
    spatial = sum(low.count(p) for p in L.SPATIAL_PHRASES) + sum(w in L.SPATIAL_WORDS for w in words)
    assert row["n_spatial"] == spatial
    letters = [c for c in prompt if c.isalpha()]
    assert row["frac_upper"] == (sum(c.isupper() for c in letters) / len(letters) if letters else 0.0)
    assert row["frac_nonascii"] == (sum(ord(c) > 127 for c in prompt) / len(prompt) if prompt else 0.0)


def test_compose_by_config_and_spec_roundtrip():
    f = build_featurizer({"lexical": {}})
    assert f.feature_names_[0] == "lexical:n_words"
    again = build_featurizer(f.spec())
    assert again.feature_names_ == f.feature_names_
    with pytest.raises(ConfigError, match="unknown featurizer type 'llmx'; did you mean 'llm'"):
        build_featurizer({"llmx": {}})
    with pytest.raises(ConfigError, match="no featurizer"):
        build_featurizer({})


def test_minilm_embeddings_and_disk_cache(tmp_path):
    f = SentenceEmbeddingFeaturizer(cache_dir=str(tmp_path))
    prompts = ["a red car", "a crowded park at dusk with three red kites", "a red car"]
    E = f.transform(prompts)
    assert E.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(E[0], E[2])
    assert (E[0] @ E[1]) < 0.95
    # a new featurizer on the same cache folder never touches the model for cached prompts
    g = SentenceEmbeddingFeaturizer(cache_dir=str(tmp_path), dim=384)

    def boom():
        raise AssertionError("model loaded despite a warm cache")

    g._model = boom
    np.testing.assert_array_equal(g.transform(prompts[:2]), E[:2])
    # a different max_seq_length is a different cache key
    assert SentenceEmbeddingFeaturizer(max_seq_length=128).cache_key() != f.cache_key()


def test_damaged_cache_shard_is_skipped(tmp_path):
    f = SentenceEmbeddingFeaturizer(cache_dir=str(tmp_path))
    E = f.transform(["a cat"])
    folder = tmp_path / f.cache_key()
    (folder / "shard-broken.npz").write_bytes(b"garbage")
    g = SentenceEmbeddingFeaturizer(cache_dir=str(tmp_path))
    np.testing.assert_allclose(g.transform(["a cat"]), E, rtol=1e-6)


def test_unknown_embedding_model_fails_clearly(tmp_path):
    f = SentenceEmbeddingFeaturizer(model=str(tmp_path / "no-such-model"), cache=False)
    with pytest.raises(RuntimeError, match="cannot load sentence-transformers model"):
        f.transform(["a cat"])


def test_int8_embeddings_are_close_and_keyed_apart(tmp_path):
    fp = SentenceEmbeddingFeaturizer(cache_dir=str(tmp_path))
    q8 = SentenceEmbeddingFeaturizer(cache_dir=str(tmp_path), quantize="int8")
    prompts = ["a red car", "a crowded park at dusk with three red kites"]
    a, b = fp.transform(prompts), q8.transform(prompts)
    cos = (a * b).sum(1)
    assert (cos > 0.8).all() and (cos < 0.99999).all()  # close, but really quantized
    assert fp.cache_key() != q8.cache_key()
    assert q8.spec()["quantize"] == "int8"
    with pytest.raises(ValueError, match="quantize"):
        SentenceEmbeddingFeaturizer(quantize="fp4")
