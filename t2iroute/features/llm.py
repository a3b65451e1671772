"""LLM prompt-complexity features from a local LLM (Ollama or any OpenAI-compatible server).

A versioned rubric asks the model for JSON; answers are validated, cached in SQLite keyed by
(provider, model, template version, prompt), and become features next to the embeddings. Where
the server returns token log-probabilities, the expected complexity over the digits 1-5 is a
feature too (smoother than the argmax digit).

Faults never stop routing. When the LLM is unreachable, hangs, answers HTTP errors or garbage,
one warning is logged, lexical estimates stand in and the rows are flagged ``imputed``. Each
``transform`` call has an overall deadline (``deadline_s``): prompts not answered by then are
imputed and the call returns (hung requests are abandoned, never waited for). Every request is
bounded in total, not per read: a reply that trickles in byte by byte is cut at the request's
``timeout`` or the call's deadline, whichever comes first, and a reply larger than
:data:`MAX_REPLY_BYTES` is cut too. Redirects are never followed. After the first hard failure in
a call (connection refused, a timeout, HTTP 5xx after ``retries``, no valid answer to the first
:data:`GARBLED_AFTER` prompts) the remaining prompts of that call are imputed without asking.
``last_stats_`` says how many rows were imputed and why; reasons never carry the API key or a
reply's body.

Timing (``deadline_s``, ``timeout``, ``retries``, ``backoff_s``, ``concurrency``) is the loading
user's: a router artifact's values are clamped to :data:`ARTIFACT_BOUNDS` when it is loaded, and
the user's own settings (``local={"llm": {"deadline_s": 5}}``, ``llm.deadline_s=5`` on the
command line) replace them.
A damaged, locked, unwritable or foreign cache file, or a cached value that is not a valid answer,
is logged once and worked around (see :class:`LLMCache`).

Rubrics: ``full`` (7 fields, ~50 output tokens) and ``score`` (one digit, 1 output token: fast
enough for 10k-prompt tables on a CPU).
"""

from __future__ import annotations

import hashlib
import contextlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

TEMPLATE_VERSION = "rubric-v1"

#: The most bytes one reply may hold (headers included); more is a bad reply, never read on.
MAX_REPLY_BYTES = 4 * 2**20
#: A call stops asking once this many prompts got no valid answer and none did (a garbled LLM).
GARBLED_AFTER = 3
#: What a router artifact may set at most (``deadline_s: null`` counts as more than the bound);
#: the loading user's own settings are not bounded by these.
ARTIFACT_BOUNDS = {"deadline_s": 60.0, "timeout": 60.0, "retries": 5, "backoff_s": 5.0, "concurrency": 8}

FIELDS = {  # name: (min, max)
    "complexity": (1, 5),
    "objects": (0, 20),
    "attribute_bindings": (0, 20),
    "spatial_relations": (0, 20),
    "counting": (0, 20),
    "text_to_render": (0, 1),
    "detail_style": (1, 5),
}
_RANGES = {**FIELDS, "expected_complexity": (1, 5)}

SYSTEM = "You rate how hard a text-to-image prompt is for an image generator. Answer with JSON only."
FULL_TEMPLATE = """Rate this text-to-image prompt.
complexity: 1 (one simple object) to 5 (many objects, relations, counts, text).
objects: number of distinct objects. attribute_bindings: attributes tied to specific objects
(e.g. "red cube and blue ball" = 2). spatial_relations: relations like left of, on top of.
counting: objects with an exact count. text_to_render: 1 if the image must show written text, else 0.
detail_style: 1 (plain) to 5 (fine detail or demanding style).

Prompt: {prompt}"""
SCORE_TEMPLATE = """How hard is this prompt for an image generator, from 1 (one simple object) to 5
(many objects, relations, counts, text)? Answer with one digit.

Prompt: {prompt}
Answer:"""


def full_schema() -> dict:
    return {
        "type": "object",
        "properties": {k: {"type": "integer", "minimum": lo, "maximum": hi} for k, (lo, hi) in FIELDS.items()},
        "required": list(FIELDS),
    }


class LLMError(RuntimeError):
    """The LLM could not give a valid answer (unreachable, timeout, garbled after retries)."""


class BadResponse(LLMError):
    """The server's reply is not what the API promises (not JSON, wrong shape): retried, then a hard
    failure, like HTTP 5xx."""


