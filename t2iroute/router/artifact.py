"""Router artifacts: a folder of JSON, numpy arrays and LightGBM text models. No pickle.

Layout::

    manifest.json          format + version, package versions, data hash, metrics, metric and its
                           direction, featurizer spec, backends (cost, and the config that builds
                           each one), the default routing policy, predictor meta, sha256 of every file
    predictor/arrays.npz   numpy arrays (loaded with allow_pickle=False)
    predictor/*.txt        LightGBM models in LightGBM's own text format

Loading never runs code from the artifact: every object is rebuilt from a registered class named
in the manifest, so artifacts can be shared between users.

Format versions: 2 (this one) stores ``policy: {"type": ..., ...}`` and ``higher_is_better``, and
uses ``type`` as the discriminator key everywhere. Version 1 (t2iroute 0.1 before the policy
rework: ``lambda``, and ``kind`` keys) is still read: its lambda becomes a ``lam`` policy.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from t2iroute.errors import ArtifactError

log = logging.getLogger(__name__)

FORMAT = "t2iroute-router"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_PACKAGES = ("t2iroute", "numpy", "scikit-learn", "lightgbm", "sentence-transformers", "torch")


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in _PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_router(router, path, *, metrics: Mapping[str, Any] | None = None,
                data: Mapping[str, Any] | None = None, overwrite: bool = True) -> Path:
    """Write ``router`` to the folder ``path`` atomically (a temp folder renamed into place)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"artifact {path} exists (overwrite=False)")
    meta, arrays, texts = router.predictor.get_state()
    for name in list(texts) + list(arrays):
        # nested state keys use "/", stored as "__" in file and array names
        if "__" in name or not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", name) or name.startswith("."):
            raise ArtifactError(f"bad state name {name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        pdir = tmp / "predictor"
        pdir.mkdir()
        buf = io.BytesIO()
        np.savez(buf, **{k.replace("/", "__"): np.asarray(v) for k, v in arrays.items()})
        (pdir / "arrays.npz").write_bytes(buf.getvalue())
        for name, text in texts.items():
            (pdir / name.replace("/", "__")).write_text(text)
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(pdir.iterdir())}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "packages": package_versions(),
            "metric": router.metric,
            "higher_is_better": bool(router.higher_is_better),
            "anchor": router.anchor,
            "policy": router.policy.spec(),
            "backends": [{"name": b, "cost": float(c), "spec": router.backend_specs.get(b)}
                         for b, c in zip(router.backend_names, router.costs)],
            "featurizer": router.featurizer.spec(),
            "n_features": len(router.featurizer.feature_names_),
            "predictor": meta,
            "data": dict(data or router.manifest.get("data", {})),
            "metrics": dict(metrics or router.manifest.get("metrics", {})),
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_json_default))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    router.manifest = manifest
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_manifest(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"router artifact {path}: no such folder")
    mf = path / "manifest.json"
    if not mf.is_file():
        raise ArtifactError(f"router artifact {path}: manifest.json is missing (not a t2iroute artifact?)")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"router artifact {path}: manifest.json is damaged ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"router artifact {path}: manifest.json is not a {FORMAT} manifest")
    v = manifest.get("format_version")
    if v not in READABLE_VERSIONS:
        raise ArtifactError(
            f"router artifact {path}: format version {v} but this t2iroute reads versions "
            f"{list(READABLE_VERSIONS)}; retrain the router or install a matching t2iroute"
        )
    if v == 1:
        manifest = upgrade_v1(manifest)
    for key in ("backends", "featurizer", "predictor", "files", "policy", "n_features"):
        if key not in manifest:
            raise ArtifactError(f"router artifact {path}: manifest.json lacks '{key}'")
    return manifest


