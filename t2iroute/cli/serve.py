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
    from t2iroute.serving.loop import check_loop, load_loop_scorer, loop_settings

    loop = loop_settings(cfg)
    check_loop(loop)
    app_kwargs = {
        "loop": loop,
        "reload_poll_s": float(cfg.get("reload_poll_s", 0.0) or 0.0),
        "api_keys": keys,
        "image_dir": cfg.get("image_dir"),
        "max_queue": int(cfg.max_queue),
        "max_n": int(cfg.max_n),
        "max_route_prompts": int(cfg.max_route_prompts),
    }
    scorer = load_loop_scorer(loop)  # one that cannot load stops here, before anything serves
    if cfg.get("engine", "process") == "ray":
        return serve_ray(cfg, app_kwargs)  # each router replica loads it again
    router = load_router(cfg)
    warmup = bool(cfg.get("warmup", True))  # /ready: 503 until every backend has loaded (a second stdout line)
    app = create_app(
        router,
        **app_kwargs,
        warmup=warmup,
        on_ready=lambda info: print(json.dumps({"ready": True, **info}), flush=True),
        artifact_path=str(cfg.artifact),
        local=local_settings(cfg),
        loop_scorer=scorer,
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