def check_answer(obj: Any, fields: Sequence[str]) -> dict[str, float]:
    """``obj`` as ``{field: float}`` over ``fields`` (and ``expected_complexity`` when present);
    raises ValueError for a non-object, a missing field or a value outside its range."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    out = {}
    for k in [*fields, *(["expected_complexity"] if "expected_complexity" in obj else [])]:
        lo, hi = _RANGES[k]
        v = obj.get(k)
        if isinstance(v, bool) and k == "text_to_render":
            v = int(v)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
            # a number is shown; anything else only by its type (a reply's text never reaches a log)
            shown = f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
            raise ValueError(f"field {k}={shown} missing or outside [{lo}, {hi}]")
        out[k] = float(v)
    return out


def parse_answer(text: str, rubric: str) -> dict[str, float]:
    """Validate an answer; raises ValueError for garbled or out-of-range output."""
    if rubric == "score":
        m = re.search(r"[1-5]", text or "")
        if not m:
            raise ValueError(f"no digit 1-5 in the answer ({len(text or '')} characters)")
        return {"complexity": float(m.group())}
    m = re.search(r"\{.*\}", text or "", re.S)
    if not m:
        raise ValueError(f"no JSON object in the answer ({len(text or '')} characters)")
    try:
        obj = json.loads(m.group())
    except (ValueError, RecursionError) as e:  # the message would quote the reply
        raise ValueError(f"the answer's JSON object is malformed ({type(e).__name__})") from None
    if isinstance(obj, dict):
        obj.pop("expected_complexity", None)  # ours, from the logprobs; not the model's to say
    return check_answer(obj, list(FIELDS))


def expected_digit(logprobs: Any) -> float | None:
    """Expected complexity from the top log-probabilities of the first digit token 1-5 (None when
    there are none, or they are malformed)."""
    try:
        for tok in logprobs or []:
            t = str(tok.get("token", "")).strip()
            if t in {"1", "2", "3", "4", "5"}:
                ps: dict[int, float] = {}
                for c in tok.get("top_logprobs") or [tok]:
                    ct = str(c.get("token", "")).strip()
                    if ct in {"1", "2", "3", "4", "5"}:
                        ps[int(ct)] = ps.get(int(ct), 0.0) + math.exp(float(c["logprob"]))
                z = sum(ps.values())
                e = sum(k * p for k, p in ps.items()) / z if z > 0 else float(t)
                return e if 1 <= e <= 5 else None
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        pass
    return None


def default_base_url() -> str:
    """The OpenAI-compatible endpoint of this user: ``T2IROUTE_LLM_BASE_URL``, else
    ``OPENAI_BASE_URL``, else llama.cpp's default http://127.0.0.1:8080/v1 (checked with
    :func:`check_url`, naming the variable)."""
    for var in ("T2IROUTE_LLM_BASE_URL", "OPENAI_BASE_URL"):
        if os.environ.get(var):
            return check_url(os.environ[var], f"${var}")
    return "http://127.0.0.1:8080/v1"


_URL = re.compile(
    r"(?P<scheme>https?://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?",
    re.I,
)


def check_url(value: Any, key: str = "base_url", *, scheme_optional: bool = False) -> str:
    """``value`` if it is ``http(s)://host[:port][/path]`` (no user:password@, query or fragment;
    ``scheme_optional``: ``host[:port]`` too, as Ollama's host); else ValueError naming ``key``."""
    m = _URL.fullmatch(value.strip()) if isinstance(value, str) else None
    ok = m is not None and (bool(m["scheme"]) or scheme_optional) and (m["port"] is None or 0 < int(m["port"]) < 65536)
    if not ok:
        shown = redact(value if isinstance(value, str) else repr(value))
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        form = "[http(s)://]host[:port]" if scheme_optional else "http(s)://host[:port][/path]"
        raise ValueError(f"{key}={shown}: a URL {form} is needed (credentials go in the environment, not the URL)")
    return value.strip()


def redact(text: str, secrets: Sequence[str | None] = ()) -> str:
    """``text`` with ``secrets`` (an API key) and what looks like a credential redacted
    (:func:`t2iroute.redact.redact_secrets`)."""
    from t2iroute.redact import redact_secrets

    return redact_secrets(text, secrets)


# -- a total bound on each request -------------------------------------------------------------
# httpx's timeouts are per operation (each byte read resets the read timeout), so a server that
# trickles its reply would hold a request for ever. Each request of a provider runs in one thread;
# the thread-local limits below are set for it, and the network streams check them on every read,
# write and connect: past the deadline, a timeout; past MAX_REPLY_BYTES, a read error.
_REQUEST = threading.local()


@contextlib.contextmanager
def _request_limits(deadline: float | None, max_bytes: int = MAX_REPLY_BYTES):
    _REQUEST.deadline, _REQUEST.left = deadline, max_bytes
    try:
        yield
    finally:
        _REQUEST.deadline = _REQUEST.left = None


