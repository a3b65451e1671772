"""Router artifacts: a folder of JSON, numpy arrays and LightGBM text models. No pickle.

Layout::

    manifest.json          format + version, package versions, data hash, metrics, metric and its
                           direction, featurizer spec, backends (cost, and the config that builds
                           each one), the default routing policy, predictor meta, sha256 of every
                           file, and ``manifest_sha256``: the sha256 of the manifest itself
    predictor/arrays.npz   numpy arrays (loaded with allow_pickle=False)
    predictor/*.txt        LightGBM models in LightGBM's own text format

An artifact is data that strangers share. Loading one

* never runs code from it: every object is rebuilt from a registered class named in the
  manifest (built-ins and the plug-ins the loading user installed);
* never contacts a server and never writes anywhere: endpoints, credentials, cache folders and
  other paths are the loading user's settings (``local=`` / the config / the environment). Each
  featurizer and backend class declares them in ``LOCAL_KEYS`` (never guessed from key names):
  they are dropped from the manifest with a warning; a key the class neither declares local nor
  takes is refused, naming it;
* reads only the files the manifest lists, and lists only what the format needs:
  ``predictor/arrays.npz`` plus ``predictor/<name>.txt`` models, plain names, no ``..``, no
  absolute paths, no symlinks, no special files, each under :data:`MAX_FILE_BYTES` (checked
  before a byte is hashed). Other files in the folder are ignored (never opened);
* checks every file's sha256 and the manifest's own (``manifest_sha256``: catches damage and
  edits by hand; pin ``expected_sha256=`` to the value a publisher gave you to know the
  artifact is the one published; only format 3 is read, every manifest's checksum is verified),
  refuses NaN, infinite, negative
  and huge (> :data:`MAX_COST`) costs, numbers JSON cannot hold, manifests nested deeper than
  :data:`MAX_DEPTH`, and numbers where names belong;
* checks the predictor's state before using it (see ``QualityPredictor.from_state``): array
  shapes against the features and backends, values finite and bounded, no zero divisors; a
  LightGBM model text is parsed and checked in Python and LightGBM parses only a canonical
  copy written from the checked values (``predictors.lgbm.checked_model_text``: a crafted text
  cannot abort the process or make LightGBM read out of bounds);
* names models, never paths or downloads: an embedding model must ship in an installed package
  (``all-MiniLM-L6-v2``) or already be in the loading user's Hugging Face cache, and it is then
  loaded from there only (see ``features.embedding.local_model_source``).

Every refusal is an :class:`~t2iroute.errors.ArtifactError` naming the artifact and what is
wrong. As a last guard, a router that predicts NaN or infinity raises an ArtifactError naming
the artifact rather than route on it.

Optional parts (format 3; artifacts without them load, and route without them):

* ``metric_range``: ``{"observed": [low, high], "bounds": [low, high] or null}``, the lowest and
  highest score of the training table and the scorer's declared bounds; finite numbers, low <=
  high. Decisions report predictions clipped to the observed range, and a ``quality_floor``
  outside it is refused (see :class:`~t2iroute.router.core.Router`).
* ``domain`` (space, columns, threshold, quantile, counts) with the arrays
  ``router_domain__reference`` (training prompts' vectors, float, at most
  :data:`~t2iroute.router.domain.MAX_REFERENCE_LOAD` rows, as wide as ``columns``),
  ``router_domain__center`` and ``router_domain__scale`` (finite, scale > 0) in
  ``predictor/arrays.npz``: out-of-domain notices (:mod:`t2iroute.router.domain`). Those arrays
  are the router's, never handed to the predictor; either half without the other is refused.

Format versions: 3 (this one) adds ``manifest_sha256``; 2 stores ``policy: {"type": ..., ...}``
and ``higher_is_better``, and uses ``type`` as the discriminator key everywhere; 1 (t2iroute
0.1 before the policy rework: ``lambda``, and ``kind`` keys) is still read: its lambda becomes a
``lam`` policy. Versions 1 and 2 load without the manifest check (a warning says so).

Saving writes a temp folder beside the target and swaps it in with one atomic exchange
(``renameat2(RENAME_EXCHANGE)`` on Linux), so the path always holds a loadable artifact, the
old or the new, whenever the process is killed; temp folders left by killed runs are removed by
the next save on the same path.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from t2iroute.errors import ArtifactError
from t2iroute.paths import pid_alive

log = logging.getLogger(__name__)

FORMAT = "t2iroute-router"
FORMAT_VERSION = 3
READABLE_VERSIONS = (3,)  # no release yet: earlier formats were never published (CHANGELOG)
_PACKAGES = ("t2iroute", "numpy", "scikit-learn", "lightgbm", "sentence-transformers", "torch")

#: Bounds checked before reading: one file, all files together, the manifest, JSON nesting,
#: the arrays' unpacked size. ``T2IROUTE_MAX_ARTIFACT_MB`` raises the file and total bounds.
MAX_FILE_BYTES = int(float(os.environ.get("T2IROUTE_MAX_ARTIFACT_MB", 1024)) * 2**20)
MAX_TOTAL_BYTES = 2 * MAX_FILE_BYTES
MAX_MANIFEST_BYTES = 8 * 2**20
MAX_DEPTH = 32
MAX_BACKENDS = 1000
#: The largest backend cost an artifact may give (in its cost unit): costs times lambda, summed
#: over prompts, stay finite.
MAX_COST = 1e15
_FILE_NAME = re.compile(r"predictor/(arrays\.npz|[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}\.txt)")
_REQUIRED_FILES = ("predictor/arrays.npz",)
_SHA256 = re.compile(r"[0-9a-f]{64}")

#: The class :func:`load_router` builds: :class:`t2iroute.router.core.Router`, which hands itself
#: over (:func:`_set_router_class`) as it is defined. Core imports this module for ``Router.save``
#: and ``Router.load``, so this module does not import core (no import cycle); it is set before any
#: load, since importing this module imports the ``t2iroute.router`` package, and with it core, first.
_ROUTER_CLASS: type | None = None


def _set_router_class(cls: type) -> None:
    global _ROUTER_CLASS
    _ROUTER_CLASS = cls


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in _PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, without its own ``manifest_sha256``."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_json_default
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# -- saving ----------------------------------------------------------------------------------------
def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import errno

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+")


def clean_leftovers(path: Path) -> list[Path]:
    """Remove temp folders that killed saves left beside ``path`` (their process is gone)."""
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        m = _TEMP_NAME.fullmatch(p.name)
        if m and m["name"] == path.name and not pid_alive(int(m["pid"])) and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def save_router(
    router,
    path,
    *,
    metrics: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``router`` to the folder ``path``: a temp folder swapped in atomically.

    ``path`` may be missing, an empty folder or an artifact (replaced when ``overwrite``);
    anything else (a file, a folder of other things) is an :class:`ArtifactError`.
    Folders come out 0755 and files 0644 (less what the umask removes).
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ArtifactError(f"artifact path {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not (path / "manifest.json").is_file():
            raise ArtifactError(
                f"artifact path {path} is a folder that holds something other than a "
                "router artifact; not replacing it (choose another path)"
            )
        if not overwrite:
            raise ArtifactError(f"artifact {path} exists (overwrite=False)")
    from t2iroute.router.domain import ARRAY_PREFIX

    meta, arrays, texts = router.predictor.get_state()
    taken = [k for k in list(arrays) + list(texts) if k.startswith(ARRAY_PREFIX)]
    if taken:
        raise ArtifactError(f"predictor state name {taken[0]!r}: the prefix {ARRAY_PREFIX} is the router's")
    domain = getattr(router, "domain", None)
    if domain is not None:
        arrays = {**arrays, **domain.arrays()}
    for name in list(texts) + list(arrays):
        # nested state keys use "/", stored as "__" in file and array names
        if "__" in name or not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", name) or name.startswith("."):
            raise ArtifactError(f"bad state name {name!r}")
    for name in texts:
        if not _FILE_NAME.fullmatch("predictor/" + name.replace("/", "__")):
            raise ArtifactError(f"bad state name {name!r} (text models end in .txt)")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
        pdir = tmp / "predictor"
        pdir.mkdir()
        buf = io.BytesIO()
        np.savez(buf, **{k.replace("/", "__"): np.asarray(v) for k, v in arrays.items()})
        (pdir / "arrays.npz").write_bytes(buf.getvalue())
        for name, text in texts.items():
            (pdir / name.replace("/", "__")).write_text(text)
        files = {str(p.relative_to(tmp)): _sha256_file(p) for p in sorted(pdir.iterdir())}
        costs = [float(c) for c in router.costs]
        if not all(0 <= c <= MAX_COST for c in costs):  # what loading accepts (NaN fails too)
            raise ArtifactError(f"artifact {path}: backend costs must be numbers from 0 to {MAX_COST:g}, got {costs}")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "packages": package_versions(),
            "metric": router.metric,
            "higher_is_better": bool(router.higher_is_better),
            "anchor": router.anchor,
            "policy": router.policy.spec(),
            "backends": [
                {"name": b, "cost": c, "spec": router.backend_specs.get(b)} for b, c in zip(router.backend_names, costs)
            ],
            "featurizer": router.featurizer.spec(),
            "n_features": len(router.featurizer.feature_names_),
            "predictor": meta,
            "data": dict(data or router.manifest.get("data", {})),
            "metrics": dict(metrics or router.manifest.get("metrics", {})),
            "files": files,
        }
        if getattr(router, "metric_range", None):
            manifest["metric_range"] = {
                "observed": list(router.metric_range["observed"]),
                "bounds": router.metric_range.get("bounds"),
            }
        if domain is not None:
            manifest["domain"] = domain.manifest()
        manifest = json.loads(json.dumps(manifest, default=_json_default, allow_nan=False))
        manifest["manifest_sha256"] = manifest_digest(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, allow_nan=False))
        if path.is_dir():
            if not _exchange(tmp, path):  # not Linux: two renames, a short window without the path
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=path.parent))
                os.rmdir(old)
                os.replace(path, old)
                os.replace(tmp, path)
                tmp = old
            shutil.rmtree(tmp, ignore_errors=True)  # the old artifact
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.exists() and tmp != path:
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


# -- reading ---------------------------------------------------------------------------------------
def _artifact_path(path) -> Path:
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"router artifact path must be a str or path, got {type(path).__name__}")
    if str(path).strip() == "":
        raise ArtifactError("router artifact path is empty (artifact=DIR: a folder written by t2iroute train)")
    return Path(path)


def _read_regular(path: Path, rel: str, limit: int, root: Path) -> bytes:
    """The bytes of a plain file inside the artifact: no symlink anywhere below ``root``, no
    special file, at most ``limit`` bytes (checked before reading)."""
    cur = root
    for part in Path(rel).parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            raise ArtifactError(f"router artifact {root}: folder {part}/ is missing") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"router artifact {root}: {part} is not a plain folder (a symlink?)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(f"router artifact {root}: file {rel} is missing") from None
    if stat.S_ISLNK(st.st_mode):
        raise ArtifactError(f"router artifact {root}: file {rel} is a symlink; artifacts hold plain files only")
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"router artifact {root}: {rel} is not a plain file")
    if st.st_size > limit:
        raise ArtifactError(
            f"router artifact {root}: file {rel} has {st.st_size} bytes, more than the "
            f"{limit} allowed (T2IROUTE_MAX_ARTIFACT_MB)"
        )
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"router artifact {root}: {rel} is not a plain file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ArtifactError(f"router artifact {root}: file {rel} grew past {limit} bytes while read")
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text[:40]} is beyond the range of a number")
    return v


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"{text[:40]}... is a whole number too large to hold")
    return int(text)


def _depth(x: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    best, stack = 0, [(x, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            best = max(best, d)
            if d <= MAX_DEPTH:
                stack.extend((w, d + 1) for w in v.values())
        elif isinstance(v, list):
            best = max(best, d)
            if d <= MAX_DEPTH:
                stack.extend((w, d + 1) for w in v)
    return best


def read_manifest(path, *, expected_sha256: str | None = None) -> dict:
    """The validated manifest of the artifact folder ``path``.

    ``expected_sha256``: the manifest_sha256 the publisher gave; the manifest must be format 3
    (whose digest is verified) and carry exactly this digest.
    """
    path = _artifact_path(path)
    pin = None
    if expected_sha256 is not None:
        pin = str(expected_sha256).strip().lower()
        if not _SHA256.fullmatch(pin):
            raise ArtifactError(
                f"router artifact {path}: the expected sha256 {str(expected_sha256)[:80]!r} is not "
                "a sha256 digest (64 hex digits: the manifest_sha256 its publisher gave)"
            )
    if not path.exists():
        raise ArtifactError(f"router artifact {path}: no such folder")
    if not path.is_dir():
        raise ArtifactError(f"router artifact {path}: not a folder")
    mf = path / "manifest.json"
    if not os.path.lexists(mf):
        raise ArtifactError(f"router artifact {path}: manifest.json is missing (not a t2iroute artifact?)")
    raw = _read_regular(mf, "manifest.json", MAX_MANIFEST_BYTES, path)
    try:
        manifest = json.loads(
            raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except RecursionError:
        raise ArtifactError(f"router artifact {path}: manifest.json is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"router artifact {path}: manifest.json is damaged ({e})") from e
    if _depth(manifest) > MAX_DEPTH:
        raise ArtifactError(f"router artifact {path}: manifest.json is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"router artifact {path}: manifest.json is not a {FORMAT} manifest")
    v = manifest.get("format_version")
    if isinstance(v, bool) or v not in READABLE_VERSIONS:
        raise ArtifactError(
            f"router artifact {path}: format version {v} but this t2iroute reads versions "
            f"{list(READABLE_VERSIONS)}; retrain the router or install a matching t2iroute"
        )
    want = manifest.get("manifest_sha256")
    if not isinstance(want, str) or manifest_digest(manifest) != want:
        raise ArtifactError(
            f"router artifact {path}: manifest.json is damaged or edited (manifest_sha256 does not match its content)"
        )
    if pin is not None and want != pin:
        raise ArtifactError(f"router artifact {path}: manifest_sha256 {want} is not the expected {pin}")
    for key in ("backends", "featurizer", "predictor", "files", "policy", "n_features"):
        if key not in manifest:
            raise ArtifactError(f"router artifact {path}: manifest.json lacks '{key}'")
    _check_values(manifest, path)
    return manifest


def _check_values(m: dict, path: Path) -> None:
    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"router artifact {path}: {what}")

    bk = m["backends"]
    if not isinstance(bk, list) or not 1 <= len(bk) <= MAX_BACKENDS:
        raise bad(f"'backends' must be a list of 1 to {MAX_BACKENDS} backends")
    seen = set()
    for i, b in enumerate(bk):
        if not isinstance(b, dict):
            raise bad(f"backend #{i} is not a mapping")
        name, cost = b.get("name"), b.get("cost")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise bad(f"backend #{i} has no usable name ({name!r:.60})")
        if name in seen:
            raise bad(f"backend '{name}' is listed twice")
        seen.add(name)
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost <= MAX_COST:
            raise bad(f"backend '{name}' has cost {cost!r:.60}; costs must be numbers from 0 to {MAX_COST:g}")
        if b.get("spec") is not None and not isinstance(b["spec"], dict):
            raise bad(f"backend '{name}': spec must be a mapping")
    n = m["n_features"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise bad(f"n_features must be a whole number >= 0, got {n!r}")
    for key in ("featurizer", "predictor", "policy"):
        if not isinstance(m[key], (dict, list) if key == "featurizer" else dict):
            raise bad(f"'{key}' must be a mapping")
    if not isinstance(m.get("higher_is_better", True), bool):
        raise bad("'higher_is_better' must be true or false")
    if m.get("anchor") is not None and not isinstance(m["anchor"], str):
        raise bad("'anchor' must be a backend name")
    if not isinstance(m.get("metric", "quality"), str):
        raise bad("'metric' must be a name")
    for key in ("data", "metrics", "packages"):
        if m.get(key) is not None and not isinstance(m[key], dict):
            raise bad(f"'{key}' must be a mapping")
    from t2iroute.router.domain import check_domain_manifest, check_metric_range

    for key, check in (("metric_range", check_metric_range), ("domain", check_domain_manifest)):
        if key in m:
            problem = check(m[key])
            if problem is not None:
                raise bad(problem)
    if "domain" in m and m["domain"]["columns"][1] > n:
        raise bad(f"domain.columns {m['domain']['columns']} go beyond the {n} features")
    unit = (m.get("data") or {}).get("cost_unit")
    if unit is not None and (not isinstance(unit, str) or len(unit) > 40):
        raise bad(f"data.cost_unit must be a short name, got {unit!r:.60}")
    files = m["files"]
    if not isinstance(files, dict):
        raise bad("'files' must map file names to sha256 digests")
    for rel, digest in files.items():
        if not _FILE_NAME.fullmatch(rel):
            raise bad(
                f"'files' lists {rel!r:.80}: an artifact lists only predictor/arrays.npz and "
                "predictor/NAME.txt (plain names, no folders, no '..', no absolute paths)"
            )
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise bad(f"'files' entry {rel}: {digest!r:.80} is not a sha256 digest")
    missing = [f for f in _REQUIRED_FILES if f not in files]
    if missing:
        raise bad(f"'files' lacks {missing}")


def _read_files(path: Path, files: Mapping[str, str]) -> dict[str, bytes]:
    """Every listed file's bytes, size-bounded before reading and checked against its sha256."""
    total, out = 0, {}
    for rel in files:  # sizes first: refuse an oversize artifact before hashing anything
        try:
            st = os.lstat(path / rel)
        except FileNotFoundError:
            continue  # reported below, as missing
        except NotADirectoryError:
            raise ArtifactError(f"router artifact {path}: predictor is not a folder") from None
        total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    if total > MAX_TOTAL_BYTES:
        raise ArtifactError(
            f"router artifact {path}: its files hold {total} bytes, more than the "
            f"{MAX_TOTAL_BYTES} allowed (T2IROUTE_MAX_ARTIFACT_MB)"
        )
    for rel, digest in files.items():
        data = _read_regular(path / rel, rel, MAX_FILE_BYTES, path)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ArtifactError(f"router artifact {path}: file {rel} is damaged (checksum mismatch)")
        out[rel] = data
    return out


