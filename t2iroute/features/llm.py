"""LLM prompt-complexity features from a local LLM (Ollama or any OpenAI-compatible server).

A versioned rubric asks the model for JSON; answers are validated, cached in SQLite keyed by
(provider, model, template version, prompt), and become features next to the embeddings. Where
the server returns token log-probabilities, the expected complexity over the digits 1-5 is a
feature too (smoother than the argmax digit). When the LLM is unreachable or keeps answering
garbage, one warning is logged, lexical estimates stand in, and the rows are flagged ``imputed``:
a router trained with LLM features still routes when the LLM is down.

Rubrics: ``full`` (7 fields, ~50 output tokens) and ``score`` (one digit, 1 output token: fast
enough for 10k-prompt tables on a CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

TEMPLATE_VERSION = "rubric-v1"

FIELDS = {  # name: (min, max)
    "complexity": (1, 5),
    "objects": (0, 20),
    "attribute_bindings": (0, 20),
    "spatial_relations": (0, 20),
    "counting": (0, 20),
    "text_to_render": (0, 1),
    "detail_style": (1, 5),
}

SYSTEM = ("You rate how hard a text-to-image prompt is for an image generator. "
          "Answer with JSON only.")
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
    return {"type": "object",
            "properties": {k: {"type": "integer", "minimum": lo, "maximum": hi} for k, (lo, hi) in FIELDS.items()},
            "required": list(FIELDS)}


class LLMError(RuntimeError):
    """The LLM could not give a valid answer (unreachable, timeout, garbled after retries)."""


def parse_answer(text: str, rubric: str) -> dict[str, float]:
    """Validate an answer; raises ValueError for garbled or out-of-range output."""
    if rubric == "score":
        m = re.search(r"[1-5]", text or "")
        if not m:
            raise ValueError(f"no digit 1-5 in answer {text!r:.80}")
        return {"complexity": float(m.group())}
    m = re.search(r"\{.*\}", text or "", re.S)
    if not m:
        raise ValueError(f"no JSON object in answer {text!r:.80}")
    obj = json.loads(m.group())
    out = {}
    for k, (lo, hi) in FIELDS.items():
        v = obj.get(k)
        if isinstance(v, bool) and k == "text_to_render":
            v = int(v)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"field {k}={v!r} missing or outside [{lo}, {hi}]")
        out[k] = float(v)
    return out


def expected_digit(logprobs: Any) -> float | None:
    """Expected complexity from the top log-probabilities of the first digit token 1-5."""
    if not logprobs:
        return None
    for tok in logprobs:
        t = str(tok.get("token", "")).strip()
        if t in {"1", "2", "3", "4", "5"}:
            cands = tok.get("top_logprobs") or [tok]
            ps = {}
            for c in cands:
                ct = str(c.get("token", "")).strip()
                if ct in {"1", "2", "3", "4", "5"}:
                    ps[int(ct)] = ps.get(int(ct), 0.0) + math.exp(float(c["logprob"]))
            z = sum(ps.values())
            return sum(k * p for k, p in ps.items()) / z if z > 0 else float(t)
    return None


# -- providers ---------------------------------------------------------------------------------
class OpenAIProvider:
    """Any OpenAI-compatible chat endpoint (llama.cpp server, vLLM, LM Studio, Ollama's /v1)."""

    name = "openai"

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8080/v1", api_key: str | None = None,
                 timeout: float = 30.0, json_schema: bool = True, logprobs: bool = True, transport=None):
        import httpx

        self.model = model
        self.base_url = base_url.rstrip("/")
        self.json_schema = json_schema
        self.logprobs = logprobs
        headers = {"Authorization": f"Bearer {api_key or os.environ.get('OPENAI_API_KEY', 'none')}"}
        self.client = httpx.Client(timeout=timeout, headers=headers, transport=transport)

    def ask(self, prompt: str, rubric: str) -> tuple[str, Any]:
        user = (FULL_TEMPLATE if rubric == "full" else SCORE_TEMPLATE).format(prompt=prompt)
        body: dict[str, Any] = {"model": self.model, "temperature": 0, "seed": 0,
                                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                                "max_tokens": 120 if rubric == "full" else 1}
        if rubric == "full" and self.json_schema:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "complexity", "schema": full_schema()}}
        if rubric == "score" and self.json_schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "digit", "schema": {"type": "integer", "minimum": 1, "maximum": 5}}}
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=5)
        r = self.client.post(f"{self.base_url}/chat/completions", json=body)
        if r.status_code == 404:
            raise LLMError(f"openai provider: {self.base_url}: model '{self.model}' or endpoint not found (404)")
        r.raise_for_status()
        ch = r.json()["choices"][0]
        lp = (ch.get("logprobs") or {}).get("content")
        return ch["message"]["content"], lp