def _limited(timeout: float | None, exc) -> float | None:
    deadline = getattr(_REQUEST, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _BoundedStream:
    """A network stream whose every operation ends by the request's deadline, and whose reads
    stop at the request's byte budget."""

    def __init__(self, stream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        import httpcore

        data = self._stream.read(max_bytes, _limited(timeout, httpcore.ReadTimeout))
        left = getattr(_REQUEST, "left", None)
        if left is not None:
            _REQUEST.left = left - len(data)
            if _REQUEST.left < 0:
                raise httpcore.ReadError(f"reply larger than {MAX_REPLY_BYTES} bytes: not read on")
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        import httpcore

        self._stream.write(buffer, _limited(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        import httpcore

        return _BoundedStream(
            self._stream.start_tls(ssl_context, server_hostname, _limited(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info):
        return self._stream.get_extra_info(info)


class _BoundedBackend:
    """httpcore's network backend with :class:`_BoundedStream` streams."""

    def __init__(self, backend):
        self._backend = backend

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        import httpcore

        return _BoundedStream(
            self._backend.connect_tcp(
                host,
                port,
                _limited(timeout, httpcore.ConnectTimeout),
                local_address=local_address,
                socket_options=socket_options,
            )
        )

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        import httpcore

        return _BoundedStream(
            self._backend.connect_unix_socket(
                path, _limited(timeout, httpcore.ConnectTimeout), socket_options=socket_options
            )
        )

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def bound_requests(client) -> bool:
    """Make every request of the ``httpx.Client`` ``client`` honour :func:`_request_limits` (its
    own transport and the proxy transports the environment mounts); False when a transport is not
    httpx's own (a test's mock transport: nothing goes to the network)."""
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    done = False
    for t in transports:
        pool = getattr(t, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            continue
        if not isinstance(backend, _BoundedBackend):
            pool._network_backend = _BoundedBackend(backend)
        done = True
    return done


# -- providers ---------------------------------------------------------------------------------
class OpenAIProvider:
    """Any OpenAI-compatible chat endpoint (llama.cpp server, vLLM, LM Studio, Ollama's /v1)."""

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        json_schema: bool = True,
        logprobs: bool = True,
        transport=None,
    ):
        import httpx

        self.model = model
        self.base_url = (check_url(base_url) if base_url else default_base_url()).rstrip("/")
        self.json_schema = json_schema
        self.logprobs = logprobs
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        headers = {"Authorization": f"Bearer {self.api_key}"}
        # never follow a redirect: the key would go wherever a server points
        self.client = httpx.Client(timeout=timeout, headers=headers, transport=transport, follow_redirects=False)
        bound_requests(self.client)

    def ask(
        self, prompt: str, rubric: str, timeout: float | None = None, deadline: float | None = None
    ) -> tuple[str, Any]:
        """(answer text, token logprobs). ``timeout``: per-request httpx timeout; ``deadline``
        (``time.monotonic()``): the request ends by then, however slowly its reply arrives."""
        with _request_limits(deadline):
            return self._ask(prompt, rubric, timeout, deadline)

    def _ask(self, prompt, rubric, timeout, deadline):
        import httpx

        user = (FULL_TEMPLATE if rubric == "full" else SCORE_TEMPLATE).format(prompt=prompt)
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": 0,
            "seed": 0,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            "max_tokens": 120 if rubric == "full" else 1,
        }
        if rubric == "full" and self.json_schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "complexity", "schema": full_schema()},
            }
        if rubric == "score" and self.json_schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "digit", "schema": {"type": "integer", "minimum": 1, "maximum": 5}},
            }
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=5)
        kw = {} if timeout is None else {"timeout": timeout}
        with self.client.stream("POST", f"{self.base_url}/chat/completions", json=body, **kw) as r:
            if r.status_code == 404:
                raise LLMError(
                    f"openai provider: {redact(self.base_url)}: model '{self.model}' or endpoint not found (404)"
                )
            r.raise_for_status()
            try:
                length = int(r.headers.get("content-length") or 0)
            except ValueError:
                length = 0
            if length > MAX_REPLY_BYTES:
                raise BadResponse(f"bad reply: {length} bytes announced, more than {MAX_REPLY_BYTES}: not read")
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > MAX_REPLY_BYTES:
                    raise BadResponse(f"bad reply: larger than {MAX_REPLY_BYTES} bytes: not read on")
                if deadline is not None and time.monotonic() > deadline:
                    raise httpx.ReadTimeout("deadline passed while the reply was still arriving")
        try:
            ch = json.loads(bytes(data))["choices"][0]
            text = ch["message"]["content"]
            lp = (ch.get("logprobs") or {}).get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError) as e:
            # what is wrong, never the body: a server may echo the request's headers into it
            raise BadResponse(
                f"bad reply (not an OpenAI chat completion): {type(e).__name__}, {len(data)} bytes"
            ) from None
        if text is not None and not isinstance(text, str):
            raise BadResponse(f"bad reply: message content is {type(text).__name__}, not text")
        return text, lp