def _load_arrays(path: Path, data: bytes) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
    except zipfile.BadZipFile as e:
        raise ArtifactError(f"router artifact {path}: predictor/arrays.npz unreadable ({e})") from e
    if unpacked > MAX_FILE_BYTES:
        raise ArtifactError(
            f"router artifact {path}: predictor/arrays.npz unpacks to {unpacked} bytes, more "
            f"than the {MAX_FILE_BYTES} allowed (T2IROUTE_MAX_ARTIFACT_MB)"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k.replace("__", "/"): z[k] for k in z.files}
    except Exception as e:
        raise ArtifactError(f"router artifact {path}: predictor/arrays.npz unreadable ({e})") from e


def _part_settings(cls) -> tuple[frozenset, frozenset | None]:
    """What a featurizer or backend class declares: its ``LOCAL_KEYS`` (the loading user's own
    settings: endpoints, credentials, cache folders and other paths, devices), and the settings it
    takes (its constructor's keywords; None when it takes any, ``**kwargs``)."""
    import inspect

    local = frozenset(getattr(cls, "LOCAL_KEYS", ()))
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return local, None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return local, None
    return local, frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _check_known(what: str, keys, local: frozenset, known: frozenset | None) -> None:
    """An artifact key that the part neither declares local nor takes is an error naming it."""
    if known is None:
        return
    unknown = sorted(k for k in keys if k not in local and k not in known)
    if unknown:
        raise ValueError(f"{what} has no setting '{unknown[0]}' (it takes {sorted(known - local - {'name'})})")