class OllamaProvider:
    """The official ``ollama`` client; structured output through a JSON schema (``format=``)."""

    name = "ollama"

    def __init__(self, model: str, host: str | None = None, timeout: float = 30.0, transport=None):
        import ollama

        self.model = model
        kw: dict[str, Any] = {"host": host or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434",
                              "timeout": timeout}
        if transport is not None:
            kw["transport"] = transport
        self.client = ollama.Client(**kw)

    def ask(self, prompt: str, rubric: str) -> tuple[str, Any]:
        import ollama

        user = (FULL_TEMPLATE if rubric == "full" else SCORE_TEMPLATE).format(prompt=prompt)
        fmt = full_schema() if rubric == "full" else {"type": "integer", "minimum": 1, "maximum": 5}
        try:
            resp = self.client.chat(model=self.model, format=fmt, options={"temperature": 0, "seed": 0},
                                    messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}])
        except ollama.ResponseError as e:
            if getattr(e, "status_code", None) == 404:
                raise LLMError(f"ollama provider: model '{self.model}' not found (404): ollama pull {self.model}") from e
            raise
        return resp["message"]["content"], None


PROVIDERS = {"openai": OpenAIProvider, "ollama": OllamaProvider}


# -- cache -------------------------------------------------------------------------------------
class LLMCache:
    """SQLite (provider, model, template version, rubric, prompt) -> JSON answer."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def _conn(self):
        if getattr(self._local, "conn", None) is None:
            self._local.conn = sqlite3.connect(self.path, timeout=30)
        return self._local.conn

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        out = {}
        c = self._conn()
        for i in range(0, len(keys), 500):
            chunk = list(keys[i:i + 500])
            q = f"SELECT key, value FROM answers WHERE key IN ({','.join('?' * len(chunk))})"
            out.update({k: json.loads(v) for k, v in c.execute(q, chunk)})
        return out

    def put(self, key: str, value: dict) -> None:
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(value)))


def default_llm_cache() -> Path:
    root = os.environ.get("T2IROUTE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "t2iroute")
    return Path(root) / "llm.sqlite"


# -- featurizer --------------------------------------------------------------------------------
def lexical_estimate(prompt: str) -> dict[str, float]:
    """Rubric fields estimated from lexical counts: the stand-in when the LLM is down."""
    from t2iroute.features.lexical import FEATURE_NAMES, lexical_features

    f = dict(zip(FEATURE_NAMES, lexical_features(prompt)))
    objects = min(20.0, 1.0 + f["n_conjunctions"] + f["n_commas"] * 0.5)
    est = {
        "objects": objects,
        "attribute_bindings": min(20.0, f["n_colors"] + f["n_attributes"]),
        "spatial_relations": min(20.0, f["n_spatial"]),
        "counting": min(20.0, f["n_numerals"] + f["n_number_words"]),
        "text_to_render": float(f["n_quoted"] > 0 or f["n_text_words"] > 0),
        "detail_style": float(min(5.0, 1.0 + f["n_style_terms"])),
    }
    demands = est["attribute_bindings"] + est["spatial_relations"] + est["counting"] + 2 * est["text_to_render"]
    est["complexity"] = float(min(5.0, 1.0 + 0.5 * (objects - 1) + 0.5 * demands))
    return est


class LLMComplexityFeaturizer:
    """Rubric answers of a local LLM as features; see the module docstring."""

    name = "llm"

    def __init__(self, provider: str = "openai", model: str = "smollm2", *, base_url: str | None = None,
                 host: str | None = None, api_key: str | None = None, rubric: str = "full",
                 timeout: float = 30.0, retries: int = 2, backoff_s: float = 0.5, concurrency: int = 2,
                 cache: bool = True, cache_path: str | None = None, logprobs: bool = True,
                 json_schema: bool = True, transport=None, progress: bool = True,
                 template_version: str | None = None):
        if template_version is not None and template_version != TEMPLATE_VERSION:
            raise ValueError(f"LLM features were built with prompt template {template_version}; this t2iroute "
                             f"has {TEMPLATE_VERSION}: retrain the router")
        if provider not in PROVIDERS:
            raise ValueError(f"unknown LLM provider '{provider}'; known: {sorted(PROVIDERS)}")
        if rubric not in ("full", "score"):
            raise ValueError(f"rubric must be 'full' or 'score', got {rubric!r}")
        self.provider, self.model, self.rubric = provider, model, rubric
        self.base_url, self.host, self.api_key = base_url, host, api_key
        self.timeout, self.retries, self.backoff_s = float(timeout), int(retries), float(backoff_s)
        self.concurrency = max(1, int(concurrency))
        self.cache, self.cache_path = bool(cache), cache_path
        self.logprobs, self.json_schema, self.transport = logprobs, json_schema, transport
        self.progress = progress
        self._client = None
        self._cache = None
        self._down = False  # after the first connection failure in a call, stop asking
        self.last_stats_: dict[str, Any] = {}

    @property
    def fields(self) -> list[str]:
        return list(FIELDS) if self.rubric == "full" else ["complexity"]

    @property
    def feature_names_(self) -> list[str]:
        return self.fields + ["expected_complexity", "imputed"]

    def _provider(self):
        if self._client is None:
            if self.provider == "openai":
                self._client = OpenAIProvider(self.model, self.base_url or "http://127.0.0.1:8080/v1",
                                              self.api_key, self.timeout, self.json_schema, self.logprobs,
                                              self.transport)
            else:
                self._client = OllamaProvider(self.model, self.host, self.timeout, self.transport)
        return self._client

    def _key(self, prompt: str) -> str:
        return LLMCache.key(self.provider, self.model, TEMPLATE_VERSION, self.rubric, prompt)

    def _ask(self, prompt: str) -> dict:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if self._down:
                raise LLMError("LLM unreachable")
            try:
                text, lp = self._provider().ask(prompt, self.rubric)
                ans = parse_answer(text, self.rubric)
                exp = expected_digit(lp)
                ans["expected_complexity"] = float(exp) if exp is not None else ans["complexity"]
                return ans
            except LLMError:
                raise
            except ValueError as e:  # garbled or out of range: ask again
                last = e
            except Exception as e:  # connection refused, timeout, HTTP errors
                last = e
                if _is_connection_error(e):
                    self._down = True
                    raise LLMError(f"{self.provider} LLM unreachable: {type(e).__name__}: {e}") from e
            time.sleep(self.backoff_s * (2 ** attempt))
        raise LLMError(f"no valid answer after {self.retries + 1} tries: {last}")

    def transform(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = [str(p) for p in prompts]
        self._down = False
        cache = None
        if self.cache:
            if self._cache is None:
                self._cache = LLMCache(self.cache_path or default_llm_cache())
            cache = self._cache
        keys = [self._key(p) for p in prompts]
        got = cache.get_many(list(dict.fromkeys(keys))) if cache else {}
        todo = list(dict.fromkeys(k for k in keys if k not in got))
        by_key = {k: p for k, p in zip(keys, prompts)}
        errors: list[str] = []
        t0 = time.perf_counter()

        def work(k):
            try:
                ans = self._ask(by_key[k])
            except LLMError as e:
                errors.append(str(e))
                return k, None
            if cache:
                cache.put(k, ans)
            return k, ans

        if todo:
            from tqdm.auto import tqdm

            with ThreadPoolExecutor(self.concurrency) as ex:
                for k, ans in tqdm(ex.map(work, todo), total=len(todo), disable=not self.progress or len(todo) < 20,
                                   desc=f"LLM features ({self.model})"):
                    if ans is not None:
                        got[k] = ans
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
        if n_imputed:
            log.warning("LLM features: %d of %d prompts imputed from lexical features (%s)",
                        n_imputed, len(prompts), errors[0] if errors else "no answer")
        self.last_stats_ = {"n": len(prompts), "cache_hits": len(prompts) - len(todo), "asked": len(todo),
                            "imputed": n_imputed, "seconds": time.perf_counter() - t0}
        return np.asarray(rows, dtype=np.float32).reshape(len(prompts), len(self.feature_names_))

    def spec(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model, "base_url": self.base_url, "host": self.host,
                "rubric": self.rubric, "template_version": TEMPLATE_VERSION}


def _is_connection_error(e: Exception) -> bool:
    import httpx

    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError)):
        return True
    return "connect" in type(e).__name__.lower() or "Failed to connect" in str(e)