class OllamaProvider:
    """The official ``ollama`` client; structured output through a JSON schema (``format=``)."""

    name = "ollama"

    def __init__(self, model: str, host: str | None = None, timeout: float = 30.0, transport=None):
        import ollama

        self.model = model
        if host:
            host = check_url(host, "host", scheme_optional=True)
        elif os.environ.get("OLLAMA_HOST"):
            host = check_url(os.environ["OLLAMA_HOST"], "$OLLAMA_HOST", scheme_optional=True)
        self.api_key = os.environ.get("OLLAMA_API_KEY")  # the ollama client sends it; named to redact it
        kw: dict[str, Any] = {"host": host or "http://127.0.0.1:11434", "timeout": timeout, "follow_redirects": False}
        if transport is not None:
            kw["transport"] = transport
        self.client = ollama.Client(**kw)
        bound_requests(getattr(self.client, "_client", None))

    def ask(
        self, prompt: str, rubric: str, timeout: float | None = None, deadline: float | None = None
    ) -> tuple[str, Any]:
        with _request_limits(deadline):
            return self._ask(prompt, rubric, timeout)

    def _ask(self, prompt, rubric, timeout):
        import ollama

        user = (FULL_TEMPLATE if rubric == "full" else SCORE_TEMPLATE).format(prompt=prompt)
        fmt = full_schema() if rubric == "full" else {"type": "integer", "minimum": 1, "maximum": 5}
        if timeout is not None and hasattr(getattr(self.client, "_client", None), "timeout"):
            self.client._client.timeout = timeout  # the client has no per-request timeout
        try:
            resp = self.client.chat(
                model=self.model,
                format=fmt,
                options={"temperature": 0, "seed": 0},
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            )
        except ollama.ResponseError as e:
            if getattr(e, "status_code", None) == 404:
                raise LLMError(
                    f"ollama provider: model '{self.model}' not found (404): ollama pull {self.model}"
                ) from e
            raise
        except (ValueError, RecursionError) as e:  # the reply is not JSON, or not a chat response
            # the type only: a validation error quotes the reply, which may echo the request's headers
            raise BadResponse(f"bad reply (not an Ollama chat response): {type(e).__name__}") from None
        return resp["message"]["content"], None


PROVIDERS = {"openai": OpenAIProvider, "ollama": OllamaProvider}


def classify_failure(e: BaseException) -> tuple[str, str]:
    """(kind, reason) of a failed ask. kind: ``hard`` (give up on the call: connection refused,
    a timeout, HTTP 401/403/404), ``retry`` (transient: HTTP 5xx/408/429, connection reset, a
    truncated or malformed reply; retried with backoff, then hard) or ``invalid`` (the model's
    answer is garbled or out of range, or the request refused for this prompt: asked again at once,
    then only this prompt is imputed)."""
    import httpx

    if isinstance(e, BadResponse):
        return "retry", str(e)
    if isinstance(e, LLMError):
        return "hard", str(e)
    if isinstance(e, ValueError):
        return "invalid", f"invalid answer: {e}"
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is None:
        status = getattr(e, "status_code", None)  # ollama.ResponseError
    if isinstance(status, int) and status > 0:
        if status in (408, 429) or status >= 500:
            return "retry", f"HTTP {status}"
        if status in (400, 413, 422):
            return "invalid", f"HTTP {status}: request refused"
        return "hard", f"HTTP {status}"
    if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout):
        return "hard", f"timeout: {type(e).__name__}: {_short(e)}"
    if _is_connection_error(e):
        return "hard", f"unreachable: {type(e).__name__}: {_short(e)}"
    if isinstance(e, (httpx.TransportError, OSError)):
        return "retry", f"{type(e).__name__}: {_short(e)}"
    return "hard", f"{type(e).__name__}: {_short(e)}"


def _short(e: BaseException, n: int = 100) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[: n - 3] + "..."


# -- cache -------------------------------------------------------------------------------------
_CORRUPT = ("malformed", "not a database", "encrypted")


