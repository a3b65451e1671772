"""The runtime API: Router.load with backends, generate, fallback, threads; the route/generate CLI."""

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from t2iroute import GenerateResult, Router
from t2iroute.backends import DiffusionInfo, Generation
from t2iroute.backends.diffusers_backend import _PIPELINES
from t2iroute.cli import main
from t2iroute.cli import split_prompts as _split_prompts
from t2iroute.errors import ArtifactError, ConfigError, GenerationError
from tests.conftest import TINY_SPECS, make_table

PROMPTS = [
    "a cat",
    "two birds on a wire",
    "a sign saying 'hello'",
    "three apples on a table",
    "portrait of a woman",
    "a castle",
    "blue sky",
    "robot",
]


def test_artifact_carries_backends_and_generates(tiny_artifact):
    router = Router.load(tiny_artifact)
    assert set(router.backends) == {"fast", "mid", "slow"}
    assert router.backend_specs == TINY_SPECS
    res = router.generate("two birds on a wire", seed=1)
    assert isinstance(res, GenerateResult) and isinstance(res.image, Image.Image)
    assert res.backend == res.decision.backend and not res.fell_back
    assert res.steps_budget == TINY_SPECS[res.backend]["steps"]
    assert 1 <= res.steps_run <= res.steps_budget and res.latency_s > 0
    d = json.loads(json.dumps(res.to_dict()))
    assert d["decision"]["backend"] == res.backend and set(d["decision"]["predicted_quality"]) == set(
        router.backend_names
    )
    assert {"features", "predict", "decide"} <= set(d["decision"]["timings_s"])


def test_early_stop_flag_reaches_the_result(tiny_artifact):
    router = Router.load(tiny_artifact)
    res = router.generate("a cat", seed=0, backend="slow")  # threshold 0.5: stops after the guard
    assert res.backend == "slow" and res.steps_budget == 8
    assert res.stopped_early and res.steps_run < 8


def test_one_pipeline_for_every_budget(tiny_artifact):
    router = Router.load(tiny_artifact)
    for b in router.backend_names:
        router.generate("a cat", backend=b)
    shared = {id(router.backends[b]._shared) for b in router.backend_names}
    assert len(shared) == 1
    assert sum(1 for k in _PIPELINES if k[0] == "tiny") == 1


def test_load_overrides_and_extends_backends(tiny_artifact):
    router = Router.load(
        tiny_artifact,
        backends={"fast": {**TINY_SPECS["fast"], "steps": 3}, "baseline": {**TINY_SPECS["mid"], "steps": 6}},
    )
    assert router.backends["fast"].steps == 3 and router.backends["mid"].steps == 4
    res = router.generate("a cat", seed=0, backend="baseline")
    assert res.backend == "baseline" and res.steps_budget == 6
    with pytest.raises(ConfigError, match="'nope' is not configured"):
        router.generate("a cat", backend="nope")


def test_routeonly_artifact_routes_but_does_not_generate(routeonly_artifact):
    router = Router.load(routeonly_artifact)
    assert router.route("a cat").backend in router.backend_names
    with pytest.raises(ConfigError, match=r"not configured \(unconfigured: \['fast', 'mid', 'slow'\]\)"):
        router.generate("a cat")


def test_damaged_backend_config_in_artifact(tiny_artifact, tmp_path):
    import shutil

    path = tmp_path / "r"
    shutil.copytree(tiny_artifact, path)
    m = json.loads((path / "manifest.json").read_text())
    m["backends"][0]["spec"] = {"type": "nonsense"}
    from t2iroute.router.artifact import manifest_digest

    m["manifest_sha256"] = manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="backend 'fast' config unusable.*unknown backend type 'nonsense'"):
        Router.load(path)


class _Fails:
    def __init__(self, name, error):
        self.name, self.error, self.calls = name, error, 0

    def generate(self, prompts, *, seeds, **opts):
        self.calls += 1
        raise self.error


class _Works:
    def __init__(self, name):
        self.name = name

    def generate(self, prompts, *, seeds, **opts):
        img = Image.new("RGB", (8, 8), (seeds[0] % 255, 0, 0))
        return [
            Generation(
                image=img,
                prompt=prompts[0],
                seed=seeds[0],
                backend=self.name,
                latency_s=0.01,
                diffusion=DiffusionInfo(steps_run=2, steps_budget=2, nfe=4, stopped_early=False),
            )
        ]