def artifact_featurizer(
    spec: Any, local: Mapping[str, Mapping[str, Any]] | None = None, *, where: str = "router artifact"
):
    """Build the featurizer an artifact names, with the loading user's local settings.

    From the artifact: model names, rubric, sizes, timeouts. Dropped from it (with a warning
    when set): every key the class lists in ``LOCAL_KEYS``; refused: a key the class neither
    lists there nor takes. Bounded (one warning when changed): the timing a class bounds with its
    ``bound_artifact_settings`` (the LLM's deadline, timeout, retries: an artifact cannot make a
    route wait for ever). From ``local`` (featurizer type -> settings, the user's config): such
    keys, and the class's ``USER_KEYS`` (timing the loading user sets, e.g. ``{"llm":
    {"deadline_s": 5}}``), which replace the artifact's.
    """
    from t2iroute import registry
    from t2iroute.features.base import ComposedFeaturizer, featurizer_parts

    local = {k: dict(v or {}) for k, v in (local or {}).items()}
    parts = []
    for part in featurizer_parts(spec):
        name = part.pop("type", None)
        if not isinstance(name, str):
            raise ValueError(f"featurizer part without a type name ({name!r:.60})")
        cls = registry.get("featurizers", name)
        local_keys, known = _part_settings(cls)
        _check_known(f"the {name} featurizer", part, local_keys, known)
        dropped = {k: v for k, v in part.items() if k in local_keys}
        for k in dropped:
            part.pop(k)
        set_ = {k: v for k, v in dropped.items() if v not in (None, "", False)}
        if set_:
            log.warning(
                "%s: ignored the %s featurizer's %s: endpoints, credentials and paths come from "
                "your config and environment, not from an artifact",
                where,
                name,
                sorted(set_),
            )
        mine = local.pop(name, {})
        user_keys = frozenset(getattr(cls, "USER_KEYS", ()))
        wrong = sorted(k for k in mine if k not in local_keys and k not in user_keys)
        if wrong:
            settable = sorted(set(getattr(cls, "LOCAL_KEYS", ())) | user_keys)
            raise ValueError(
                f"{name}.{wrong[0]} cannot be set when loading a router: the artifact's "
                f"{name} featurizer was trained with its own (settable: {settable or 'none'})"
            )
        bound = getattr(cls, "bound_artifact_settings", None)
        if bound is not None:
            part, changed = bound(part)
            changed = [c for c in changed if mine.get(c.split(" ", 1)[0]) is None]  # the user's own win
            if changed:
                log.warning(
                    "%s: the %s featurizer's %s: bounded (an artifact cannot set more; set %s.KEY "
                    "yourself to change it)",
                    where,
                    name,
                    ", ".join(changed),
                    name,
                )
        part.update({k: v for k, v in mine.items() if v is not None})
        parts.append(registry.build("featurizers", {"type": name, **part}))
    if not parts:
        raise ValueError("no featurizer")
    return ComposedFeaturizer(parts)


