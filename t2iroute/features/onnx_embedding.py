"""Sentence embeddings under ONNX Runtime: no torch, no sentence-transformers at inference.

``import sentence_transformers`` costs ~13 s and ``import torch`` ~3 s on a 2-core machine; an
ONNX Runtime session of the same model loads in a fraction of a second. The model is exported
once, with torch, from the sentence-transformers model into the user's cache::

    $T2IROUTE_CACHE/onnx/<key>/     (or $XDG_CACHE_HOME/t2iroute/onnx/..., ~/.cache/t2iroute/onnx/...)
        tokenizer.json              the model's fast tokenizer (read with the ``tokenizers`` package)
        model.onnx                  transformer + pooling (+ normalize); dynamic int8 if asked
        meta.json                   written last: what the encoder needs to feed the model

``<key>`` is the featurizer's cache key, so nothing that an artifact's spec carries chooses
where files go: the folder comes from the environment only. Every file is written atomically
(temp file + ``os.replace``); a folder that is incomplete or damaged is exported again. A process
that already loaded a key's model from one cache root copies that folder to a new root rather
than export again (tests switch roots per test).

Inference is: tokenizer (truncation to max_seq_length, padding to the longest in the batch) ->
session -> numpy, in batches sorted by length as sentence-transformers does.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import threading
import uuid
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from t2iroute.features.sentence_models import default_cache_dir, load_sentence_transformer
from t2iroute.paths import atomic_path, atomic_write_bytes

log = logging.getLogger(__name__)

#: Bump when the export changes in a way that old exported folders must not be reused.
EXPORT_VERSION = 1
#: ONNX Runtime intra-op threads: at most 2 (the routing machines have 2 cores).
MAX_THREADS = 2
#: Tokenizer outputs -> fields of a ``tokenizers.Encoding``.
_ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
_export_lock = threading.Lock()  # one export at a time in this process
_loaded: dict[str, Path] = {}  # key -> the folder this process last loaded that key's model from


def onnx_runtime_available() -> bool:
    """onnxruntime and tokenizers are installed (checked without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers"))


def onnx_root() -> Path:
    """``<cache root>/onnx``: the root is ``$T2IROUTE_CACHE``, or ``t2iroute`` under
    ``$XDG_CACHE_HOME`` or ``~/.cache`` (the environment of the user who loads, never a spec)."""
    return default_cache_dir().parent / "onnx"


# -- export (torch, once) ---------------------------------------------------------------------
def export_model(
    model: str,
    folder: Path,
    *,
    max_seq_length: int | None,
    normalize: bool,
    quantize: str | None,
    source: str | None = None,
) -> None:
    """Export ``model`` (a sentence-transformers model name or folder) to ``folder``.

    The graph is the whole sentence-transformers forward (transformer, pooling and whatever
    modules the model has, its own Normalize included) plus an L2 normalize when ``normalize``,
    exactly what ``SentenceTransformer.encode(normalize_embeddings=...)`` computes. It is
    traced with torch's TorchScript exporter (``dynamo=False``) on a padded batch, so that the
    attention mask is part of the graph, with dynamic batch and sequence axes.

    ``quantize="int8"``: ONNX Runtime's dynamic quantization (int8 weights, per tensor, of the
    MatMuls with constant weights, i.e. the Linear layers, as torch's dynamic quantization
    does; activations quantized on the fly). Of the variants measured it matches the torch
    int8 vectors best (mean cosine ~0.97 on 1,000 PartiPrompts; per-channel weights are closer
    to fp32, 0.99, but further from torch int8, 0.94).

    ``source``: the local folder to load ``model`` from, offline (a model a router artifact named).

    Raises whatever goes wrong (no torch, an untraceable model...); the caller falls back.
    """
    import torch

    st = load_sentence_transformer(model, device="cpu", max_seq_length=max_seq_length, source=source)
    first = st[0]
    hf_tok = getattr(first, "tokenizer", None)
    backend = getattr(hf_tok, "backend_tokenizer", None)  # a fast tokenizer's tokenizers.Tokenizer
    if backend is None:
        raise RuntimeError(f"model '{model}' has no fast tokenizer (tokenizer.json); cannot run it under ONNX")
    # A padded example batch: the attention mask must take part in the traced graph.
    example = st.preprocess(["a red car", "a crowded park at dusk with three red kites"])
    names = [k for k, v in example.items() if torch.is_tensor(v)]
    unknown = [n for n in names if n not in _ENCODING_FIELDS]
    if unknown or "input_ids" not in names:
        raise RuntimeError(f"model '{model}' takes inputs {names}; the ONNX encoder feeds {list(_ENCODING_FIELDS)}")

    class _Encode(torch.nn.Module):
        """Tensors in the tokenizer's order -> sentence embeddings (what encode returns)."""

        def __init__(self):
            super().__init__()
            self.st = st

        def forward(self, *tensors):
            out = self.st(dict(zip(names, tensors)))["sentence_embedding"]
            if normalize:
                out = torch.nn.functional.normalize(out, p=2, dim=1)
            return out

    # Each file is replaced atomically and meta.json comes last. A reader meanwhile sees the old
    # files, or new ones beside an old meta.json of the same key (the same export): never half a file.
    folder.mkdir(parents=True, exist_ok=True)
    meta_file = folder / "meta.json"
    tmp = folder / f".tmp-{uuid.uuid4().hex}"
    fp32, qint8 = tmp.with_suffix(".fp32.onnx"), tmp.with_suffix(".int8.onnx")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings: the graph is checked below
            torch.onnx.export(
                _Encode().eval(),
                tuple(example[n] for n in names),
                str(fp32),
                input_names=names,
                output_names=["sentence_embedding"],
                opset_version=17,
                dynamo=False,
                dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, "sentence_embedding": {0: "batch"}},
            )
            reference = _Encode().eval()(*[example[n] for n in names]).numpy()
        if quantize == "int8":
            _quantize_dynamic_int8(fp32, qint8)
            os.replace(qint8, folder / "model.onnx")
        else:
            os.replace(fp32, folder / "model.onnx")
        atomic_write_bytes(folder / "tokenizer.json", backend.to_str().encode("utf-8"))
        meta = {
            "export_version": EXPORT_VERSION,
            "model": model,
            "inputs": names,
            "max_seq_length": int(st.max_seq_length) if st.max_seq_length else None,
            "do_lower_case": bool(getattr(first, "do_lower_case", False)),
            "pad_id": int(hf_tok.pad_token_id if hf_tok.pad_token_id is not None else 0),
            "pad_token": str(hf_tok.pad_token or "[PAD]"),
            "normalize": bool(normalize),
            "quantize": quantize,
            "dim": int(reference.shape[1]),
            "model_bytes": os.path.getsize(folder / "model.onnx"),
            "exported_with": _versions(("torch", "sentence-transformers", "transformers", "onnx", "onnxruntime")),
        }
        atomic_write_bytes(meta_file, json.dumps(meta, indent=2).encode("utf-8"))
    finally:
        for f in (fp32, qint8):
            f.unlink(missing_ok=True)
    # The exported model must reproduce torch on the example batch (fp32) or come close (int8).
    enc = OnnxSentenceEncoder(folder)
    got = enc.encode(["a red car", "a crowded park at dusk with three red kites"])
    cos = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    if not (cos > (0.8 if quantize else 0.999)).all():
        meta_file.unlink(missing_ok=True)
        raise RuntimeError(f"the ONNX export of '{model}' does not reproduce torch (cosine {cos.round(4).tolist()})")
    log.info("exported '%s' to ONNX (%s) in %s", model, quantize or "fp32", folder)


