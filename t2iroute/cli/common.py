"""What route, generate and serve share: the artifact's router with the user's local settings,
the prompts, the one routing policy, the scorer, the image file; each refused before any model
loads when it is bad."""

from __future__ import annotations

import os
import sys

from t2iroute.cli.checks import show


def load_router(cfg):
    from omegaconf import OmegaConf

    from t2iroute.router.core import Router

    require_artifact(cfg)
    specs = OmegaConf.to_container(cfg.backends, resolve=True) if cfg.get("backends") else None
    router = Router.load(
        str(cfg.artifact), backends=specs, local=local_settings(cfg), expected_sha256=cfg.get("artifact_sha256")
    )
    router.warmup()  # model loading stays out of the decision's stage timings
    return router


def local_settings(cfg) -> dict:
    """The user's own endpoints and cache folders for the artifact's featurizers (``llm.*``,
    ``embedding.*``; an artifact never sets them): the keys given."""
    from omegaconf import OmegaConf

    return {
        k: {kk: vv for kk, vv in OmegaConf.to_container(cfg[k], resolve=True).items() if vv is not None}
        for k in ("llm", "embedding")
        if cfg.get(k)
    }


def require_artifact(cfg) -> None:
    from t2iroute.errors import ConfigError

    if not cfg.get("artifact"):
        raise ConfigError("artifact=DIR is required (a router folder written by t2iroute train)")


def read_prompts(cfg, prompts: list[str]) -> list[str]:
    """The command line's prompts and prompts_file's, checked (empty, not text, too long) before
    any model loads."""
    from t2iroute.errors import ConfigError
    from t2iroute.router.core import check_prompts

    items = list(prompts)
    src = cfg.get("prompts_file")
    if src == "-":
        items += [ln.strip() for ln in sys.stdin.read().splitlines() if ln.strip()]
    elif src:
        from t2iroute.training.prompts import read_prompts

        items += read_prompts(str(src)).prompt.tolist()
    if not items:
        raise ConfigError('no prompt given: t2iroute route "a red car" artifact=DIR (or prompts_file=FILE)')
    check_prompts(items)
    return items


def policy_kwargs(cfg) -> dict:
    """lam= | budget= | quality_floor= | max_cost= | policy={type: ...}: at most one, built once
    here so that a bad one is refused before the artifact loads."""
    from omegaconf import OmegaConf

    from t2iroute.errors import ConfigError
    from t2iroute.router.policy import POLICY_KEYWORDS, parse_policy, policy_from_keywords

    kw = {k: cfg.get(k) for k in POLICY_KEYWORDS if cfg.get(k) is not None}
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{k}={v}: a number is needed")
    if cfg.get("policy") is not None:
        pol = cfg.policy
        pol = OmegaConf.to_container(pol, resolve=True) if OmegaConf.is_config(pol) else pol
        if isinstance(pol, str):  # the text form, as over HTTP: policy='budget=0.3'
            try:
                ((key, pol),) = parse_policy(pol).items()
            except ValueError as e:
                raise ConfigError(f"policy={show(cfg.policy)}: {str(e).partition(': ')[2] or e}") from None
            if key != "policy":
                if key in kw:
                    raise ConfigError(
                        f"give at most one of lam=, budget=, quality_floor=, max_cost=, policy= (got {key}= twice)"
                    )
                kw[key] = pol
                pol = None
        if pol is not None and not isinstance(pol, dict):
            raise ConfigError(f"policy={pol}: give a mapping, e.g. 'policy={{type: lam, lam: 0.1}}'")
        if pol is not None:
            kw["policy"] = pol
    if len(kw) > 1:
        raise ConfigError(f"give at most one of lam=, budget=, quality_floor=, max_cost=, policy= (got {sorted(kw)})")
    for k, v in kw.items():
        try:
            policy_from_keywords(**{k: v})
        except (ValueError, TypeError) as e:
            msg = str(e)
            raise ConfigError(msg if k in msg else f"{k}={show(v)}: {msg}") from None
    return kw


def image_format(out: str) -> str:
    from PIL import Image

    from t2iroute.errors import ConfigError

    ext = os.path.splitext(out)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ConfigError(f"out={out}: unknown image type '{ext}' (use .png, .jpg or .webp)")
    return fmt


def write_image(image, out: str, fmt: str, key: str = "out") -> None:
    """:func:`t2iroute.router.batch.write_image`, an OSError named by the key that gave ``out``."""
    from t2iroute.errors import ConfigError
    from t2iroute.router.batch import write_image

    try:
        write_image(image, out, fmt)
    except OSError as e:
        raise ConfigError(f"{key}={out}: cannot write the image ({e.strerror or e})") from None


def load_scorer(cfg):
    """generate's / sweep's ``scorer=``, built and loaded now (None without one): a scorer that
    cannot load (CLIP weights not on this machine and no model hub) is a ConfigError naming it,
    raised before any image is generated."""
    from omegaconf import OmegaConf

    from t2iroute.scoring import load_scorer

    if not cfg.get("scorer"):
        return None
    name = None
    try:
        from hydra.core.hydra_config import HydraConfig

        name = HydraConfig.get().runtime.choices.get("scorer")
    except Exception:  # noqa: BLE001 -- composed without Hydra's run context: the spec's type names it
        pass
    return load_scorer(OmegaConf.to_container(cfg.scorer, resolve=True), name)
