"""Redaction of secrets in text that may reach a client, a log or an error message.

One place for the remote images backend and the LLM featurizer: an upstream's error body, a URL
the user gave, an exception's text. The loading user's own key (and its URL-quoted forms) and
anything that looks like a credential are replaced by ``[redacted]``.
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import quote, quote_plus

_REDACTIONS = [
    # an Authorization-like header, as text or JSON: the whole value
    (
        re.compile(
            r"""(?i)((?:proxy-)?authorization|x-api-key|api-key|cookie|set-cookie)(["']?\s*[:=]\s*["']?)"""
            r"""[^"'\r\n,}]*"""
        ),
        r"\1\2[redacted]",
    ),
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=\-]+"), r"\1\2[redacted]"),
    (re.compile(r"\b(sk|pk|rk|key)-[A-Za-z0-9_\-]{6,}"), r"\1-[redacted]"),
    (
        re.compile(
            r"""(?i)\b((?:api[_-]?)?key|token|access[_-]?token|secret|password|passwd|pwd|sig|signature|"""
            r"""auth)=([^&\s"'#]+)"""
        ),
        r"\1=[redacted]",
    ),
    # a secret-looking field as text, JSON or YAML: password: x, "token": "x", secret=x
    (
        re.compile(
            r"(?i)\b((?:x-)?api[_-]?key|password|passwd|secret|(?:access[_-]?)?token)"
            r"(['\"]?\s*[=:]\s*['\"]?)[^\s'\",;&)}\]]+"
        ),
        r"\1\2[redacted]",
    ),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@]+@"), r"\1[redacted]@"),
]


def redact_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with each of ``secrets`` (and its URL-quoted forms) and anything that looks like a
    credential (``Bearer ...``, ``Authorization: ...``, ``sk-...``, ``api_key=...``, ``user:pass@``)
    replaced by ``[redacted]``."""
    text = str(text)
    for s in secrets:
        if s and len(s) >= 3:
            for form in {s, quote(s, safe=""), quote_plus(s)}:
                text = text.replace(form, "[redacted]")
    for rx, sub in _REDACTIONS:
        text = rx.sub(sub, text)
    return text
