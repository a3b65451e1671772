"""Probe the remote ``openai_images`` backend against a misbehaving upstream (issue 22, items 3, 4, 6).

    python scripts/probe_upstream.py            # < 3 min on one core; exit 0 when every case held

Runs every behaviour of the fake upstream in ``tests/test_remote_upstream.py`` (hang, trickle,
garbage, huge and compressed bodies, redirects, error bodies echoing the key, wrong sizes,
decompression bombs, base64 garbage...) against several backend configs (sizes, keys, verbose,
retries and deadlines beyond the bounds), through the backend and through ``Router.generate``'s
fallback, plus config and artifact cases. A case holds when: the outcome is the expected one (an
image of the right size, or one ``RemoteBackendError`` of the expected category naming the backend
and, for an HTTP answer, its status); it finished within ``deadline_s`` + 1 s; the key (in any form)
is in no error text, fallback record, log record or stderr output, nor the upstream's body or any
URL unless ``verbose``; at most ``retries + 1`` requests; the key never reached a redirect target;
memory stayed bounded. Prints one JSON line {"area": "upstream", "tried", "held", "not_held"}.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.test_remote_upstream import (  # noqa: E402
    BODY_MARKER,
    KEY_ENV,
    MODES,
    FakeUpstream,
    bomb_png,
    gzip_bomb,
    leaks,
    png,
)

SLACK_S = 1.0
HUGE = {"huge", "huge_declared", "huge_b64", "gzip_bomb"}

CONFIGS = {
    "plain": dict(key="sentinel123", size="64x64", timeout_s=1.0, deadline_s=1.5, retries=1),
    "verbose_sk": dict(
        key="sk-probeABCDEF123456", size="64x64", timeout_s=0.4, deadline_s=1.0, retries=3, verbose=True
    ),
    "nosize_quoted_key": dict(key="a/b+c=d&e", size=None, timeout_s=5.0, deadline_s=1.5, retries=0),
    "clamped": dict(key="sentinel123", size="32x48", timeout_s=1e9, deadline_s=1.2, retries=10**6),
    "verbose_nosize": dict(key="tok_0123456789", size=None, timeout_s=1.0, deadline_s=1.0, retries=1, verbose="true"),
}

_STATUS_CAT = {
    400: "bad_request",
    401: "auth",
    403: "auth",
    404: "not_found",
    408: "timeout",
    413: "bad_request",
    422: "bad_request",
    429: "rate_limited",
    500: "upstream_error",
    502: "upstream_error",
    503: "upstream_error",
}


def expected(mode: str, cfg: dict) -> tuple[str, int | None]:
    """(category or 'ok', HTTP status the error must name or None)"""
    sized = cfg["size"] is not None
    if mode.startswith("echo"):
        st = int(mode[4:])
        return _STATUS_CAT[st], st
    if mode.startswith("redirect"):
        return "redirect", (301 if mode.endswith("301") else 307)
    table = {
        "ok": "ok",
        "ok_bad_info": "ok",
        "ok_jpeg": "ok",
        "hang": "timeout",
        "trickle": "timeout",
        "trickle_headers": "timeout",
        "close": "connection",
        "garbage": "bad_response",
        "no_data": "bad_response",
        "data_str": "bad_response",
        "b64_not_str": "bad_response",
        "deep_json": "bad_response",
        "not_utf8": "bad_response",
        "brotli": "bad_response",
        "b64_garbage": "bad_image",
        "b64_text": "bad_image",
        "truncated": "bad_image",
        "gif": "bad_image",
        "huge": "too_large",
        "huge_declared": "too_large",
        "huge_b64": "too_large",
        "gzip_bomb": "too_large",
        "wrong_size": "bad_image" if sized else "ok",  # 4000x4000: within MAX_PIXELS when no size is set
        "one_px_off": "bad_image" if sized else "ok",
        "bomb": "bad_image" if sized else "too_large",
    }
    return table[mode], None


def make_backend(url: str, mode: str, cfg: dict):
    from t2iroute.backends.remote import OpenAIImagesBackend

    spec = {k: v for k, v in cfg.items() if k != "key"}
    return OpenAIImagesBackend("remote", f"{url}/{mode}", api_key_env=KEY_ENV, **spec)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def text(self, level=logging.DEBUG) -> str:
        return "\n".join(r.getMessage() for r in self.records if r.levelno >= level)


@contextlib.contextmanager
def captured():
    """Log records (every level) and stderr of the block."""
    cap, root = _Capture(), logging.getLogger()
    old = root.level
    root.addHandler(cap)
    root.setLevel(logging.DEBUG)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            yield cap, err
    finally:
        root.removeHandler(cap)
        root.setLevel(old)


def check_text(text: str, where: str, url: str, key: str, verbose: bool, problems: list[str]) -> None:
    bad = leaks(text, url, key, verbose=verbose)
    if bad:
        problems.append(f"{where} shows {bad}")


def _remote(name: str, default=None):
    """A name from t2iroute.backends.remote (a default where an older version lacks it: the probe also
    runs against code from before the fix, to show what it catches)."""
    from t2iroute.backends import remote

    return getattr(remote, name, default)


def run_case(up: FakeUpstream, target: FakeUpstream, mode: str, cname: str, cfg: dict) -> list[str]:
    RemoteBackendError = _remote("RemoteBackendError", type("Missing", (Exception,), {}))
    problems: list[str] = []
    key, verbose = cfg["key"], str(cfg.get("verbose", "")).lower() in ("true", "1")
    os.environ[KEY_ENV] = key
    try:
        with captured() as (cap0, _):  # the clamping warning of the "clamped" config
            be = make_backend(up.url, mode, cfg)
    except Exception as e:  # noqa: BLE001
        return [f"config refused: {type(e).__name__}: {str(e)[:80]}"]
    check_text(cap0.text(), "config warning", up.url, key, False, problems)
    max_body = getattr(be, "max_body_bytes", _remote("MAX_BODY_BYTES", 48 * 2**20))
    with up.lock:
        up.requests.clear()
    target.requests.clear()
    want, status = expected(mode, cfg)
    trace_mem = mode in HUGE
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace_mem:
        tracemalloc.start()
    with captured() as (cap, err_out):
        t0 = time.monotonic()
        try:
            gens, err = be.generate(["a probe prompt"], seeds=[0]), None
        except Exception as e:  # noqa: BLE001 -- judged below
            gens, err = None, e
        wall = time.monotonic() - t0
    if trace_mem:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if peak > max_body * 2 + 16 * 2**20:
            problems.append(f"peak traced memory {peak >> 20} MB")
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    if grown > 200:
        problems.append(f"RSS grew {grown:.0f} MB")
    deadline = min(cfg["deadline_s"], 600.0)  # the promised bounds, whatever the config says
    retries = min(cfg["retries"], 5)
    if wall > deadline + SLACK_S:
        problems.append(f"took {wall:.1f}s > deadline_s={deadline:g}+{SLACK_S:g}")
    if want == "ok":
        if err is not None:
            problems.append(f"expected an image, got {type(err).__name__}: {str(err)[:120]}")
        else:
            exp = tuple(int(x) for x in cfg["size"].split("x")) if cfg["size"] else None
            if exp and gens[0].image.size != exp:
                problems.append(f"image {gens[0].image.size} != {exp}")
    else:
        if not isinstance(err, RemoteBackendError):
            problems.append(f"expected {want}, got {type(err).__name__ if err else 'an image'}")
        else:
            text = str(err)
            if err.category != want:
                problems.append(f"category {err.category} != {want} ({text[:100]})")
            if not text.startswith("backend 'remote': "):
                problems.append("error does not name the backend first")
            if status is not None and (err.status != status or f"HTTP {status} {want}" not in text):
                problems.append(f"error does not say HTTP {status} {want}: {text[:100]}")
            if verbose and mode.startswith("echo") and BODY_MARKER not in text:
                problems.append("verbose error lacks the upstream's answer")
    if err is not None:
        check_text(str(err) + repr(err.args), "error", up.url, key, verbose, problems)
    check_text(cap.text(logging.WARNING) + err_out.getvalue(), "warning logs/stderr", up.url, key, verbose, problems)
    check_text(cap.text(logging.DEBUG), "debug logs", "never-a-url", key, True, problems)  # key never, any level
    with up.lock:
        n = len(up.requests)
    if n > retries + 1:
        problems.append(f"{n} requests > retries+1={retries + 1}")
    if target.requests:
        problems.append(f"redirect target got {len(target.requests)} request(s)")
    return problems


def run_router_case(up: FakeUpstream, mode: str, cfg: dict) -> list[str]:
    """The same upstream behind Router.generate: the fallback record and logs hold no key/URL/body."""
    from tests.conftest import BlankBackend as Local, make_tiny_router

    problems: list[str] = []
    key = cfg["key"]
    os.environ[KEY_ENV] = key
    router = make_tiny_router(specs=None)
    router.backends = {"slow": make_backend(up.url, mode, cfg), "fast": Local("fast"), "mid": Local("mid")}
    with captured() as (cap, err_out):
        try:
            res = router.generate("two birds on a wire", lam=0.0)
        except Exception as e:  # noqa: BLE001
            return [f"Router.generate raised {type(e).__name__}"]
    if res.backend == "slow" or not res.fallbacks or res.fallbacks[0]["backend"] != "slow":
        problems.append(f"no fallback recorded (backend {res.backend})")
    rec = json.dumps(res.fallbacks)
    want, _ = expected(mode, cfg)
    if want not in rec:
        problems.append(f"fallback record lacks the category {want}")
    check_text(rec, "fallback record", up.url, key, False, problems)
    check_text(cap.text(logging.WARNING) + err_out.getvalue(), "warning logs/stderr", up.url, key, False, problems)
    return problems


def config_cases() -> list[tuple[str, list[str]]]:
    """Bounds whatever a config says; junk refused with an error naming the backend."""
    from t2iroute.backends.remote import OpenAIImagesBackend
    from t2iroute.errors import ConfigError

    MAX_DEADLINE_S, MAX_RETRIES = _remote("MAX_DEADLINE_S", 600.0), _remote("MAX_RETRIES", 5)

    out = []
    clamp = [
        ({"retries": 10**6}, "retries", MAX_RETRIES),
        ({"retries": 5.0}, "retries", 5),
        ({"deadline_s": 1e9}, "deadline_s", MAX_DEADLINE_S),
        ({"deadline_s": math.inf}, "deadline_s", MAX_DEADLINE_S),
        ({"deadline_s": None}, "deadline_s", MAX_DEADLINE_S),
        ({"timeout_s": 1e12}, "timeout_s", MAX_DEADLINE_S),
        ({"retries": "3"}, "retries", 3),
    ]
    for kw, attr, val in clamp:
        try:
            got = getattr(OpenAIImagesBackend("r", "http://127.0.0.1:9", **kw), attr)
            out.append((f"config {kw}", [] if got == val else [f"{attr}={got}, expected {val}"]))
        except Exception as e:  # noqa: BLE001
            out.append((f"config {kw}", [f"raised {type(e).__name__}: {e}"]))
    junk = [
        {"deadline_s": math.nan},
        {"timeout_s": math.nan},
        {"timeout_s": 0},
        {"deadline_s": -1},
        {"retries": -1},
        {"retries": math.nan},
        {"timeout_s": "soon"},
        {"retries": [1]},
        {"width": -5},
        {"width": "wide"},
        {"base_url": "http://"},
        {"base_url": "http://h:99999999"},
        {"base_url": "file:///etc/passwd"},
    ]
    for kw in junk:
        spec = {"base_url": "http://127.0.0.1:9", **kw}
        try:
            OpenAIImagesBackend("r", **spec)
            out.append((f"config {kw}", ["accepted"]))
        except ConfigError as e:
            out.append((f"config {kw}", [] if "backend 'r'" in str(e) else [f"error does not name it: {e}"]))
        except Exception as e:  # noqa: BLE001
            out.append((f"config {kw}", [f"raised {type(e).__name__}, not ConfigError"]))
    return out


def artifact_cases() -> list[tuple[str, list[str]]]:
    """An artifact cannot turn verbose on or lift the bounds."""
    import tempfile

    from t2iroute import Router
    from tests.conftest import make_tiny_router

    out = []
    spec = {
        "type": "openai_images",
        "size": "64x64",
        "verbose": True,
        "retries": 10**9,
        "deadline_s": 1e12,
        "timeout_s": 1e12,
    }
    with tempfile.TemporaryDirectory() as d:
        make_tiny_router(specs={"slow": spec}).save(Path(d) / "router")
        logging.disable(logging.WARNING)
        try:
            be = Router.load(Path(d) / "router").backends["slow"]
        except Exception as e:  # noqa: BLE001
            return [("artifact verbose/bounds", [f"Router.load raised {type(e).__name__}"])]
        finally:
            logging.disable(logging.NOTSET)
    out.append(
        ("artifact verbose=true", [] if getattr(be, "verbose", False) is False else ["artifact turned verbose on"])
    )
    out.append(
        (
            "artifact retries/deadline",
            []
            if (be.retries, be.deadline_s, be.timeout_s) == (5, 600, 600)
            else [f"{(be.retries, be.deadline_s, be.timeout_s)}"],
        )
    )
    return out


def main() -> int:
    t_start = time.monotonic()
    png(64, 64), png(32, 48), png(4000, 4000, "1"), bomb_png(), gzip_bomb()  # built before any measurement
    from PIL import Image

    pil_limit = Image.MAX_IMAGE_PIXELS
    results: list[tuple[str, list[str]]] = []
    with FakeUpstream(max_s=20) as up, FakeUpstream(max_s=5) as target:
        up.redirect_to = target.url
        for cname, cfg in CONFIGS.items():
            for mode in MODES:
                results.append((f"{cname}/{mode}", run_case(up, target, mode, cname, cfg)))
        for mode in ("echo401", "echo500", "echo429", "garbage", "trickle", "bomb", "huge", "redirect"):
            results.append((f"router/{mode}", run_router_case(up, mode, CONFIGS["plain"])))
    with captured():
        results += config_cases()
    results += artifact_cases()
    results.append(("PIL global limit untouched", [] if Image.MAX_IMAGE_PIXELS == pil_limit else ["changed"]))
    not_held = [f"{name}: {'; '.join(p)}" for name, p in results if p]
    print(
        json.dumps(
            {
                "area": "upstream",
                "tried": len(results),
                "held": len(results) - len(not_held),
                "not_held": not_held,
                "seconds": round(time.monotonic() - t_start, 1),
            }
        )
    )
    return 0 if not not_held else 1


if __name__ == "__main__":
    sys.exit(main())
