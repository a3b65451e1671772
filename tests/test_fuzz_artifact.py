"""Property tests: a crafted artifact is refused with one clear error, or it routes finite values.

Small saved artifacts (a ridge router; a stack of kNN and TF-IDF ridge under a LightGBM final
model) are mutated as their author could: the manifest (values, types, nesting, format version,
costs, policy), the arrays in ``predictor/arrays.npz`` (NaN, infinity, zeros, huge values, wrong
shapes and dtypes, missing and extra arrays) and the LightGBM model texts (numbers, fields, lines),
then every checksum is recomputed. Each case must end in exactly one ArtifactError naming the
artifact from ``Router.load``, or in a router whose ``route`` gives finite predictions for every
backend and a chosen backend among them, as JSON. LightGBM texts are loaded in this process:
a model text that LightGBM's C++ parser aborts on would end the test run, not fail one test.

The mutations take their choices from a ``Chooser``: hypothesis here, a seeded ``random.Random``
in ``scripts/probe_artifacts.py`` (which runs thousands of them).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from t2iroute import Router
from t2iroute.errors import ArtifactError
from t2iroute.router.artifact import manifest_digest

PROMPTS = ["a cat", "two birds on a wire", "a sign saying 'hello'", ""]  # "" also (refused, not routed)
ROUTE_PROMPTS = PROMPTS[:3]


# -- choices -----------------------------------------------------------------------------------------
class RandomChooser:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def choice(self, seq):
        seq = list(seq)
        return seq[self.rng.randrange(len(seq))]

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class HypothesisChooser:
    def __init__(self, data):
        self.data = data

    def choice(self, seq):
        return self.data.draw(st.sampled_from(list(seq)))

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))


LITERAL = "__literal__"  # a string value replaced by a raw JSON literal after the digest


def weird_value(c, names=("fast", "mid", "slow")):
    kind = c.choice(["int", "float", "str", "none", "bool", "list", "dict", "deep", "literal"])
    if kind == "int":
        return c.choice([0, 1, -1, 2, 3, 24, 23, 25, 1000, 10**6, -(10**6), 2**31, 2**63, 10**30])
    if kind == "float":
        return c.choice([0.0, -0.0, 0.5, -1.5, 1e-300, 5e-324, 1e15, 1e16, 1e300, 1.7e308, float("nan"), float("inf")])
    if kind == "str":
        return c.choice(
            [
                "",
                "x",
                "lam",
                "budget",
                "ridge",
                "knn",
                "lgbm",
                "stack",
                "auto",
                "lexical",
                "os:system",
                "../etc/passwd",
                "/etc/passwd",
                "a" * 300,
                "0.1",
                "3",
                *names,
            ]
        )
    if kind == "none":
        return None
    if kind == "bool":
        return c.choice([True, False])
    if kind == "list":
        return c.choice([[], [1, 2], ["fast"], [None], [[0, 1]], [0, 24], [3, 1]])
    if kind == "dict":
        return c.choice([{}, {"type": "lam", "lam": 1.0}, {"type": "ridge"}, {"a": 1}, {"type": None}])
    if kind == "deep":
        v: object = 1
        for _ in range(c.choice([5, 40])):
            v = [v]
        return v
    return LITERAL + c.choice(["1e999", "-1e999", "1e400", "NaN", "Infinity", "-Infinity", "123456789012345678901234"])


# -- the artifact on disk ---------------------------------------------------------------------------
def read_manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def write_manifest(path: Path, m) -> None:
    """Recompute every listed file's sha256 and the manifest's own, as an author could."""
    if isinstance(m, dict):
        files = m.get("files")
        if isinstance(files, dict):
            for rel in list(files):
                f = path / rel
                if isinstance(rel, str) and rel.startswith("predictor/") and ".." not in rel and f.is_file():
                    files[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
        try:
            m["manifest_sha256"] = manifest_digest(m)
        except (ValueError, TypeError):  # NaN or the like: not even the author can digest it
            m["manifest_sha256"] = "0" * 64
    text = json.dumps(m)
    while f'"{LITERAL}' in text:  # raw literals (1e999, NaN...) that json.dumps cannot write
        start = text.index(f'"{LITERAL}')
        end = text.index('"', start + 1)
        text = text[:start] + text[start + 1 + len(LITERAL) : end] + text[end + 1 :]
    (path / "manifest.json").write_text(text)


def read_arrays(path: Path) -> dict:
    with np.load(path / "predictor" / "arrays.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_arrays(path: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (path / "predictor" / "arrays.npz").write_bytes(buf.getvalue())


def _paths(x, prefix=()):
    """Every (path to a value) in a JSON tree, iteratively."""
    out, stack = [], [(x, prefix)]
    while stack:
        v, p = stack.pop()
        if p:
            out.append(p)
        if isinstance(v, dict):
            stack.extend((w, p + (k,)) for k, w in v.items())
        elif isinstance(v, list):
            stack.extend((w, p + (i,)) for i, w in enumerate(v))
    return sorted(out, key=repr)


def _get(x, path):
    for k in path:
        x = x[k]
    return x


# -- mutations (each returns a short description) ------------------------------------------------------
def mutate_manifest(path: Path, c) -> str:
    m = read_manifest(path)
    if not isinstance(m, dict):
        return "manifest is no mapping (left so)"
    bk = m.get("backends")
    bk = bk if isinstance(bk, list) and bk and all(isinstance(b, dict) for b in bk) else None
    names = [str(b.get("name")) for b in bk] if bk else ["fast"]
    ops = ["replace", "replace", "delete", "add", "format", "policy"] + (["cost", "swap_format_pin"] if bk else [])
    op = c.choice(ops)
    paths = [p for p in _paths(m) if p[0] not in ("manifest_sha256", "created")]
    if op in ("replace", "delete", "add") and not paths:
        op = "format"
    if op in ("replace", "delete", "add"):
        p = c.choice(paths)
        parent, key = _get(m, p[:-1]), p[-1]
        if op == "replace":
            parent[key] = v = weird_value(c, names)
            desc = f"manifest {'.'.join(map(str, p))} = {v!r:.40}"
        elif op == "delete":
            del parent[key]
            desc = f"manifest {'.'.join(map(str, p))} deleted"
        else:
            target = _get(m, p) if isinstance(_get(m, p), dict) else m
            target[c.choice(["extra", "type", "kind", "lambda", "dim", "n_features"])] = v = weird_value(c, names)
            desc = f"manifest key added under {'.'.join(map(str, p))}: {v!r:.40}"
    elif op == "format":
        m["format_version"] = v = c.choice([0, 1, 2, 3, 4, 99, "3", 3.0, 2.0, None, True, -1])
        desc = f"format_version = {v!r}"
    elif op == "cost":
        i = c.integer(0, len(names) - 1)
        bk[i]["cost"] = v = c.choice(
            [0, 0.0, -1, -1e-9, 1e15, 1e16, 1e300, True, "0.1", None, [], LITERAL + "1e999", LITERAL + "NaN", 5e-324]
        )
        desc = f"backend {i} cost = {v!r}"
    elif op == "policy":
        x = c.choice([0.0, 1e-6, 0.5, 1.0, 1e3, 1e300, -1.0, "1", None])
        m["policy"] = v = c.choice(
            [
                {"type": "lam", "lam": x},
                {"type": "budget", "budget": x},
                {"type": "quality_floor", "quality_floor": x},
                {"type": "max_cost", "max_cost": x},
                {"type": "fixed", "backend": c.choice(names + ["nope", 3])},
                {"type": "nonsense"},
                {"type": "lam"},
                {"lam": 1.0},
                "lam",
                None,
                [],
                {"type": "lam", "lam": x, "extra": 1},
            ]
        )
        desc = f"policy = {v!r:.60}"
    else:  # the published digest kept while the format goes back (the pin must still hold)
        m["format_version"] = c.choice([1, 2])
        bk[0]["cost"] = 0.0
        write_manifest(path, m)
        return "format downgraded, cost edited"
    write_manifest(path, m)
    return desc


def mutate_arrays(path: Path, c) -> str:
    arrays = read_arrays(path)
    key = c.choice(sorted(arrays))
    a = arrays[key]
    op = c.choice(
        [
            "nan",
            "inf",
            "zeros",
            "huge",
            "drop_row",
            "drop_col",
            "add_axis",
            "flatten",
            "transpose",
            "empty",
            "scalar",
            "dtype",
            "delete",
            "extra",
            "one_value",
        ]
    )
    if op in ("nan", "inf", "one_value") and a.size and a.dtype.kind in "fiu":
        a = a.astype(np.float64).copy()
        i = c.integer(0, a.size - 1)
        a.flat[i] = {"nan": np.nan, "inf": c.choice([np.inf, -np.inf])}.get(op, c.choice([0.0, -1.0, 1e16, 1e300]))
    elif op == "zeros" and a.dtype.kind in "fiu":
        a = np.zeros_like(a)
    elif op == "huge" and a.dtype.kind in "fiu":
        a = a.astype(np.float64) * c.choice([1e16, 1e300, -1e300])
    elif op == "drop_row" and a.ndim and a.shape[0]:
        a = a[:-1]
    elif op == "drop_col" and a.ndim >= 2:
        a = a[:, :-1]
    elif op == "add_axis":
        a = a[None]
    elif op == "flatten":
        a = a.reshape(-1)
    elif op == "transpose":
        a = a.T
    elif op == "empty" and a.ndim:
        a = a[:0]
    elif op == "scalar":
        a = np.float64(1.0)
    elif op == "dtype":
        try:
            a = a.astype(c.choice([np.int64, np.bool_, np.float16, np.complex128, np.uint8, str]))
        except (ValueError, TypeError):  # text that is no number
            a = a.astype(str)
    elif op == "delete":
        del arrays[key]
        write_arrays(path, arrays)
        write_manifest(path, read_manifest(path))
        return f"array {key} deleted"
    elif op == "extra":
        arrays["extra"] = np.zeros(3)
        key = "extra"
    else:
        op = "unchanged"
    arrays[key] = np.asarray(a)
    write_arrays(path, arrays)
    write_manifest(path, read_manifest(path))
    return f"array {key}: {op}"


_NUMBERS = [
    "0",
    "1",
    "-1",
    "2",
    "3",
    "11",
    "12",
    "255",
    "-2",
    "99999999",
    "-99999999",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967296",
    "1e308",
    "1e999",
    "-1e999",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "-0",
    "1e-320",
    "abc",
    "",
    "1.5",
    "23",
    "24",
    "131072",
    "131073",
]


def mutate_model_text(path: Path, c) -> str:
    models = sorted((path / "predictor").glob("*.txt"))
    f = c.choice(models)
    lines = f.read_text().split("\n")
    body_end = lines.index("end of trees") if "end of trees" in lines else len(lines)
    i = c.integer(0, max(0, body_end - 1))
    line = lines[i]
    op = c.choice(
        [
            "token",
            "token",
            "token",
            "bump",
            "drop_token",
            "dup_token",
            "drop_line",
            "dup_line",
            "swap_lines",
            "rename_key",
            "garbage",
            "truncate",
        ]
    )
    key, eq, value = line.partition("=")
    toks = value.split(" ") if eq else []
    if op in ("token", "bump", "drop_token", "dup_token") and toks:
        j = c.integer(0, len(toks) - 1)
        if op == "token":
            toks[j] = c.choice(_NUMBERS)
        elif op == "bump":
            try:
                toks[j] = str(int(toks[j]) + c.choice([-1, 1, 1000]))
            except ValueError:
                toks[j] = toks[j] + "1"
        elif op == "drop_token":
            del toks[j]
        else:
            toks.insert(j, toks[j])
        lines[i] = key + "=" + " ".join(toks)
        desc = f"{f.name} line {i} {key}: {op} -> {lines[i][:60]!r}"
    elif op == "drop_line":
        del lines[i]
        desc = f"{f.name} line {i} ({key[:20]}) deleted"
    elif op == "dup_line":
        lines.insert(i, line)
        desc = f"{f.name} line {i} ({key[:20]}) doubled"
    elif op == "swap_lines" and i + 1 < len(lines):
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
        desc = f"{f.name} lines {i}, {i + 1} swapped"
    elif op == "rename_key" and eq:
        lines[i] = key[:-1] + "=" + value
        desc = f"{f.name} line {i} key {key!r} renamed"
    elif op == "garbage":
        g = c.choice(
            [
                "garbage",
                "Tree=7",
                "Tree=0",
                "end of trees",
                "=",
                "num_leaves=2",
                "tree_sizes=1 1",
                "objective=poisson",
                "\x00",
                "é",
            ]
        )
        lines.insert(i, g)
        desc = f"{f.name} line {i}: {g!r} inserted"
    else:
        text = "\n".join(lines)
        cut = c.integer(0, max(0, len(text) - 1))
        f.write_text(text[:cut])
        write_manifest(path, read_manifest(path))
        return f"{f.name} truncated at {cut}"
    f.write_text("\n".join(lines))
    write_manifest(path, read_manifest(path))
    return desc


MUTATORS = {"manifest": mutate_manifest, "arrays": mutate_arrays, "model_text": mutate_model_text}


# -- the promise ------------------------------------------------------------------------------------
def outcome(path: Path, **load_kw) -> str:
    """ "refused" or "routed"; raises AssertionError when the promise does not hold."""
    try:
        r = Router.load(path, **load_kw)
    except ArtifactError as e:
        msg = str(e)
        assert str(path) in msg, f"the error does not name the artifact: {msg}"
        assert "\n" not in msg.strip() and "Traceback" not in msg, msg
        return "refused"
    decisions = r.route(ROUTE_PROMPTS)
    names = list(r.backend_names)
    for d in decisions:
        assert d.backend in names, (d.backend, names)
        assert list(d.predicted_quality) == names
        assert all(math.isfinite(v) for v in d.predicted_quality.values()), d.predicted_quality
        json.dumps(d.to_dict(), allow_nan=False)
    assert isinstance(r.cost_unit, str)
    return "routed"


def try_case(base: Path, kind: str, c, workdir: Path, **load_kw) -> tuple[str, str]:
    """Copy ``base``, mutate it once to three times, check the promise -> (description, outcome)."""
    path = workdir / "artifact"
    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(base, path)
    descs = [MUTATORS[kind](path, c) for _ in range(c.integer(1, 3))]
    return "; ".join(descs), outcome(path, **load_kw)


# -- small artifacts --------------------------------------------------------------------------------
def build_artifacts(root: Path) -> dict[str, Path]:
    """A ridge router (lexical features) and a stack router (kNN + TF-IDF ridge, LightGBM final)."""
    from t2iroute.predictors import StackPredictor
    from t2iroute.training.table import pivot

    from .conftest import make_table, make_tiny_router

    out = {"ridge": root / "ridge"}
    make_tiny_router(specs=None).save(out["ridge"])
    r = make_tiny_router(specs=None)
    M = pivot(make_table(n_prompts=60), "clip")
    r.predictor = StackPredictor(
        base=[{"type": "knn", "n_neighbors": 5}, {"type": "tfidf_ridge"}],
        final={"type": "lgbm", "params": {"n_estimators": 3, "num_leaves": 4, "min_child_samples": 5}, "n_jobs": 1},
        n_folds=2,
    ).fit(r.featurizer.transform(list(M.prompts)), M.scores, texts=list(M.prompts))
    out["stack"] = root / "stack"
    r.save(out["stack"])
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return build_artifacts(tmp_path_factory.mktemp("fuzz"))


FUZZ = settings(
    derandomize=True, database=None, deadline=None, print_blob=True, suppress_health_check=list(HealthCheck)
)


def _run(base: Path, kind: str, data):
    with tempfile.TemporaryDirectory() as d:
        desc, got = try_case(base, kind, HypothesisChooser(data), Path(d))
        assert got in ("refused", "routed"), desc


def test_unmutated_artifacts_route(artifacts):
    for path in artifacts.values():
        assert outcome(path) == "routed"


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_manifest_mutations(artifacts, data):
    _run(artifacts[data.draw(st.sampled_from(["ridge", "stack"]))], "manifest", data)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_array_mutations(artifacts, data):
    _run(artifacts[data.draw(st.sampled_from(["ridge", "stack"]))], "arrays", data)


@settings(FUZZ, max_examples=400)
@given(data=st.data())
def test_lightgbm_model_text_mutations_in_process(artifacts, data):
    _run(artifacts["stack"], "model_text", data)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_pinned_artifacts_refuse_every_mutation(artifacts, data):
    """With the publisher's digest pinned, any change at all is refused (a pin is a pin)."""
    base = artifacts[data.draw(st.sampled_from(["ridge", "stack"]))]
    pin = read_manifest(base)["manifest_sha256"]
    kind = data.draw(
        st.sampled_from(["manifest", "arrays", "model_text"] if base.name == "stack" else ["manifest", "arrays"])
    )
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "artifact"
        shutil.copytree(base, path)
        c = HypothesisChooser(data)
        MUTATORS[kind](path, c)
        try:
            if read_manifest(path).get("manifest_sha256") == pin:
                return  # the mutation changed nothing (a value replaced by itself)
        except (ValueError, AttributeError):
            pass
        with pytest.raises(ArtifactError) as e:
            Router.load(path, expected_sha256=pin)
        assert str(path) in str(e.value)
