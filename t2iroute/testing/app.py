"""Serve the app in a child process on a loopback port (for browser tests and screenshots)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app(
    *,
    artifact: str | None = None,
    bench: str | None = None,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    log_path: str | Path | None = None,
    timeout_s: float = 60.0,
) -> Iterator[str]:
    """``t2iroute app`` on 127.0.0.1 in a child process; yields its URL once /_stcore/health answers."""
    port = port or free_port()
    e = dict(os.environ if env is None else env)
    cmd = [sys.executable, "-m", "t2iroute.cli", "app", f"port={port}", "address=127.0.0.1"]
    cmd += [f"artifact={artifact}"] if artifact else []
    cmd += [f"bench={bench}"] if bench else []
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=e, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with status {proc.returncode} (log: {log_path})")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app did not answer on {url} within {timeout_s:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not subprocess.DEVNULL:
            log.close()