class LLMCache:
    """SQLite (provider, model, template version, rubric, prompt) -> JSON answer.

    Never raises, never deletes: a file that is not a database (or is damaged) is renamed aside to
    ``<name>.corrupt-<timestamp>`` and a fresh cache started; a database of another schema (or
    another program's), a directory, a path that cannot be created are bypassed (the cache is off
    for this object); a database locked by another connection is waited for ``busy_timeout``
    seconds, then bypassed for that operation; writes that fail (read-only file or folder) are
    dropped. Each problem is logged once; :attr:`problem` says why the last operation did not use
    the cache (None when it did)."""

    def __init__(self, path, busy_timeout: float = 1.0):
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self.problem: str | None = None
        self.bad = 0  # stored values that were not JSON (left out of get_many)
        self._disabled: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._warned: set[str] = set()

    def _warn(self, kind: str, msg: str, *args) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(msg, *args)

    def _disable(self, why: str) -> None:
        self._disabled = self.problem = why
        self._warn("disabled", "LLM cache bypassed: %s (answers are not cached)", why)

    def _connect(self, set_aside: bool = True) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if self._disabled:
            self.problem = self._disabled
            return None
        c = None
        try:
            if self.path.is_dir():
                self._disable(f"{self.path} is a directory")
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            c = sqlite3.connect(self.path, timeout=self.busy_timeout, check_same_thread=False)
            tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            if "answers" in tables:
                cols = [r[1] for r in c.execute("PRAGMA table_info(answers)")]
                if cols != ["key", "value"]:
                    c.close()
                    self._disable(f"{self.path}: table 'answers' has columns {cols}, not ['key', 'value']")
                    return None
            elif tables:
                c.close()
                self._disable(f"{self.path} is another database (tables {sorted(tables)[:5]}), left untouched")
                return None
            else:
                with c:
                    c.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except (sqlite3.Error, OSError) as e:
            if c is not None:
                c.close()
            if _is_corrupt(e) and set_aside and self._set_aside(str(e)):
                return self._connect(set_aside=False)
            if _is_locked(e):
                self.problem = f"locked: {e}"
                self._warn("locked", "LLM cache %s is locked by another connection: bypassed while it is", self.path)
            else:
                self._disable(f"cannot open {self.path}: {type(e).__name__}: {e}")
            return None
        self._conn = c
        return c

    def _set_aside(self, why: str) -> bool:
        """Rename a damaged file (and its journals) to ``<name>.corrupt-<timestamp>``; True when done."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest, n = self.path.with_name(f"{self.path.name}.corrupt-{stamp}"), 1
        while dest.exists():
            dest, n = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}"), n + 1
        try:
            self.path.rename(dest)
        except OSError as e:
            self._disable(f"{self.path} is damaged ({why}) and cannot be set aside ({e})")
            return False
        for side in ("-journal", "-wal", "-shm"):
            p = self.path.with_name(self.path.name + side)
            if p.exists():
                try:
                    p.rename(dest.with_name(dest.name + side))
                except OSError:
                    pass
        log.warning("LLM cache %s is damaged (%s): set aside as %s, starting a fresh cache", self.path, why, dest.name)
        return True

    def _run(self, fn, write: bool = False):
        """``fn(connection)``; None (and :attr:`problem` set) when the cache cannot be used."""
        with self._lock:
            self.problem = None
            for attempt in (0, 1):
                c = self._connect()
                if c is None:
                    return None
                try:
                    return fn(c)
                except sqlite3.Error as e:
                    try:
                        c.rollback()
                    except sqlite3.Error:
                        pass
                    if _is_corrupt(e) and attempt == 0 and self._set_aside(str(e)):
                        continue
                    if _is_locked(e):
                        self.problem = f"locked: {e}"
                        self._warn(
                            "locked", "LLM cache %s is locked by another connection: bypassed while it is", self.path
                        )
                    elif write:
                        self.problem = f"not saved: {e}"
                        self._warn(
                            "write", "LLM cache %s: answers cannot be saved (%s); going on without saving", self.path, e
                        )
                    else:
                        self.problem = f"unreadable: {e}"
                        self._warn("read", "LLM cache %s cannot be read (%s): bypassed", self.path, e)
                    return None
            return None

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """Decoded values of the keys found ({} when the cache cannot be read: see :attr:`problem`);
        values that are not JSON are left out (counted in :attr:`bad`) so that they are asked again."""
        keys = list(keys)

        def read(c):
            rows = []
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                rows += c.execute(
                    f"SELECT key, value FROM answers WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
            return rows

        out = {}
        for k, v in self._run(read) or []:
            try:
                out[k] = json.loads(v)
            except (TypeError, ValueError):
                self.bad += 1
        return out

    def put_many(self, items: Mapping[str, Any]) -> bool:
        """Store values (one transaction); False when they could not be (see :attr:`problem`)."""
        rows = [(k, json.dumps(v)) for k, v in items.items()]

        def write(c):
            with c:
                c.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)", rows)
            return True

        return not rows or bool(self._run(write, write=True))

    def put(self, key: str, value: Any) -> bool:
        return self.put_many({key: value})

    def open(self) -> bool:
        """Open (or create) the database now; False when it cannot be used (see :attr:`problem`)."""
        with self._lock:
            self.problem = None
            return self._connect() is not None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _is_corrupt(e: BaseException) -> bool:
    return isinstance(e, sqlite3.DatabaseError) and any(s in str(e).lower() for s in _CORRUPT)


def _is_locked(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and any(s in str(e).lower() for s in ("locked", "busy"))


def default_llm_cache() -> Path:
    root = os.environ.get("T2IROUTE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "t2iroute"
    )
    return Path(root) / "llm.sqlite"


# -- featurizer --------------------------------------------------------------------------------
def lexical_estimate(prompt: str) -> dict[str, float]:
    """Rubric fields estimated from lexical counts: the stand-in when the LLM is down."""
    from t2iroute.complexity import estimate
    from t2iroute.features.lexical import FEATURE_NAMES, lexical_features

    return estimate(dict(zip(FEATURE_NAMES, lexical_features(prompt))))


class _Call:
    """One transform call: its deadline, and the first reason to stop asking."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline  # time.monotonic(), or None
        self.stop = threading.Event()
        self.reason: str | None = None  # hard failure or deadline: nothing more is asked
        self.soft: str | None = None  # the first prompt-level failure (invalid answers)
        self.n_valid = self.n_invalid = 0
        self.requests = 0
        self._lock = threading.Lock()

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def fail(self, why: str) -> None:
        with self._lock:
            self.reason = self.reason or why
        self.stop.set()

    def prompt_failed(self, why: str) -> None:
        """A prompt got no valid answer. The first :data:`GARBLED_AFTER` such prompts without a
        single valid answer in the call mean a garbled LLM: nothing more is asked."""
        with self._lock:
            self.soft = self.soft or why
            self.n_invalid += 1
            garbled = self.n_invalid >= GARBLED_AFTER and self.n_valid == 0
        if garbled:
            self.fail(f"garbled LLM: no valid answer to {self.n_invalid} prompts ({why})")

    def answered(self) -> None:
        with self._lock:
            self.n_valid += 1

    def asked(self) -> None:
        with self._lock:
            self.requests += 1


