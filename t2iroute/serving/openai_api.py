"""The OpenAI-compatible endpoints: ``POST /v1/images/generations``, ``GET /v1/models`` and, on a
server with an ``image_dir``, ``GET /images/{name}`` (the ``response_format=url`` images)."""

import base64
import io
import logging
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from t2iroute.router.policy import POLICY_KEYWORDS
from t2iroute.serving.errors import RequestError, error_response
from t2iroute.serving.models import ImageGenerationRequest, ImagesResponse, ModelList, request_body, responses
from t2iroute.serving.state import State, authorize
from t2iroute.serving.validation import check_generation, read_body

log = logging.getLogger("t2iroute.serving.app")  # the server's one logger (as before the split)

openai_router = APIRouter(dependencies=[Depends(authorize)])
images_router = APIRouter(dependencies=[Depends(authorize)])


@openai_router.get("/v1/models", responses=responses(401, ok=ModelList))
async def models(state: State):
    router = state.router
    cost = dict(zip(router.backend_names, map(float, router.costs)))
    data = [{"id": "router", "object": "model", "owned_by": "t2iroute", "policy": router.policy.describe()}]
    data += [{"id": f"router:{k}=X", "object": "model", "owned_by": "t2iroute"} for k in POLICY_KEYWORDS]
    data += [
        {
            "id": b,
            "object": "model",
            "owned_by": "t2iroute",
            "predicted_cost": cost[b],
            "cost_unit": router.cost_unit,
            "configured": b in router.backends,
        }
        for b in state.backends
    ]
    return {"object": "list", "data": data}


@openai_router.post(
    "/v1/images/generations",
    responses=responses(400, 401, 429, 500, ok=ImagesResponse),
    openapi_extra=request_body(ImageGenerationRequest),
)
async def generations(request: Request, state: State):
    req, policy, forced = check_generation(await read_body(request), state)
    metrics = state.metrics
    state.enter_queue()
    try:
        await state.wait_ready()
        t0 = time.perf_counter()
        results = await state.submit([req.prompt] * req.n, [req.seed + i for i in range(req.n)], policy, forced)
        metrics.gen_s.observe(time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 -- every backend failed: a 500 that says so
        log.warning("generation failed: %s: %s", type(e).__name__, e)
        return error_response(500, f"generation failed: {type(e).__name__}: {e}")
    finally:
        state.leave_queue()
    metrics.count_results(results)
    if state.autoscorer is not None:
        state.autoscorer.offer(results)  # a put_nowait per image: never waits
    # PNG encoding (tens of ms for a 512 px image) and writes: off the event loop
    items = await run_in_threadpool(
        _image_items,
        [r.image for r in results],
        req.response_format,
        state.image_root,
        str(request.base_url).rstrip("/"),
    )
    first = results[0]
    info = {
        "id": first.id,
        "backend": first.backend,
        "routed_backend": first.decision.backend,
        "policy": first.decision.policy,
        "images": [{k: v for k, v in r.to_dict().items() if k != "decision"} for r in results],
        "decision": first.decision.to_dict(),
        "cost_unit": state.router.cost_unit,
    }
    headers = {
        "x-t2iroute-id": first.id or "",
        "x-t2iroute-backend": first.backend,
        "x-t2iroute-routed-backend": first.decision.backend,
        "x-t2iroute-policy": first.decision.policy.get("type", ""),
        "x-t2iroute-latency-s": f"{sum(r.latency_s for r in results):.4f}",
    }
    return JSONResponse({"created": int(time.time()), "data": items, "t2iroute": info}, headers=headers)


@images_router.get(
    "/images/{name}",
    response_class=Response,
    responses=responses(401, 404, ok={"image/png": {"schema": {"type": "string", "format": "binary"}}}),
)
async def image(name: str, state: State):
    """A ``response_format=url`` image; with API keys on, only for a request carrying one."""
    if not name.endswith(".png") or "/" in name or name.startswith(".") or len(name) != 36:
        raise RequestError("no such image", None, status=404)
    path = state.image_root / name
    if not path.is_file():
        raise RequestError("no such image", None, status=404)
    return FileResponse(path, media_type="image/png")


def _image_items(images, fmt: str, image_root: Path | None, base_url: str) -> list[dict]:
    """The response's ``data``: each image as base64 PNG, or written (atomically) under
    ``image_root`` and given as a URL. Blocking: run it in a thread."""
    from t2iroute.paths import atomic_write_bytes

    items = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        if fmt == "b64_json":
            items.append({"b64_json": base64.b64encode(buf.getvalue()).decode("ascii"), "revised_prompt": None})
        else:
            name = f"{uuid.uuid4().hex}.png"
            image_root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(image_root / name, buf.getvalue())
            items.append({"url": f"{base_url}/images/{name}", "revised_prompt": None})
    return items
