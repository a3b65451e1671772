"""Torch's CPU threads: T2IROUTE_THREADS, the default, and clear errors."""

import os
import subprocess
import sys

import pytest

from t2iroute.threads import default_threads, resolve

PROBE = """
from t2iroute.backends import build_backends
b = build_backends({"t": {"type": "diffusers", "model": "tiny", "steps": 2, "height": 64, "width": 64}})["t"]
b.generate(["a cat"], seeds=[0])
import torch
print(torch.get_num_threads())
"""


def _threads_after_generation(env_value):
    env = dict(os.environ)
    env.pop("T2IROUTE_THREADS", None)
    if env_value is not None:
        env["T2IROUTE_THREADS"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def test_resolve():
    assert resolve(3) == 3 and resolve("2") == 2 and resolve(0) is None
    assert resolve(None) == default_threads() == max(1, min(4, (os.cpu_count() or 1) // 2))
    for bad in ("abc", -1, "1.5", 2.5):
        with pytest.raises(ValueError, match="T2IROUTE_THREADS/threads="):
            resolve(bad)


@pytest.mark.heavy
def test_generation_uses_the_configured_threads():
    assert _threads_after_generation(None) == default_threads()
    assert _threads_after_generation("3") == 3