class LLMComplexityFeaturizer:
    """Rubric answers of a local LLM as features; see the module docstring.

    ``timeout``: seconds per request; ``retries``: extra tries after an HTTP 5xx, a reset
    connection, a malformed reply or an invalid answer (backoff ``backoff_s`` x 2^try between
    transient failures, none after the last try); ``concurrency``: requests in flight;
    ``deadline_s``: the most one ``transform`` call waits on the LLM in all (default 20 s: a route
    never waits longer; cache hits are not affected). Prompts not answered by then are imputed.
    ``None``: no overall deadline (featurizing a whole table with a slow LLM). ``timeout`` bounds
    each request in total (connect, send, a reply however slowly it arrives). These are stored in
    :meth:`spec`; a loaded router uses them clamped to :data:`ARTIFACT_BOUNDS` (see
    :meth:`bound_artifact_settings`) unless the loading user sets them (``USER_KEYS``).

    ``LOCAL_KEYS`` are the loading user's own settings (endpoint, credentials, cache file,
    transport, progress bar): never written to :meth:`spec`, never taken from an artifact. Not
    given, they come from the environment: ``T2IROUTE_LLM_BASE_URL`` / ``OPENAI_BASE_URL``,
    ``OLLAMA_HOST``, ``OPENAI_API_KEY`` (or the variable ``api_key_env`` names), ``T2IROUTE_CACHE``.

    After each :meth:`transform`, ``last_stats_`` has ``n``, ``cache_hits``, ``asked``,
    ``requests`` (sent to the LLM, retries included), ``imputed`` (rows), ``imputed_reason`` (why, or None), ``cache`` (``"ok"``, ``"disabled"`` or
    ``"bypassed: <why>"``), ``cache_bad`` (cached values that were not valid answers: asked again)
    and ``seconds``.
    """

    name = "llm"
    LOCAL_KEYS = frozenset(
        {"base_url", "host", "api_key", "api_key_env", "cache", "cache_path", "transport", "progress"}
    )
    #: timing: stored in an artifact (bounded when loaded), and the loading user's to set
    USER_KEYS = frozenset(ARTIFACT_BOUNDS)

    def __init__(
        self,
        provider: str = "openai",
        model: str = "smollm2",
        *,
        base_url: str | None = None,
        host: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        rubric: str = "full",
        timeout: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        concurrency: int = 2,
        deadline_s: float | None = 20.0,
        cache: bool = True,
        cache_path: str | None = None,
        logprobs: bool = True,
        json_schema: bool = True,
        transport=None,
        progress: bool = True,
        template_version: str | None = None,
    ):
        if template_version is not None and template_version != TEMPLATE_VERSION:
            raise ValueError(
                f"LLM features were built with prompt template {template_version}; this t2iroute "
                f"has {TEMPLATE_VERSION}: retrain the router"
            )
        if provider not in PROVIDERS:
            raise ValueError(f"unknown LLM provider '{provider}'; known: {sorted(PROVIDERS)}")
        if rubric not in ("full", "score"):
            raise ValueError(f"rubric must be 'full' or 'score', got {rubric!r}")
        self.timeout = _number("timeout", timeout, positive=True)
        self.retries = int(_number("retries", retries, whole=True))
        self.backoff_s = _number("backoff_s", backoff_s)
        self.concurrency = max(1, int(_number("concurrency", concurrency, whole=True)))
        self.deadline_s = None if deadline_s is None else _number("deadline_s", deadline_s, positive=True)
        if base_url is not None:
            base_url = check_url(base_url, "llm.base_url")
        if host is not None:
            host = check_url(host, "llm.host", scheme_optional=True)
        if api_key_env is not None and (not isinstance(api_key_env, str) or not api_key_env.strip()):
            raise ValueError(f"llm.api_key_env={api_key_env!r:.60}: the name of an environment variable is needed")
        self.provider, self.model, self.rubric = provider, model, rubric
        self.base_url, self.host, self.api_key, self.api_key_env = base_url, host, api_key, api_key_env
        self.cache, self.cache_path = bool(cache), cache_path
        self.logprobs, self.json_schema, self.transport = bool(logprobs), bool(json_schema), transport
        self.progress = progress
        self._client = None
        self._cache: LLMCache | None = None
        self._lock = threading.Lock()
        self._bad_warned = False
        self.last_stats_: dict[str, Any] = {}

    @property
    def fields(self) -> list[str]:
        return list(FIELDS) if self.rubric == "full" else ["complexity"]

    @property
    def feature_names_(self) -> list[str]:
        return self.fields + ["expected_complexity", "imputed"]

    @classmethod
    def bound_artifact_settings(cls, spec: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """``spec`` (a router artifact's) with its timing within :data:`ARTIFACT_BOUNDS`, and what
        was changed (``["deadline_s null -> 60", ...]``). Above a bound (``deadline_s: null``
        included): the bound; not a number of the right kind: the default."""
        import inspect

        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        out, changed = dict(spec), []
        for key, bound in ARTIFACT_BOUNDS.items():
            if key not in out:
                continue
            v = out[key]
            whole = isinstance(bound, int)
            ok = (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and (v > 0 if key in ("deadline_s", "timeout") else v >= 0)
                and (not whole or float(v).is_integer())
            )
            if v is None and key == "deadline_s":
                new = bound
            elif not ok:
                new = defaults[key]
            elif v > bound:
                new = bound
            else:
                continue
            out[key] = new
            changed.append(f"{key} {'null' if v is None else repr(v)[:40]} -> {new:g}")
        return out, changed

    def _key_from_env(self) -> str | None:
        if self.api_key or not self.api_key_env:
            return self.api_key
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            raise LLMError(f"llm.api_key_env={self.api_key_env}: that environment variable holds no key")
        return value

    def _secrets(self) -> list[str]:
        out = [self.api_key, os.environ.get("OPENAI_API_KEY"), os.environ.get("OLLAMA_API_KEY")]
        if self.api_key_env:
            out.append(os.environ.get(self.api_key_env))
        client = self._client
        out.append(getattr(client, "api_key", None))
        return [s for s in out if s and s != "none"]

    def _provider(self):
        with self._lock:
            if self._client is None:
                if self.provider == "openai":
                    self._client = OpenAIProvider(
                        self.model,
                        self.base_url,
                        self._key_from_env(),
                        self.timeout,
                        self.json_schema,
                        self.logprobs,
                        self.transport,
                    )
                else:
                    self._client = OllamaProvider(self.model, self.host, self.timeout, self.transport)
            return self._client

    def _get_cache(self) -> LLMCache | None:
        if self.cache and self._cache is None:
            self._cache = LLMCache(self.cache_path or default_llm_cache())
        return self._cache if self.cache else None

    def warmup(self) -> None:
        """Get ready without contacting the LLM: builds the client, opens the cache."""
        try:
            self._provider()
        except Exception as e:  # noqa: BLE001 - reported by transform, with the rows it imputes
            log.debug("LLM client not available: %s", e)
        cache = self._get_cache()
        if cache is not None:
            cache.open()

    def _key(self, prompt: str) -> str:
        return LLMCache.key(self.provider, self.model, TEMPLATE_VERSION, self.rubric, prompt)

    def _ask(self, prompt: str, call: _Call) -> dict | None:
        """A valid answer, or None (the reason recorded in ``call``). Never raises."""
        kind = why = None
        tries = 0
        while tries <= self.retries and not call.stop.is_set():
            left = call.left()
            if left <= 0:
                call.fail(f"deadline {self.deadline_s:g} s passed")
                return None
            tries += 1
            call.asked()
            # this request ends by its timeout or the call's deadline, however its reply arrives
            until = time.monotonic() + min(self.timeout, left)
            try:
                text, lp = self._provider().ask(prompt, self.rubric, timeout=min(self.timeout, left), deadline=until)
                ans = parse_answer(text, self.rubric)
            except Exception as e:  # noqa: BLE001 - classified: hard failures stop, soft ones retry
                kind, why = classify_failure(e)
                why = redact(why, self._secrets())
                if kind == "hard":
                    call.fail(why)
                    return None
                if kind == "retry" and tries <= self.retries:
                    pause = self.backoff_s * 2 ** (tries - 1)
                    if pause >= call.left():  # would sleep past the deadline: give up now
                        break
                    call.stop.wait(pause)
                continue
            exp = expected_digit(lp)
            ans["expected_complexity"] = float(exp) if exp is not None else ans["complexity"]
            call.answered()
            return ans
        if kind == "retry":  # the server keeps failing: stop asking in this call
            call.fail(f"{why} ({tries} {'try' if tries == 1 else 'tries'})")
        elif kind == "invalid":
            call.prompt_failed(f"no valid answer after {tries} {'try' if tries == 1 else 'tries'}: {why}")
        return None

    def _ask_all(self, todo: list[str], by_key: dict[str, str], call: _Call) -> dict[str, dict]:
        """Answers for the keys in ``todo`` that came before the deadline or the first hard failure."""
        try:
            self._provider()
        except Exception as e:  # noqa: BLE001 - the call fails with the reason, features are imputed
            call.fail(redact(f"LLM client unavailable: {type(e).__name__}: {e}", self._secrets()))
            return {}
        out: dict[str, dict] = {}
        bar = None
        if self.progress and len(todo) >= 20:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"LLM features ({self.model})")
        ex = ThreadPoolExecutor(min(self.concurrency, len(todo)), thread_name_prefix="t2iroute-llm")
        pending = {ex.submit(self._ask, by_key[k], call): k for k in todo}

        def harvest(done):
            for f in done:
                k = pending.pop(f)
                if not f.cancelled() and f.exception() is None and f.result() is not None:
                    out[k] = f.result()
                if bar is not None:
                    bar.update()

        try:
            while pending and not call.stop.is_set():
                left = call.left()
                if left <= 0:
                    call.fail(f"deadline {self.deadline_s:g} s passed")
                    break
                done, _ = wait(list(pending), timeout=None if left == math.inf else left, return_when=FIRST_COMPLETED)
                harvest(done)
            harvest([f for f in pending if f.done()])
        finally:
            call.stop.set()  # requests in flight end by the deadline; queued ones never start
            ex.shutdown(wait=False, cancel_futures=True)
            if bar is not None:
                bar.close()
        return out

    def transform(self, prompts: Sequence[str]) -> np.ndarray:
        t0 = time.monotonic()
        call = _Call(None if self.deadline_s is None else t0 + self.deadline_s)
        prompts = [str(p) for p in prompts]
        keys = [self._key(p) for p in prompts]
        uniq = list(dict.fromkeys(keys))
        by_key = dict(zip(keys, prompts))
        cache = self._get_cache()
        cache_status = "disabled" if cache is None else "ok"
        got: dict[str, dict] = {}
        bad: list[str] = []
        if cache is not None and uniq:
            bad_before = cache.bad
            raw = cache.get_many(uniq)
            if cache.problem:
                cache_status = f"bypassed: {cache.problem}"
            bad += ["not JSON"] * (cache.bad - bad_before)
            for k, v in raw.items():
                try:
                    got[k] = check_answer(v, self.fields)
                except ValueError as e:
                    bad.append(str(e))
        if bad and not self._bad_warned:
            self._bad_warned = True
            log.warning("LLM cache %s: %d cached answers are not valid (%s): asked again", cache.path, len(bad), bad[0])
        hits = sum(k in got for k in keys)  # rows served from the cache
        todo = [k for k in uniq if k not in got]
        new = self._ask_all(todo, by_key, call) if todo else {}
        got.update(new)
        if new and cache is not None and cache_status == "ok" and not cache.put_many(new):
            cache_status = f"bypassed: {cache.problem}"
        n_imputed = 0
        rows = []
        for k, p in zip(keys, prompts):
            ans = got.get(k)
            if ans is None:
                n_imputed += 1
                est = lexical_estimate(p)
                rows.append([est[f] for f in self.fields] + [est["complexity"], 1.0])
            else:
                rows.append([ans[f] for f in self.fields] + [ans.get("expected_complexity", ans["complexity"]), 0.0])
        reason = (call.reason or call.soft or "no answer") if n_imputed else None
        if n_imputed:
            log.warning(
                "LLM features: %d of %d prompts imputed from lexical features (%s)", n_imputed, len(prompts), reason
            )
        self.last_stats_ = {
            "n": len(prompts),
            "cache_hits": hits,
            "asked": len(todo),
            "requests": call.requests,
            "imputed": n_imputed,
            "imputed_reason": reason,
            "cache": cache_status,
            "cache_bad": len(bad),
            "seconds": time.monotonic() - t0,
        }
        return np.asarray(rows, dtype=np.float32).reshape(len(prompts), len(self.feature_names_))

    def spec(self) -> dict[str, Any]:
        """What a router artifact stores: the model, rubric and timing; never the LOCAL_KEYS."""
        return {
            "provider": self.provider,
            "model": self.model,
            "rubric": self.rubric,
            "template_version": TEMPLATE_VERSION,
            "timeout": self.timeout,
            "retries": self.retries,
            "backoff_s": self.backoff_s,
            "concurrency": self.concurrency,
            "deadline_s": self.deadline_s,
            "logprobs": self.logprobs,
            "json_schema": self.json_schema,
        }


def _number(key: str, v: Any, *, positive: bool = False, whole: bool = False) -> float:
    """A timing setting as a float; ValueError naming ``llm.<key>`` when it is not a finite
    number (> 0 where ``positive``, >= 0 otherwise; a whole number where ``whole``)."""
    if isinstance(v, str):
        try:
            v = float(v) if not whole else int(v)
        except ValueError:
            pass
    ok = (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and (v > 0 if positive else v >= 0)
        and (not whole or float(v).is_integer())
    )
    if not ok:
        need = "a whole number >= 0" if whole else ("a number > 0" if positive else "a number >= 0")
        raise ValueError(f"llm.{key}={v!r:.40}: {need} is needed")
    return float(v)


def _is_connection_error(e: BaseException) -> bool:
    import httpx

    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError)):
        return True
    return "connect" in type(e).__name__.lower() or "Failed to connect" in str(e)