def _artifact_backend_spec(name: str, spec: dict, where: str) -> dict:
    from t2iroute import registry

    kind = str(spec.get("type", "diffusers"))
    cls = registry.get("backends", kind)
    local_keys, known = _part_settings(cls)
    _check_known(f"the {kind} backend", [k for k in spec if k != "type"], local_keys, known)
    dropped = sorted(k for k, v in spec.items() if k in local_keys and v not in (None, "", False))
    if dropped:
        log.warning(
            "%s: ignored backend '%s' settings %s: paths and endpoints come from your config", where, name, dropped
        )
    return {k: v for k, v in spec.items() if k not in local_keys}


def load_router(
    path,
    *,
    backends: Mapping[str, Any] | None = None,
    local: Mapping[str, Mapping[str, Any]] | None = None,
    expected_sha256: str | None = None,
):
    """Load and verify an artifact. Raises ArtifactError saying what is wrong.

    Backends come from the configs stored in the artifact (built lazily: no model loads until
    the first image); ``backends`` (name -> Backend object or config mapping) overrides or
    extends them, e.g. with a baseline the router does not route to. ``local`` (featurizer
    type -> settings) gives the loading user's endpoints, cache folders and the like, e.g.
    ``{"llm": {"base_url": "http://127.0.0.1:8080/v1"}}``; an artifact never sets them.
    ``expected_sha256``: the artifact's ``manifest_sha256`` as its publisher gave it.
    """
    from t2iroute.backends import build_backend
    from t2iroute.errors import ConfigError
    from t2iroute.predictors.base import QualityPredictor, StateError

    Router = _ROUTER_CLASS
    if Router is None:  # pragma: no cover -- t2iroute.router.core sets it, and the package imports core
        raise RuntimeError("t2iroute.router.core is not imported: no Router class to load an artifact into")
    path = _artifact_path(path)
    manifest = read_manifest(path, expected_sha256=expected_sha256)
    data = _read_files(path, manifest["files"])
    arrays = _load_arrays(path, data["predictor/arrays.npz"])
    domain = _load_domain(path, manifest, arrays)
    texts = {}
    for rel, raw in data.items():
        if rel.endswith(".txt"):
            try:
                texts[rel[len("predictor/") :].replace("__", "/")] = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ArtifactError(f"router artifact {path}: {rel} is not UTF-8 text") from e
    try:
        predictor = QualityPredictor.from_state(manifest["predictor"], arrays, texts)
    except ArtifactError:
        raise
    except StateError as e:
        raise ArtifactError(f"router artifact {path}: {_state_where(e, arrays, texts)}") from None
    except RecursionError:
        raise ArtifactError(f"router artifact {path}: predictor state nested too deeply") from None
    except Exception as e:
        raise ArtifactError(f"router artifact {path}: predictor state invalid ({type(e).__name__}: {e})") from e
    _, _, need_texts = predictor.get_state()
    need = {"predictor/arrays.npz"} | {"predictor/" + n.replace("/", "__") for n in need_texts}
    if need != set(manifest["files"]):
        raise ArtifactError(
            f"router artifact {path}: 'files' {sorted(manifest['files'])} do not match what its "
            f"predictor needs {sorted(need)}"
        )
    where = f"router artifact {path}"
    try:
        featurizer = artifact_featurizer(manifest["featurizer"], local, where=where)
        # models named by the artifact come from this machine only (before anything loads one)
        for part in getattr(featurizer, "parts", [featurizer]):
            pin_local = getattr(part, "pin_local_model", None)
            if callable(pin_local):
                pin_local()
        n_feat = len(featurizer.feature_names_)
    except Exception as e:  # noqa: BLE001 - any failure is the artifact's, named
        raise ArtifactError(f"router artifact {path}: featurizer spec unusable ({e})") from None
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
    packages = manifest.get("packages") if isinstance(manifest.get("packages"), dict) else {}
    for pkg in ("lightgbm", "scikit-learn"):
        was = packages.get(pkg)
        if isinstance(was, str) and now.get(pkg) and was.split(".")[0] != now[pkg].split(".")[0]:
            log.warning("router artifact %s was written with %s %s, this is %s", path, pkg, was, now[pkg])
    specs = {b["name"]: b.get("spec") for b in manifest["backends"]}
    built = {}
    for name, spec in specs.items():
        if spec and not (backends and name in backends):
            try:
                built[name] = build_backend(name, _artifact_backend_spec(name, spec, where))
            except Exception as e:
                raise ArtifactError(f"router artifact {path}: backend '{name}' config unusable ({e})") from e
    for name, b in (backends or {}).items():
        built[name] = build_backend(name, b) if isinstance(b, Mapping) else b
    try:
        router = Router(
            featurizer,
            predictor,
            names,
            costs,
            policy=manifest["policy"],
            metric=manifest.get("metric", "quality"),
            higher_is_better=bool(manifest.get("higher_is_better", True)),
            anchor=manifest.get("anchor"),
            manifest=manifest,
            backends=built,
            backend_specs={n: s for n, s in specs.items() if s},
            metric_range=manifest.get("metric_range"),
            domain=domain,
        )
    except (ValueError, TypeError, ConfigError) as e:
        raise ArtifactError(
            f"router artifact {path}: default policy {manifest['policy']} or anchor "
            f"{manifest.get('anchor')!r} unusable ({e})"
        ) from e
    # the default policy must be able to decide on these costs (a budget below every cost cannot)
    # and its utilities (q - lambda * cost) must stay finite
    try:
        check = getattr(router.policy, "check", None)
        if callable(check):
            check(router.costs)
        router.check_policy(router.policy)  # a quality floor outside the metric's observed range
        lam = router.policy.lambda_()
        if lam is not None and not math.isfinite(float(lam) * float(max(costs, default=0.0))):
            raise ValueError(f"lambda {lam:g} times the costs overflows")
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"router artifact {path}: default policy {manifest['policy']} unusable ({e})") from None
    router.source = str(path)  # named by the router's own errors (non-finite predictions)
    return router