def _quantize_dynamic_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantization: int8 weights of the MatMuls with constant weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs on the root logger directly (a "consider pre-processing" hint, one
    # INFO line per tensor): keep only its errors, and do not let logging.warning() install a
    # root handler in a process that configured none. (A filter on the root logger sees only
    # what is logged on it directly, not what other loggers propagate.)
    root = logging.getLogger()
    hint = logging.Filter()
    hint.filter = lambda r: r.levelno >= logging.ERROR
    null = logging.NullHandler() if not root.handlers else None
    root.addFilter(hint)
    if null is not None:
        root.addHandler(null)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=False,
            reduce_range=False,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.removeFilter(hint)
        if null is not None:
            root.removeHandler(null)


def _versions(packages: Sequence[str]) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


# -- inference (no torch) -----------------------------------------------------------------------
class OnnxSentenceEncoder:
    """An exported folder -> ``encode(prompts) -> (n, dim) float32``.

    Raises if the folder is incomplete or damaged (see :func:`load_or_export`).
    """

    def __init__(self, folder: Path, *, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        if meta.get("export_version") != EXPORT_VERSION:
            raise RuntimeError(f"exported with format {meta.get('export_version')}, this is {EXPORT_VERSION}")
        model_file = self.folder / "model.onnx"
        if model_file.stat().st_size != meta["model_bytes"]:
            raise RuntimeError(
                f"{model_file} has {model_file.stat().st_size} bytes, {meta['model_bytes']} were written"
            )
        self.meta = meta
        self.dim = int(meta["dim"])
        self.inputs = list(meta["inputs"])
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        # tokenizer.json may carry its own fixed padding / truncation: set both as encode() does
        if meta["max_seq_length"]:
            self.tokenizer.enable_truncation(max_length=int(meta["max_seq_length"]))
        else:
            self.tokenizer.no_truncation()
        self.tokenizer.enable_padding(pad_id=int(meta["pad_id"]), pad_token=meta["pad_token"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(MAX_THREADS, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        # idle threads sleep rather than spin: spinning threads fight every other process on a
        # 2-core machine (measured here under load: 255 vs 174 prompts/s, 3 vs 6.5 ms a prompt)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        got = [i.name for i in self.session.get_inputs()]
        if sorted(got) != sorted(self.inputs):
            raise RuntimeError(f"{model_file} takes inputs {got}, meta.json says {self.inputs}")

    def _feed(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self.meta.get("do_lower_case"):
            texts = [t.lower() for t in texts]
        enc = self.tokenizer.encode_batch(texts)
        return {n: np.asarray([getattr(e, _ENCODING_FIELDS[n]) for e in enc], dtype=np.int64) for n in self.inputs}

    def encode(self, prompts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        prompts = [str(p) for p in prompts]
        out = np.zeros((len(prompts), self.dim), np.float32)
        # longest first, as sentence-transformers batches: similar lengths pad little (and int8
        # activation ranges, which are per batch, come out as they do on the torch path)
        order = np.argsort([-len(p) for p in prompts], kind="stable")
        for start in range(0, len(prompts), max(1, int(batch_size))):
            idx = order[start : start + batch_size]
            (emb,) = self.session.run(["sentence_embedding"], self._feed([prompts[i] for i in idx]))
            out[idx] = emb
        return out


def load_or_export(
    key: str,
    model: str,
    *,
    max_seq_length: int | None,
    normalize: bool,
    quantize: str | None,
    source: str | None = None,
) -> tuple[OnnxSentenceEncoder, bool]:
    """The encoder for ``onnx_root()/key``, exporting the model first where it is missing or
    damaged (from the folder ``source`` only, when given). -> (encoder, exported_now). Raises if
    it cannot be exported."""
    folder = onnx_root() / key
    try:
        enc, exported = OnnxSentenceEncoder(folder), False
    except Exception as e:  # noqa: BLE001 -- missing; or damaged, truncated, older format: export again
        if not isinstance(e, FileNotFoundError):
            log.warning(
                "embedding: the ONNX model in %s is unusable (%s: %s); exporting it again", folder, type(e).__name__, e
            )
        with _export_lock:
            try:  # another thread may have exported it meanwhile
                enc, exported = OnnxSentenceEncoder(folder), False
            except Exception:  # noqa: BLE001
                src = _loaded.get(key)
                enc = _copy_export(src, folder) if src is not None and src != folder else None
                if enc is None:
                    export_model(
                        model,
                        folder,
                        max_seq_length=max_seq_length,
                        normalize=normalize,
                        quantize=quantize,
                        source=source,
                    )
                    enc = OnnxSentenceEncoder(folder)
                exported = True
    _loaded[key] = folder
    return enc, exported


def _copy_export(src: Path, dst: Path) -> OnnxSentenceEncoder | None:
    """Copy a folder that this process loaded under another cache root (tests switch roots per
    test) rather than export again: a key's export is the same wherever it lands. None if the
    copy does not load."""
    try:
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "model.onnx", "meta.json"):  # meta.json last, as an export
            with atomic_path(dst / name) as tmp:
                shutil.copyfile(src / name, tmp)
        return OnnxSentenceEncoder(dst)
    except Exception as e:  # noqa: BLE001 -- the source went away or was damaged: export instead
        log.info("embedding: cannot copy the ONNX model from %s (%s); exporting it", src, e)
        return None
