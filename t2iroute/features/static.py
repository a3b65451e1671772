"""Static token embeddings: a prompt's vector is the mean of its tokens' vectors (no transformer).

The vectors are WordLlama's ``l2_supercat`` (256 dimensions, trained so that averaged token
vectors rank sentences like a sentence encoder; Matryoshka-trained, so the first 64 or 128
columns also work). They ship inside the ``wordllama`` wheel on PyPI (MIT, 16 MB of float16), so
they install offline and load in about a tenth of a second. We read the two files from the
installed package ourselves (``safetensors`` + ``tokenizers``): ``WordLlama.load()`` would try to
download its tokenizer file from the Hugging Face hub (wordllama 0.4 looks for it in a folder the
wheel does not have), and loading a router never contacts a server.

Why these and not vectors distilled from the bundled MiniLM: WordLlama's were trained for this
use on far more text than a distillation here would see, and keeping them a dependency keeps a
16 MB file out of this repository. A prompt embeds in microseconds: routing a batch is bound by the
predictor, not the featurizer (``docs/predictors.md``, static embeddings).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Sequence

import numpy as np

from t2iroute.errors import ConfigError

#: The vector sets this featurizer reads: name -> (weights file, tokenizer file) in the package.
VECTORS = {
    "wordllama:l2_supercat": ("weights/l2_supercat_256.safetensors", "tokenizers/l2_supercat_tokenizer_config.json"),
}
MAX_DIM = 256
_LOADED: dict[str, tuple[np.ndarray, Any]] = {}


def _load(vectors: str) -> tuple[np.ndarray, Any]:
    """(float32 vocabulary x 256 matrix, tokenizer) of a shipped vector set, loaded once per process."""
    if vectors in _LOADED:
        return _LOADED[vectors]
    try:
        import wordllama  # noqa: F401 -- only its package folder is read
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError(
            f"static featurizer: vectors '{vectors}' come with the wordllama package: "
            "pip install 't2iroute[static]' (or wordllama)"
        ) from e
    weights, tok = VECTORS[vectors]
    root = resources.files("wordllama")
    tensors = load_file(str(root / weights))
    matrix = np.ascontiguousarray(next(iter(tensors.values())), dtype=np.float32)
    tokenizer = Tokenizer.from_file(str(root / tok))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    if matrix.ndim != 2 or matrix.shape[1] < MAX_DIM:
        raise ValueError(f"static featurizer: {vectors} holds a {matrix.shape} matrix, expected (vocabulary, 256)")
    _LOADED[vectors] = (matrix, tokenizer)
    return _LOADED[vectors]


class StaticEmbeddingFeaturizer:
    """Mean of the prompt's token vectors, the first ``dim`` columns, L2-normalized.

    ``features=[static,lexical]``: a text-embedding block like ``embedding``'s (predictors that
    read ``block: embedding`` read this one when no ``embedding`` part is configured). The spec
    names the vector set (one of :data:`VECTORS`, never a path) and ``dim`` (1-256).
    """

    name = "static"
    #: predictors' ``block: embedding`` resolves to this part when there is no ``embedding`` part
    text_embedding = True
    LOCAL_KEYS: frozenset = frozenset()

    #: prompts embedded per block
    BLOCK = 256

    def __init__(self, vectors: str = "wordllama:l2_supercat", dim: int = MAX_DIM, max_tokens: int = 77):
        if vectors not in VECTORS:
            raise ConfigError(f"static featurizer: vectors '{vectors}' is not one of {sorted(VECTORS)}")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
            raise ConfigError(f"static featurizer: dim must be an integer in 1..{MAX_DIM}, got {dim!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
            raise ConfigError(f"static featurizer: max_tokens must be an integer in 1..4096, got {max_tokens!r}")
        self.vectors, self.dim, self.max_tokens = vectors, dim, max_tokens

    @property
    def feature_names_(self) -> list[str]:
        return [f"s{i}" for i in range(self.dim)]

    def warmup(self) -> None:
        _load(self.vectors)

    def transform(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = [str(p) for p in prompts]
        out = np.zeros((len(prompts), self.dim), np.float32)
        if not prompts:
            return out
        matrix, tokenizer = _load(self.vectors)
        encoded = tokenizer.encode_batch(prompts, add_special_tokens=False)
        for s in range(0, len(prompts), self.BLOCK):
            # a block at a time: the gathered token vectors of 1,000 long prompts are ~40 MB, which
            # the allocator maps fresh (and faults in) on every call; a block's stay on the heap
            ids = [e.ids[: self.max_tokens] for e in encoded[s : s + self.BLOCK]]
            lengths = np.fromiter((len(i) for i in ids), np.int64, len(ids))
            rows = np.flatnonzero(lengths)
            if len(rows):
                flat = np.fromiter((t for i in ids for t in i), np.int64, int(lengths.sum()))
                starts = np.concatenate([[0], np.cumsum(lengths[rows])[:-1]])
                sums = np.add.reduceat(matrix[flat, : self.dim], starts, axis=0)
                norms = np.linalg.norm(sums, axis=1, keepdims=True)
                out[s + rows] = sums / np.maximum(norms, 1e-12)  # the mean's direction: the sum's
        return out

    def spec(self) -> dict[str, Any]:
        return {"vectors": self.vectors, "dim": self.dim, "max_tokens": self.max_tokens}
