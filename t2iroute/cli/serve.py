"""``t2iroute serve``: the HTTP API in one uvicorn process, or on Ray Serve (``engine=ray``)."""

from __future__ import annotations

import json
import os

from t2iroute.cli.common import load_router, local_settings, require_artifact


def serve(cfg) -> None:
    """Serve the artifact's router until SIGINT/SIGTERM (uvicorn finishes the requests in flight)."""
    from t2iroute.errors import ConfigError

    require_artifact(cfg)
    keys = None
    if cfg.get("api_keys_env"):
        raw = os.environ.get(str(cfg.api_keys_env), "")
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        if not keys:
            raise ConfigError(f"api_keys_env={cfg.api_keys_env}: that environment variable holds no key")
    try:
        import uvicorn

        from t2iroute.serving import create_app
    except ImportError as e:
        raise ConfigError(f"serve needs FastAPI and uvicorn: pip install 't2iroute[serve]' ({e})") from None
    app_kwargs = {
        "api_keys": keys,
        "image_dir": cfg.get("image_dir"),
        "max_queue": int(cfg.max_queue),
        "max_n": int(cfg.max_n),
        "max_route_prompts": int(cfg.max_route_prompts),
    }
    if cfg.get("engine", "process") == "ray":
        for k in ("log_dir", "explore"):
            if cfg.get(k):
                raise ConfigError(f"{k}={cfg.get(k)}: not on engine=ray yet; serve it with engine=process")
        return serve_ray(cfg, app_kwargs)
    router = load_router(cfg)
    learning_loop(router, cfg)
    autoscorer = build_autoscorer(router, cfg)
    warmup = bool(cfg.get("warmup", True))  # /ready: 503 until every backend has loaded (a second stdout line)
    app = create_app(
        router,
        **app_kwargs,
        warmup=warmup,
        on_ready=lambda info: print(json.dumps({"ready": True, **info}), flush=True),
        artifact_path=str(cfg.artifact),
        local=local_settings(cfg),
        autoscorer=autoscorer,
    )
    print(
        json.dumps(
            {
                "serving": f"http://{cfg.host}:{cfg.port}/v1",
                "backends": router.backend_names,
                "auth": bool(keys),
                "warmup": warmup,
            }
        ),
        flush=True,
    )
    import signal

    # uvicorn finishes the requests in flight on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was there before it: a no-op one makes a graceful stop exit with status 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGHUP, lambda *_: _reload_in_background(app))  # as POST /admin/reload
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level="warning", timeout_graceful_shutdown=60)


def _reload_in_background(app) -> None:
    import logging
    import threading

    def run():
        try:
            app.state.t2iroute.reload()
        except Exception as e:  # noqa: BLE001 -- the old router keeps serving
            logging.getLogger("t2iroute").warning("SIGHUP reload failed, still serving the previous artifact: %s", e)

    threading.Thread(target=run, name="t2iroute-reload", daemon=True).start()


def build_autoscorer(router, cfg):
    """``autoscore.share > 0``: the scorer loaded now (one that cannot load stops the server
    before it serves), its background worker started."""
    from t2iroute.errors import ConfigError

    opts = cfg.get("autoscore") or {}
    share = float(opts.get("share", 0.0) or 0.0)
    if share <= 0:
        return None
    if not cfg.get("log_dir"):
        raise ConfigError(f"autoscore.share={share}: scores go to the decision log; give log_dir=DIR")
    from t2iroute.paths import bundled_config
    from t2iroute.scoring import load_scorer
    from t2iroute.serving.autoscore import AutoScorer

    name = str(opts.get("scorer", "clip"))
    spec = bundled_config("scorer", name) or {"type": name}
    scorer = load_scorer(spec, name)
    try:
        return AutoScorer(router, scorer, share=share, max_queue=int(opts.get("max_queue", 64)))
    except ValueError as e:
        raise ConfigError(f"autoscore.scorer={name}: {e}") from None


def learning_loop(router, cfg) -> None:
    """``log_dir``, ``log.*`` and ``explore`` on a loaded router."""
    if cfg.get("log_dir"):
        lg = cfg.get("log") or {}
        router.log_decisions(
            str(cfg.log_dir),
            prompts=bool(lg.get("prompts", True)),
            features=bool(lg.get("features", True)),
            max_bytes=int(float(lg.get("max_mb", 256.0)) * 2**20),
            max_files=int(lg.get("max_files", 8)),
        )
    explore = float(cfg.get("explore", 0.0) or 0.0)
    if not 0.0 <= explore < 1.0:
        from t2iroute.errors import ConfigError

        raise ConfigError(f"explore={explore}: a probability in [0, 1)")
    router.explore = explore


def serve_ray(cfg, app_kwargs) -> None:
    """engine=ray: the library deploys on Ray Serve and answers until SIGINT/SIGTERM."""
    from omegaconf import OmegaConf

    from t2iroute.serving import ray as ray_serve

    opts = ray_serve.RayServeOptions.from_mapping(
        OmegaConf.to_container(cfg.ray, resolve=True) if cfg.get("ray") else {}
    )
    specs = OmegaConf.to_container(cfg.backends, resolve=True) if cfg.get("backends") else {}

    def started(info) -> None:
        print(
            json.dumps(
                {
                    "serving": f"http://{cfg.host}:{cfg.port}/v1",
                    "backends": info["backends"],
                    "auth": bool(app_kwargs["api_keys"]),
                    "engine": "ray",
                    "models": info["models"],
                }
            ),
            flush=True,
        )

    ray_serve.serve_until_signalled(
        str(cfg.artifact),
        specs,
        opts,
        host=str(cfg.host),
        port=int(cfg.port),
        local=local_settings(cfg),
        app_kwargs=app_kwargs,
        expected_sha256=cfg.get("artifact_sha256"),
        warmup=bool(cfg.get("warmup", True)),
        on_started=started,
    )
