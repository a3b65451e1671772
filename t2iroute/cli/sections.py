"""The keys and the base several commands share (:mod:`t2iroute.cli.schema` lists the commands)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from t2iroute.cli import checks as ck
from t2iroute.cli.typed import Group, key


def verbose(libraries: bool = True):
    return key(
        False,
        "INFO logs and the libraries' progress bars on stderr (default: warnings and errors only)"
        if libraries
        else "INFO logs on stderr (default: warnings, errors and the progress bar only)",
    )


def threads():
    return key(
        None,
        "torch's CPU threads (default: $T2IROUTE_THREADS, else half the cores, at most 4; 0: torch's own)",
        ge=0,
        le=1024,
    )


def seed(help: str):
    return key(0, help, ge=0, le=ck.SEED_MAX)


@dataclass
class Llm:
    base_url: Optional[str] = key(
        None,
        "OpenAI-compatible server, http(s)://host[:port][/path]; default "
        "$T2IROUTE_LLM_BASE_URL, $OPENAI_BASE_URL or http://127.0.0.1:8080/v1 (llama.cpp's "
        "port, also scripts/serve_llm.py's and what bench and train use)",
        check=ck.url(),
    )
    api_key_env: Optional[str] = key(
        None,
        "the NAME of an environment variable holding the server's key (default: $OPENAI_API_KEY)",
        check=ck.env_var_with_key,
    )
    host: Optional[str] = key(
        None, "Ollama server; default $OLLAMA_HOST or http://127.0.0.1:11434", check=ck.url(scheme_optional=True)
    )
    cache_path: Optional[str] = key(None, "answer cache; default $T2IROUTE_CACHE/llm.sqlite")
    deadline_s: Optional[float] = key(
        None,
        "the most one routing call waits on the LLM in all; prompts not answered "
        "by then are imputed (null: the artifact's, at most 60 s)",
        check=ck.positive,
    )
    timeout: Optional[float] = key(
        None,
        "seconds per request in total (a reply that trickles in is cut; null: the artifact's, at most 60 s)",
        check=ck.positive,
    )
    retries: Optional[int] = key(
        None, "extra tries after a server error or an invalid answer (null: the artifact's, at most 5)", ge=0, le=1000
    )
    backoff_s: Optional[float] = key(
        None, "pause backoff_s, 2 x backoff_s, ... between tries after a server error", ge=0
    )
    concurrency: Optional[int] = key(None, "requests in flight at once", ge=1, le=64)


@dataclass
class Embedding:
    cache_dir: Any = key(None, "embedding cache; default $T2IROUTE_CACHE/embeddings")
    runtime: Any = key(None, "torch | onnx | auto (default: $T2IROUTE_EMBED_RUNTIME or auto)")


@dataclass
class Command:
    """What every command's config has; a command's class adds its keys and says, as class
    attributes, its config groups, its Hydra settings (``conf/hydra/``), what it does."""

    GROUPS: ClassVar[tuple[Group, ...]] = ()
    HYDRA: ClassVar[str] = "default"  # default: a run folder and log file; quiet: neither
    ABOUT: ClassVar[str] = ""
    EXAMPLE: ClassVar[str] = ""
    PROMPTS: ClassVar[bool] = False  # takes prompts (positional arguments)
