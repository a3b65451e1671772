"""A model behind any OpenAI-compatible images endpoint as a backend (DALL-E, a hosted SDXL,
another ``t2iroute serve``).

The API key is read, at call time, from the environment variable the config names
(``api_key_env``): it is never in the config, so never in an artifact. Each image is one
``POST {base_url}/images/generations`` (``response_format: b64_json``); connection errors, 429 and
5xx answers are retried with backoff while the per-image ``deadline_s`` lasts, then raise, so a
router falls back to its next choice. ``cost`` is the table's unit per image (dollars or seconds;
None: the measured latency).
"""

from __future__ import annotations

import base64
import io
import os
import time
from typing import Sequence

from t2iroute.backends.base import DiffusionInfo, Generation
from t2iroute.errors import ConfigError, GenerationError


class OpenAIImagesBackend:
    #: where the server lives and which variable holds its key come from the loading user's config,
    #: never from an artifact (an artifact's values are dropped; generate then says what to pass)
    LOCAL_KEYS = frozenset({"base_url", "api_key_env"})

    def __init__(self, name: str, base_url: str | None = None, *, model: str | None = None, size: str | None = None,
                 api_key_env: str | None = None, cost: float | None = None, timeout_s: float = 60.0,
                 retries: int = 2, deadline_s: float = 120.0, send_seed: bool = True, width: int | None = None,
                 height: int | None = None):
        if base_url is not None and not str(base_url).startswith(("http://", "https://")):
            raise ConfigError(f"backend '{name}': base_url must be an http(s) URL, got {base_url!r}")
        if timeout_s <= 0 or deadline_s <= 0 or int(retries) < 0:
            raise ConfigError(f"backend '{name}': timeout_s and deadline_s must be > 0 and retries >= 0")
        self.name, self.base_url = name, None if base_url is None else str(base_url).rstrip("/")
        self.model, self.size, self.api_key_env = model, size, api_key_env
        self.cost = None if cost is None else float(cost)
        self.timeout_s, self.retries, self.deadline_s = float(timeout_s), int(retries), float(deadline_s)
        self.send_seed = bool(send_seed)
        if size and (width is None or height is None):
            w, _, h = str(size).partition("x")
            width, height = (int(w), int(h)) if w.isdigit() and h.isdigit() else (None, None)
        self.width, self.height = width, height

    def config(self) -> dict:
        return {"type": "openai_images", "base_url": self.base_url, "model": self.model, "size": self.size,
                "cost": self.cost}

    def _headers(self) -> dict:
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"backend '{self.name}': environment variable {self.api_key_env} holds no API key")
        return {"Authorization": f"Bearer {key}"}

    def _one(self, client, prompt: str, seed: int) -> Generation:
        from PIL import Image

        body = {"prompt": prompt, "n": 1, "response_format": "b64_json"}
        if self.model:
            body["model"] = self.model
        if self.size:
            body["size"] = self.size
        if self.send_seed:
            body["seed"] = int(seed)
        t0 = time.perf_counter()
        end = t0 + self.deadline_s
        last = None
        for attempt in range(self.retries + 1):
            left = end - time.perf_counter()
            if left <= 0:
                break
            try:
                r = client.post(f"{self.base_url}/images/generations", json=body, headers=self._headers(),
                                timeout=min(self.timeout_s, left))
            except Exception as e:  # noqa: BLE001 -- connection refused, timeout...: retry, then fall back
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    data = r.json()
                    img = Image.open(io.BytesIO(base64.b64decode(data["data"][0]["b64_json"]))).convert("RGB")
                    dt = time.perf_counter() - t0
                    info = (data.get("t2iroute") or {}).get("images", [{}])[0]
                    diff = None
                    if "steps_run" in info:
                        diff = DiffusionInfo(steps_run=info["steps_run"], steps_budget=info["steps_budget"],
                                             nfe=info["nfe"], stopped_early=info["stopped_early"])
                    return Generation(image=img, prompt=prompt, seed=int(seed), backend=self.name, latency_s=dt,
                                      cost=self.cost, diffusion=diff, config=self.config())
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code not in (408, 429) and r.status_code < 500:
                    break  # the request itself is wrong: retrying will not help
            if attempt < self.retries:
                time.sleep(min(0.5 * 2 ** attempt, max(0.0, end - time.perf_counter())))
        raise GenerationError(f"backend '{self.name}' ({self.base_url}): {last or 'deadline passed'}")

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], **opts) -> list[Generation]:
        import httpx

        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if self.base_url is None:
            raise ConfigError(f"backend '{self.name}': no base_url; an endpoint comes from your own config "
                              f"(Router.load(..., backends={{'{self.name}': {{'type': 'openai_images', "
                              "'base_url': ...}}) or backends= on the command line), never from an artifact")
        with httpx.Client() as client:
            return [self._one(client, str(p), int(s)) for p, s in zip(prompts, seeds)]
