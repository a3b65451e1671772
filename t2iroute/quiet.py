"""Library noise on stderr: diffusers', transformers' and huggingface_hub's progress bars and
warnings appear only with ``verbose=true``.

The setting is per process. The CLI applies it before anything loads a model; a Ray worker (a
sweep actor, a model replica) applies the driver's flag when it starts (:func:`quiet_libraries`
with the ``verbose`` the driver passes along). Libraries imported later pick it up: the backends
call :func:`apply` right after importing diffusers. A process that never calls
:func:`quiet_libraries` (a program using t2iroute as a library) keeps the libraries' defaults.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

#: None: never set in this process (the libraries' defaults); else the verbose flag last given
_VERBOSE: dict[str, bool | None] = {"verbose": None}

_NOISY = r"(diffusers|transformers|huggingface_hub|peft|accelerate|open_clip|timm|torchvision)(\.|$)"
_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


class _RandomWeightsNotice(logging.Filter):
    """open_clip's notice that a model built with ``pretrained: null`` (asked for: clip_tiny) has
    random weights: a worker would print it once per actor, for every actor."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno < logging.ERROR and str(record.msg).startswith("No pretrained weights loaded for model")
        )


def quiet_libraries(verbose: bool = False, *, worker: bool = False) -> None:
    """Silence (``verbose=False``) or allow (``True``) the libraries' progress bars and warnings
    in this process: environment variables for libraries not imported yet, and the libraries'
    own switches for those already imported. Environment variables the user set are kept.
    ``worker``: a Ray worker (no log file of its own: the notices the CLI keeps in the run's log
    file are dropped there)."""
    verbose = bool(verbose)
    _VERBOSE["verbose"] = verbose
    if not verbose:
        for k, v in _ENV.items():
            os.environ.setdefault(k, v)
        for cat in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=cat, module=_NOISY)
        root = logging.getLogger()
        if worker and not any(isinstance(f, _RandomWeightsNotice) for f in root.filters):
            root.addFilter(_RandomWeightsNotice())
    apply()


def is_verbose() -> bool | None:
    """This process's setting: True, False, or None (never set: the libraries' defaults)."""
    return _VERBOSE["verbose"]


def apply() -> None:
    """Apply the setting to diffusers and transformers if they are imported (call after importing
    them: their progress switches are module state, not environment variables)."""
    verbose = _VERBOSE["verbose"]
    if verbose is None:
        return
    for name in ("diffusers", "transformers"):
        if name not in sys.modules:
            continue
        try:
            mod = __import__(f"{name}.utils.logging", fromlist=["logging"])
        except Exception:  # noqa: BLE001 -- a broken import is reported where it is used
            continue
        if verbose:
            mod.enable_progress_bar()
        else:
            mod.disable_progress_bar()
            mod.set_verbosity_error()
    if "huggingface_hub" in sys.modules and not verbose:
        try:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        except Exception:  # noqa: BLE001
            pass