def _load_domain(path: Path, manifest: Mapping[str, Any], arrays: dict[str, np.ndarray]):
    """The router's out-of-domain data: its arrays are taken out of ``arrays`` (the predictor
    never sees them) and checked against the manifest's ``domain``; None where the artifact has
    neither (older artifacts)."""
    from t2iroute.router.domain import ARRAY_PREFIX, Domain

    mine = {k: arrays.pop(k) for k in [k for k in arrays if k.startswith(ARRAY_PREFIX)]}
    meta = manifest.get("domain")
    if meta is None:
        if mine:
            raise ArtifactError(
                f"router artifact {path}: predictor/arrays.npz holds "
                f"'{sorted(mine)[0].replace('/', '__')}' but the manifest has no 'domain'"
            )
        return None
    try:
        return Domain.from_state(meta, mine, int(manifest["n_features"]))
    except (ValueError, TypeError, KeyError) as e:
        raise ArtifactError(
            f"router artifact {path}: predictor/arrays.npz: out-of-domain data unusable ({e})"
        ) from None


def _state_where(e, arrays: Mapping[str, Any], texts: Mapping[str, str]) -> str:
    """A predictor StateError with the array or model file named as the artifact stores it."""
    obj = getattr(e, "obj", None)
    if obj is not None:
        for key, value in arrays.items():
            if value is obj:
                return f"predictor/arrays.npz: array '{key.replace('/', '__')}' {e.reason}"
        for key, value in texts.items():
            if value is obj:
                return f"predictor/{key.replace('/', '__')}: {e.reason}"
    where = getattr(e, "where", "").rstrip("/")
    return f"predictor state invalid ({'in ' + where + ': ' if where else ''}{e})"