def _kind_to_type(x):
    if isinstance(x, dict):
        return {("type" if k == "kind" else k): _kind_to_type(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_kind_to_type(v) for v in x]
    return x


def upgrade_v1(manifest: dict) -> dict:
    """A format-1 manifest in format 2's shape (in memory; the files are not rewritten)."""
    m = dict(manifest)
    if "lambda" in m:
        m["policy"] = {"type": "lam", "lam": float(m.pop("lambda"))}
    m["higher_is_better"] = True  # version 1 knew higher-is-better metrics only
    m["featurizer"] = _kind_to_type(m.get("featurizer"))
    m["predictor"] = _kind_to_type(m.get("predictor"))
    m["upgraded_from_version"] = 1
    return m


def load_router(path, *, backends: Mapping[str, Any] | None = None):
    """Load and verify an artifact. Raises ArtifactError saying what is wrong.

    Backends come from the configs stored in the artifact (built lazily: no model loads until
    the first image); ``backends`` (name -> Backend object or config mapping) overrides or
    extends them, e.g. with a baseline the router does not route to.
    """
    from t2iroute.backends import build_backend
    from t2iroute.features import build_featurizer
    from t2iroute.predictors.base import QualityPredictor
    from t2iroute.router.core import Router

    path = Path(path)
    manifest = read_manifest(path)
    for rel, digest in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            raise ArtifactError(f"router artifact {path}: file {rel} is missing")
        if _sha256(f) != digest:
            raise ArtifactError(f"router artifact {path}: file {rel} is damaged (checksum mismatch)")
    pdir = path / "predictor"
    try:
        with np.load(pdir / "arrays.npz", allow_pickle=False) as z:
            arrays = {k.replace("__", "/"): z[k] for k in z.files}
    except Exception as e:
        raise ArtifactError(f"router artifact {path}: predictor/arrays.npz unreadable ({e})") from e
    texts = {f.name.replace("__", "/"): f.read_text() for f in pdir.glob("*.txt")}
    try:
        predictor = QualityPredictor.from_state(manifest["predictor"], arrays, texts)
    except ArtifactError:
        raise
    except Exception as e:
        raise ArtifactError(f"router artifact {path}: predictor state invalid ({type(e).__name__}: {e})") from e
    try:
        featurizer = build_featurizer(manifest["featurizer"])
        n_feat = len(featurizer.feature_names_)
    except Exception as e:
        raise ArtifactError(f"router artifact {path}: featurizer spec unusable ({e})") from e
    names = [b["name"] for b in manifest["backends"]]
    costs = [float(b["cost"]) for b in manifest["backends"]]
    if n_feat != manifest["n_features"] or n_feat != predictor.n_features_in_:
        raise ArtifactError(
            f"router artifact {path}: featurizer gives {n_feat} features, the predictor expects "
            f"{predictor.n_features_in_} (manifest says {manifest['n_features']})"
        )
    if predictor.n_outputs_ != len(names):
        raise ArtifactError(
            f"router artifact {path}: predictor has {predictor.n_outputs_} outputs for {len(names)} backends"
        )
    now = package_versions()
    for pkg in ("lightgbm", "scikit-learn"):
        was = manifest.get("packages", {}).get(pkg)
        if was and now.get(pkg) and was.split(".")[0] != now[pkg].split(".")[0]:
            log.warning("router artifact %s was written with %s %s, this is %s", path, pkg, was, now[pkg])
    specs = {b["name"]: b.get("spec") for b in manifest["backends"]}
    built = {}
    for name, spec in specs.items():
        if spec and not (backends and name in backends):
            try:
                built[name] = build_backend(name, spec)
            except Exception as e:
                raise ArtifactError(f"router artifact {path}: backend '{name}' config unusable ({e})") from e
    for name, b in (backends or {}).items():
        built[name] = build_backend(name, b) if isinstance(b, Mapping) else b
    try:
        router = Router(featurizer, predictor, names, costs, policy=manifest["policy"],
                        metric=manifest.get("metric", "quality"),
                        higher_is_better=bool(manifest.get("higher_is_better", True)),
                        anchor=manifest.get("anchor"), manifest=manifest,
                        backends=built, backend_specs={n: s for n, s in specs.items() if s})
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"router artifact {path}: default policy {manifest['policy']} or anchor "
                            f"{manifest.get('anchor')!r} unusable ({e})") from e
    return router