def test_fallback_to_next_best_on_failure(tiny_artifact):
    router = Router.load(tiny_artifact)
    d = router.route("two birds on a wire")
    ranked = sorted(router.backend_names, key=lambda b: -d.utility[b])
    assert ranked[0] == d.backend
    oom = _Fails(ranked[0], RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    router.backends = {ranked[0]: oom, ranked[1]: _Works(ranked[1]), ranked[2]: _Works(ranked[2])}
    res = router.generate("two birds on a wire", seed=7)
    assert res.backend == ranked[1] and res.decision.backend == ranked[0] and oom.calls == 1
    assert res.fallbacks == [
        {"backend": ranked[0], "error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    ]
    with pytest.raises(GenerationError, match=f"backend '{ranked[0]}' failed: RuntimeError: CUDA out of memory"):
        router.generate("two birds on a wire", fallback=False)
    router.backends = {b: _Fails(b, MemoryError("no RAM")) for b in router.backend_names}
    with pytest.raises(GenerationError, match="every backend failed.*MemoryError: no RAM.*MemoryError"):
        router.generate("two birds on a wire")


@pytest.mark.parametrize("seed", [1.5, "3", None, True])
def test_bad_seed(tiny_artifact, seed):
    with pytest.raises(TypeError, match="seed must be an integer"):
        Router.load(tiny_artifact).generate("a cat", seed=seed)


@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        ("  ", ValueError, "empty or whitespace"),
        ("x" * 10_000, ValueError, "10000 characters"),
        (b"a cat", TypeError, "string"),
        (42, TypeError, "string"),
    ],
)
def test_generate_bad_prompts(tiny_artifact, bad, exc, msg):
    with pytest.raises(exc, match=msg):
        Router.load(tiny_artifact).generate(bad)


def test_route_and_generate_from_threads(tiny_artifact):
    router = Router.load(tiny_artifact)
    serial = [router.route(p, lam=0.5).to_dict() for p in PROMPTS]
    serial_img = {
        p: np.asarray(router.generate(p, seed=3, backend=b).image)
        for p, b in zip(PROMPTS[:6], ["fast", "mid", "slow"] * 2)
    }
    start = threading.Barrier(8)

    def route(p):
        start.wait()
        return [router.route(p, lam=0.5).to_dict() for _ in range(5)]

    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(route, PROMPTS))
    for want, runs in zip(serial, got):
        for d in runs:
            assert d["backend"] == want["backend"]
            assert d["predicted_quality"] == pytest.approx(want["predicted_quality"], rel=1e-9)

    def gen(pb):
        p, b = pb
        return p, np.asarray(router.generate(p, seed=3, backend=b).image)

    with ThreadPoolExecutor(6) as ex:
        for p, img in ex.map(gen, zip(PROMPTS[:6], ["fast", "mid", "slow"] * 2)):
            np.testing.assert_array_equal(img, serial_img[p])


# -- command line ---------------------------------------------------------------------------


def test_split_prompts_from_overrides():
    p, rest = _split_prompts(
        ["a red car", "artifact=/x", "lam=0.5", "+foo=1", "two words", "--cfg", "job", "backends=[tiny_10]", "E = mc2"]
    )
    assert p == ["a red car", "two words", "E = mc2"]
    assert rest == ["artifact=/x", "lam=0.5", "+foo=1", "--cfg", "job", "backends=[tiny_10]"]


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """t2iroute train on a table whose backends are named like the tiny backend configs."""
    tmp = tmp_path_factory.mktemp("train")
    t = make_table(n_prompts=150)
    t["backend"] = t.backend.map({"fast": "tiny_10", "mid": "tiny_50_es", "slow": "tiny_20"})
    t.to_parquet(tmp / "table.parquet")
    rc = main(
        [
            "train",
            "data=custom",
            f"data.path={tmp / 'table.parquet'}",
            "features=[lexical]",
            "predictor=ridge",
            "backends=[tiny_10,tiny_20,tiny_50_es]",
            f"out_dir={tmp / 'out'}",
        ]
    )
    assert rc == 0
    return tmp


