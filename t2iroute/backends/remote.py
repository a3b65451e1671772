"""A model behind any OpenAI-compatible images endpoint as a backend (DALL-E, a hosted SDXL,
another ``t2iroute serve``).

The API key is read, at call time, from the environment variable the config names
(``api_key_env``): it is never in the config, so never in an artifact. Each image is one
``POST {base_url}/images/generations`` (``response_format: b64_json``); connection errors, timeouts,
408, 429 and 5xx answers are retried with backoff while the per-image ``deadline_s`` lasts, then
raise, so a router falls back to its next choice. ``cost`` is the table's unit per image (dollars or
seconds; None: the measured latency).

The upstream is not trusted:

- ``deadline_s`` bounds each image in total (connect, send, every byte of the answer, retries and
  their backoff): a watchdog closes the connection when it passes, so an upstream that trickles
  one byte a second cannot hold a call past it. ``retries`` is at most :data:`MAX_RETRIES` and
  ``deadline_s``/``timeout_s`` at most :data:`MAX_DEADLINE_S`, whatever a config says.
- The answer is read as a stream and refused past a size bound (:func:`max_body_bytes`) before it is
  all read; compressed answers are refused past the same bound once decompressed.
- The image must be PNG, JPEG or WebP of exactly the configured ``size`` (without one: at most
  :data:`MAX_PIXELS` pixels); its header is checked before a pixel is decoded.
- Redirects are not followed (the key is never sent elsewhere).
- Errors (:class:`RemoteBackendError`) name the backend, the HTTP status and a category
  (:data:`CATEGORIES`), never the upstream's body or URL. ``verbose=true`` in the loading user's own
  config (never an artifact's) adds the URL and the first 200 characters of the body, with secrets
  redacted (:func:`t2iroute.redact.redact_secrets`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
import socket
import threading
import time
import zlib
from typing import Sequence
from urllib.parse import urlsplit

from t2iroute.backends.base import DiffusionInfo, Generation
from t2iroute.errors import ConfigError, GenerationError
from t2iroute.redact import redact_secrets

log = logging.getLogger(__name__)

#: hard bounds, whatever a config (or an artifact) says
MAX_RETRIES = 5
MAX_DEADLINE_S = 600.0
#: the largest answer read, in bytes (also after decompression), whatever the size
MAX_BODY_BYTES = 48 * 2**20
#: the largest image (pixels) accepted from a backend configured without a ``size``
MAX_PIXELS = 4096 * 4096
#: image formats decoded from an upstream (PIL's other decoders are never tried)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")

#: error categories of :class:`RemoteBackendError`
CATEGORIES = (
    "auth",
    "rate_limited",
    "bad_request",
    "not_found",
    "redirect",
    "upstream_error",
    "timeout",
    "connection",
    "too_large",
    "bad_response",
    "bad_image",
)
_RETRIED = frozenset({"rate_limited", "upstream_error", "timeout", "connection"})


class RemoteBackendError(GenerationError):
    """A remote backend failed: ``backend``, ``status`` (HTTP status or None) and ``category``."""

    def __init__(self, backend: str, category: str, detail: str = "", *, status: int | None = None):
        self.backend, self.category, self.status, self.detail = backend, category, status, detail
        head = f"backend '{backend}': " + (f"HTTP {status} " if status is not None else "") + category
        super().__init__(head + (f" ({detail})" if detail else ""))


# -- bounds ------------------------------------------------------------------------------------------


def max_body_bytes(width: int | None, height: int | None) -> int:
    """The largest answer accepted for one image of ``width`` x ``height`` (None: unknown size):
    base64 of an 8-bytes-a-pixel image plus headroom, at most :data:`MAX_BODY_BYTES`."""
    if not width or not height:
        return MAX_BODY_BYTES
    raw = width * height * 8 + height * 16 + 2**20
    return int(min(MAX_BODY_BYTES, raw * 4 // 3 + 2**20))


def _truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


class _Failed(Exception):
    """One attempt failed: a category, an optional status, what is safe to say, what only verbose says."""

    def __init__(self, category: str, detail: str = "", *, status: int | None = None, secret_detail: str = ""):
        super().__init__(category)
        self.category, self.detail, self.status, self.secret_detail = category, detail, status, secret_detail


def _status_category(status: int) -> str:
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "rate_limited"
    if status == 408:
        return "timeout"
    if status == 404:
        return "not_found"
    if 300 <= status < 400:
        return "redirect"
    if 400 <= status < 500:
        return "bad_request"
    if status >= 500:
        return "upstream_error"
    return "bad_response"


class OpenAIImagesBackend:
    #: where the server lives, which variable holds its key and whether errors show the upstream's
    #: answer come from the loading user's config, never from an artifact (an artifact's values are
    #: dropped; generate then says what to pass)
    LOCAL_KEYS = frozenset({"base_url", "api_key_env", "verbose"})

    def __init__(
        self,
        name: str,
        base_url: str | None = None,
        *,
        model: str | None = None,
        size: str | None = None,
        api_key_env: str | None = None,
        cost: float | None = None,
        timeout_s: float = 60.0,
        retries: int = 2,
        deadline_s: float | None = 120.0,
        send_seed: bool = True,
        width: int | None = None,
        height: int | None = None,
        verbose: bool = False,
    ):
        if base_url is not None:
            try:
                parts = urlsplit(str(base_url))
                ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(
                    f"backend '{name}': base_url must be an http(s) URL with a host, got "
                    f"{redact_secrets(str(base_url))!r:.200}"
                )
        try:
            timeout_s = float(timeout_s)
            deadline_s = math.inf if deadline_s is None else float(deadline_s)
            retries_f = float(retries)
        except (TypeError, ValueError):
            raise ConfigError(f"backend '{name}': timeout_s, deadline_s and retries must be numbers") from None
        if not (timeout_s > 0 and deadline_s > 0 and retries_f >= 0):  # NaN fails too
            raise ConfigError(f"backend '{name}': timeout_s and deadline_s must be > 0 and retries >= 0")
        if retries_f > MAX_RETRIES or deadline_s > MAX_DEADLINE_S or timeout_s > MAX_DEADLINE_S:
            log.warning(
                "backend '%s': retries limited to %d and timeout_s/deadline_s to %g s",
                name,
                MAX_RETRIES,
                MAX_DEADLINE_S,
            )
        self.name, self.base_url = name, None if base_url is None else str(base_url).rstrip("/")
        self.model, self.size, self.api_key_env = model, size, api_key_env
        self.cost = None if cost is None else float(cost)
        self.timeout_s = min(timeout_s, MAX_DEADLINE_S)
        self.deadline_s = min(deadline_s, MAX_DEADLINE_S)
        self.retries = int(min(retries_f, MAX_RETRIES))
        self.send_seed = bool(send_seed)
        self.verbose = _truthy(verbose)
        if size and (width is None or height is None):
            w, _, h = str(size).partition("x")
            width, height = (int(w), int(h)) if w.isdigit() and h.isdigit() else (None, None)
        try:
            self.width = None if width is None else int(width)
            self.height = None if height is None else int(height)
        except (TypeError, ValueError):
            raise ConfigError(f"backend '{name}': width and height must be whole numbers") from None
        if (self.width is not None and self.width <= 0) or (self.height is not None and self.height <= 0):
            raise ConfigError(f"backend '{name}': width and height must be > 0")
        self.max_body_bytes = max_body_bytes(self.width, self.height)

    def config(self) -> dict:
        return {
            "type": "openai_images",
            "base_url": self.base_url,
            "model": self.model,
            "size": self.size,
            "cost": self.cost,
        }

    def _key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"backend '{self.name}': environment variable {self.api_key_env} holds no API key")
        if not all(" " < c < "\x7f" for c in key):
            raise ConfigError(
                f"backend '{self.name}': environment variable {self.api_key_env} holds a key with "
                "spaces, control or non-ASCII characters"
            )
        return key

    # -- one HTTP attempt ------------------------------------------------------------------------

    def _attempt(self, client, body: dict, headers: dict, end: float) -> bytes:
        """POST once; the answer's bytes (bounded) or :class:`_Failed`. Never runs past ``end``."""
        import httpx

        left = end - time.monotonic()
        state: dict = {"sock": None, "fired": False}
        lock = threading.Lock()

        def _shutdown(sock):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def trace(event: str, info: dict) -> None:
            # every attempt opens its own connection (no keep-alive): its socket is what the watchdog closes
            if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
                stream = info.get("return_value")
                sock = None if stream is None else stream.get_extra_info("socket")
                with lock:
                    state["sock"] = sock
                    fired = state["fired"]
                if fired and sock is not None:
                    _shutdown(sock)

        def watchdog() -> None:
            with lock:
                state["fired"] = True
                sock = state["sock"]
            if sock is not None:
                _shutdown(sock)

        timer = threading.Timer(max(0.0, left), watchdog)
        timer.daemon = True
        deadline_msg = f"total deadline_s={self.deadline_s:g} passed"
        timer.start()
        try:
            with client.stream(
                "POST",
                f"{self.base_url}/images/generations",
                json=body,
                headers=headers,
                timeout=httpx.Timeout(min(self.timeout_s, max(left, 0.001))),
                extensions={"trace": trace},
            ) as r:
                status = r.status_code
                if status != 200:
                    snippet = self._snippet(r, end) if self.verbose else ""
                    cat = _status_category(status)
                    raise _Failed(cat, status=status, secret_detail=f"body: {snippet!r}" if self.verbose else "")
                return self._read_body(r, end, deadline_msg)
        except _Failed:
            raise
        except httpx.TimeoutException as e:
            if state["fired"] or time.monotonic() >= end:
                raise _Failed("timeout", deadline_msg) from None
            phase = {
                "ConnectTimeout": "connecting",
                "WriteTimeout": "sending",
                "PoolTimeout": "waiting for a connection",
            }.get(type(e).__name__, "waiting for the answer")
            raise _Failed(
                "timeout", f"timeout_s={self.timeout_s:g} passed {phase}", secret_detail=f"{type(e).__name__}: {e}"
            ) from None
        except Exception as e:  # noqa: BLE001 -- httpx.HTTPError, InvalidURL, a socket error...
            if state["fired"]:
                raise _Failed("timeout", deadline_msg) from None
            raise _Failed("connection", type(e).__name__, secret_detail=str(e)) from None
        finally:
            timer.cancel()

    def _snippet(self, r, end: float) -> str:
        """The first 200 characters of an error answer (verbose only), read within the deadline."""
        got = bytearray()
        try:
            for chunk in r.iter_raw():
                got += chunk
                if len(got) >= 4096 or time.monotonic() >= end:
                    break
        except Exception:  # noqa: BLE001 -- only for the message
            pass
        return bytes(got[:200]).decode("utf-8", "replace")

    def _read_body(self, r, end: float, deadline_msg: str) -> bytes:
        limit = self.max_body_bytes
        too_large = f"answer larger than the {limit} bytes allowed for one image"
        declared = r.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise _Failed("too_large", too_large)
        encoding = r.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            inflate = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            inflate = zlib.decompressobj(47)  # gzip or zlib header, detected
        else:
            raise _Failed("bad_response", "unsupported content-encoding")
        out = bytearray()
        try:
            for chunk in r.iter_raw():
                if time.monotonic() >= end:
                    raise _Failed("timeout", deadline_msg)
                if inflate is None:
                    out += chunk
                else:
                    while chunk:
                        out += inflate.decompress(chunk, limit + 1 - len(out))
                        if len(out) > limit:
                            break
                        chunk = inflate.unconsumed_tail
                if len(out) > limit:
                    raise _Failed("too_large", too_large)
        except zlib.error:
            raise _Failed("bad_response", f"{encoding} data unreadable") from None
        if time.monotonic() >= end:
            raise _Failed("timeout", deadline_msg)
        return bytes(out)

    # -- the answer as data ----------------------------------------------------------------------

    def _image(self, raw: bytes):
        """The answer's bytes -> (PIL RGB image, the ``t2iroute`` info dict), or :class:`_Failed`."""
        try:
            data = json.loads(raw)
            b64 = data["data"][0]["b64_json"]
        except (ValueError, RecursionError, UnicodeDecodeError):
            raise _Failed(
                "bad_response", "answer is not JSON", secret_detail=raw[:200].decode("utf-8", "replace")
            ) from None
        except (KeyError, IndexError, TypeError):
            raise _Failed("bad_response", "answer has no data[0].b64_json") from None
        if not isinstance(b64, str):
            raise _Failed("bad_response", "data[0].b64_json is not a string")
        if len(b64) > self.max_body_bytes:
            raise _Failed("too_large", "b64_json longer than allowed")
        try:
            if "\n" in b64 or "\r" in b64:
                b64 = b64.replace("\n", "").replace("\r", "")
            blob = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise _Failed("bad_image", "b64_json is not base64") from None
        del b64
        img = self._decode(blob)
        info = data.get("t2iroute") if isinstance(data, dict) else None
        return img, info

    def _decode(self, blob: bytes):
        from PIL import Image

        try:
            img = Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS)  # reads the header only
        except Image.DecompressionBombError:
            raise _Failed("too_large", "image has too many pixels") from None
        except Exception:  # noqa: BLE001 -- UnidentifiedImageError, a broken header...
            raise _Failed("bad_image", f"not a {'/'.join(IMAGE_FORMATS)} image") from None
        w, h = img.size
        if self.width and self.height:
            if (w, h) != (self.width, self.height):
                raise _Failed("bad_image", f"image is {w}x{h}, expected {self.width}x{self.height}")
        elif w <= 0 or h <= 0 or w * h > MAX_PIXELS:
            raise _Failed("too_large", f"image is {w}x{h}, more than the {MAX_PIXELS} pixels allowed")
        try:
            img.load()
            return img.convert("RGB")
        except Exception:  # noqa: BLE001 -- truncated or corrupt pixel data
            raise _Failed("bad_image", "image data unreadable") from None

    @staticmethod
    def _diffusion(info) -> DiffusionInfo | None:
        try:
            d = info["images"][0]
            vals = [d["steps_run"], d["steps_budget"], d["nfe"]]
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 for v in vals):
                return None
            if not isinstance(d["stopped_early"], bool):
                return None
        except (KeyError, IndexError, TypeError):
            return None
        return DiffusionInfo(steps_run=vals[0], steps_budget=vals[1], nfe=vals[2], stopped_early=d["stopped_early"])

    # -- one image, with retries -----------------------------------------------------------------

    def _one(self, client, prompt: str, seed: int, headers: dict, key: str | None) -> Generation:
        body = {"prompt": prompt, "n": 1, "response_format": "b64_json"}
        if self.model:
            body["model"] = self.model
        if self.size:
            body["size"] = self.size
        if self.send_seed:
            body["seed"] = int(seed)
        t0 = time.perf_counter()
        end = time.monotonic() + self.deadline_s
        last: _Failed | None = None
        tries = 0
        for attempt in range(self.retries + 1):
            if end - time.monotonic() <= 0:
                break
            tries += 1
            try:
                raw = self._attempt(client, body, headers, end)
                img, info = self._image(raw)
            except _Failed as f:
                last = f
                if f.category not in _RETRIED or f.detail.startswith("total deadline_s"):
                    break
            else:
                return Generation(
                    image=img,
                    prompt=prompt,
                    seed=int(seed),
                    backend=self.name,
                    latency_s=time.perf_counter() - t0,
                    cost=self.cost,
                    diffusion=self._diffusion(info),
                    config=self.config(),
                )
            if attempt < self.retries:
                time.sleep(min(0.5 * 2**attempt, max(0.0, end - time.monotonic())))
        deadline_msg = f"total deadline_s={self.deadline_s:g} passed"
        if last is None:
            last = _Failed("timeout", deadline_msg)
        detail = last.detail
        if tries < self.retries + 1 and last.category in _RETRIED and deadline_msg not in detail:
            detail = f"{detail}; then {deadline_msg}" if detail else deadline_msg  # no time left to retry
        if tries > 1:
            detail = f"{detail}; {tries} attempts" if detail else f"{tries} attempts"
        if self.verbose:
            extra = f"url {self.base_url}/images/generations" + (
                f"; {last.secret_detail}" if last.secret_detail else ""
            )
            detail = f"{detail}; {extra}" if detail else extra
            detail = redact_secrets(detail, [key])
        raise RemoteBackendError(self.name, last.category, detail, status=last.status)

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], **opts) -> list[Generation]:
        import httpx

        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if self.base_url is None:
            raise ConfigError(
                f"backend '{self.name}': no base_url; an endpoint comes from your own config "
                f"(Router.load(..., backends={{'{self.name}': {{'type': 'openai_images', "
                "'base_url': ...}}) or backends= on the command line), never from an artifact"
            )
        key = self._key()
        headers = {"Accept-Encoding": "identity"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        # no redirects (the key goes to base_url only); no keep-alive: each attempt has its own connection,
        # which the deadline's watchdog can close
        with httpx.Client(follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            return [self._one(client, str(p), int(s), headers, key) for p, s in zip(prompts, seeds)]
