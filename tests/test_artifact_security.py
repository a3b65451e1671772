"""Crafted router artifacts: each case ends in a clear ArtifactError, or (for fields an artifact
may not set) in no contact with any server and no write outside the loading user's cache.

The attacker here may rewrite anything in the folder, recompute every sha256 and the
manifest's own digest: integrity checks catch damage, the rules below hold against malice.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    f = build_featurizer({"lexical": {}, "llm": {"rubric": "score", "cache": False, "timeout": 0.5,
                                                 "retries": 0, "progress": False}})
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
        part.update(provider=provider, base_url=f"http://127.0.0.1:{listener.port}/v1",
                    host=f"http://127.0.0.1:{listener.port}", api_key="stolen",
                    cache_path=str(evil), cache=True)
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
    m["featurizer"]["featurizers"].append({"type": "embedding", "model": "all-MiniLM-L6-v2", "dim": 384,
                                           "cache_dir": str(tmp_path / "evil-emb"), "device": "cuda:7"})
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


def test_backend_paths_in_specs_are_dropped(tmp_path):
    path = tmp_path / "router"
    make_tiny_router().save(path)
    m = read(path)
    m["backends"][0]["spec"]["cache_dir"] = str(tmp_path / "evil-hf")
    m["backends"][0]["spec"]["proxy_url"] = "http://attacker"
    write(path, m)
    r = Router.load(path)  # dropped with a warning, not passed to the backend class
    assert "cache_dir" not in vars(r.backends[m["backends"][0]["name"]])
    case("backend spec cache_dir / proxy_url injection", "inert")


# -- files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", ["../../etc/passwd", "/etc/passwd", "predictor/../../x.txt",
                                 "predictor/sub/x.txt", "manifest.json", "predictor/.hidden.txt",
                                 "predictor/x.py"])
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
        m["files"] = {"predictor/arrays.npz": m["files"]["predictor/arrays.npz"],
                      os.path.relpath(target, artifact): "0" * 64}
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
    r.predictor = LGBMPredictor(params={"n_estimators": 5}, n_jobs=1).fit(r.featurizer.transform(list(M.prompts)), M.scores)
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


@pytest.mark.parametrize("field,value,match", [
    ("n_features", "24", "n_features"),
    ("n_features", -1, "n_features"),
    ("higher_is_better", "yes", "higher_is_better"),
    ("anchor", 3, "anchor"),
    ("format_version", True, "format version"),
    ("backends", [], "backends"),
    ("policy", "lam", "policy"),
    ("files", [], "files"),
])
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
        f.truncate(3 * 2 ** 30)  # sparse: 3 GiB that take no disk
    t0 = time.perf_counter()
    with pytest.raises(ArtifactError, match="more than the"):
        Router.load(artifact)
    assert time.perf_counter() - t0 < 5  # hashing 3 GiB takes ~14 s
    case("3 GiB sparse file", "refused")
    mf = artifact / "manifest.json"
    with open(mf, "r+b") as f:
        f.truncate(64 * 2 ** 20)
    with pytest.raises(ArtifactError, match="manifest.json has .* more than"):
        Router.load(artifact)
    case("64 MiB manifest", "refused")


def test_zip_bomb_arrays_are_refused(artifact, monkeypatch):
    import t2iroute.router.artifact as art

    npz = artifact / "predictor" / "arrays.npz"
    np.savez_compressed(npz, big=np.zeros(2 ** 22))  # 32 MiB unpacked, ~30 KiB packed
    m = read(artifact)
    rehash(artifact, m)
    write(artifact, m)
    monkeypatch.setattr(art, "MAX_FILE_BYTES", 2 ** 24)
    with pytest.raises(ArtifactError, match="unpacks to"):
        Router.load(artifact)
    case("compressed arrays that unpack past the bound", "refused")


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
    dead = 2 ** 22 + 12345  # above pid_max's default: no such process
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