def test_cli_train_stores_backends_then_route_and_generate(trained_tiny, tmp_path, capsys):
    art = trained_tiny / "out" / "router"
    m = json.loads((art / "manifest.json").read_text())
    assert {b["name"]: b["spec"]["steps"] for b in m["backends"]} == {"tiny_10": 10, "tiny_20": 20, "tiny_50_es": 50}
    capsys.readouterr()
    assert main(["route", "a red car", f"artifact={art}", "lam=0"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["prompt"] == "a red car" and d["backend"] in {"tiny_10", "tiny_20", "tiny_50_es"}
    assert set(d["predicted_quality"]) == {"tiny_10", "tiny_20", "tiny_50_es"} and d["lambda"] == 0
    assert main(["route", "a cat", "three apples", f"artifact={art}", "lam=1e9"]) == 0
    ds = json.loads(capsys.readouterr().out)
    assert [x["backend"] for x in ds] == ["tiny_10", "tiny_10"]  # cheapest at a huge lambda
    out = tmp_path / "sub" / "img.png"
    assert (
        main(
            [
                "generate",
                "a red car",
                f"artifact={art}",
                f"out={out}",
                "seed=2",
                "backend=tiny_50_es",
                "scorer=clip_tiny",
            ]
        )
        == 0
    )
    g = json.loads(capsys.readouterr().out)
    assert Image.open(out).size == (64, 64) and g["out"] == str(out)
    assert g["backend"] == "tiny_50_es" and g["steps_budget"] == 50 and g["stopped_early"] is True
    assert g["steps_run"] < 50 and "clip" in g["score"] and g["latency_s"] > 0


def test_cli_route_prompts_file(trained_tiny, tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\na dog\n")
    assert main(["route", f"artifact={trained_tiny / 'out' / 'router'}", f"prompts_file={f}"]) == 0
    assert [d["prompt"] for d in json.loads(capsys.readouterr().out)] == ["a cat", "a dog"]


def test_cli_train_rejects_backends_not_in_table(trained_tiny, tmp_path, capsys):
    rc = main(
        [
            "train",
            "data=custom",
            f"data.path={trained_tiny / 'table.parquet'}",
            "features=[lexical]",
            "predictor=ridge",
            "backends=[tiny_10,sd15_50]",
            f"out_dir={tmp_path}",
        ]
    )
    assert rc == 2
    assert "['sd15_50'] are not backends of the table" in capsys.readouterr().err


def _bad_cases(art, routeonly, tmp_path):
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(art, damaged)
    (damaged / "predictor" / "arrays.npz").write_bytes(b"garbage")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(bytes(range(128, 256)))
    existing = tmp_path / "keep.png"
    existing.write_bytes(b"an older image")
    return [
        (["route", "", f"artifact={art}"], "prompt #0 is empty or whitespace"),
        (["route", "   ", f"artifact={art}"], "prompt #0 is empty or whitespace"),
        (["route", "x" * 10_000, f"artifact={art}"], "10000 characters"),
        (["route", f"artifact={art}", f"prompts_file={binary}"], "not UTF-8 text"),
        (["route", "a cat"], "artifact=DIR is required"),
        (["route", f"artifact={art}"], "no prompt given"),
        (["route", "a cat", f"artifact={tmp_path / 'missing'}"], "no such folder"),
        (["route", "a cat", f"artifact={damaged}"], "predictor/arrays.npz is damaged"),
        (["generate", "a cat", f"artifact={routeonly}", f"out={existing}"], "is not configured"),
        (["generate", "a cat", f"artifact={art}", f"out={tmp_path / 'x.txt'}"], "unknown image type '.txt'"),
        (["generate", "a cat", "a dog", f"artifact={art}"], "out_dir=DIR is needed for several prompts"),
        (["generate", "a cat", f"artifact={art}", "backend=nope", f"out={existing}"], "'nope' is not configured"),
    ]


def test_cli_bad_input_exit_2_one_line(trained_tiny, routeonly_artifact, tmp_path, capsys):
    art = trained_tiny / "out" / "router"
    for argv, msg in _bad_cases(art, routeonly_artifact, tmp_path):
        capsys.readouterr()
        assert main(argv) == 2, argv
        cap = capsys.readouterr()
        lines = [ln for ln in cap.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"t2iroute {argv[0]}: error: ") and msg in lines[0], (
            argv,
            cap.err,
        )
        assert cap.out == ""
    assert (tmp_path / "keep.png").read_bytes() == b"an older image"  # a failed generate keeps what was there


def test_cli_subprocess_error_is_one_line(routeonly_artifact, tmp_path):
    """The installed entry point, as a user runs it: exit 2, one stderr line, nothing on stdout."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "t2iroute.cli",
            "generate",
            "a red car",
            f"artifact={routeonly_artifact}",
            f"out={tmp_path / 'a.png'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "ConfigError: backend" in r.stderr and "not configured" in r.stderr
    assert not (tmp_path / "a.png").exists()


def test_cli_app_rejects_unknown_arguments(capsys):
    assert main(["app", "prot=8501"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown argument 'prot=8501'" in err


def test_warmup_loads_the_embedding_model_even_when_cached():
    from t2iroute.features import build_featurizer

    f = build_featurizer({"embedding": {}})
    f.transform(["a photo of a cat"])  # fills the disk cache
    g = build_featurizer({"embedding": {}})
    g.transform(["a photo of a cat"])  # a cache hit loads no model...
    assert g.parts[0]._st is None
    g.warmup()  # ...warmup does
    assert g.parts[0]._st is not None
