"""Pydantic models of the HTTP API: the request bodies and the answers, as ``GET /openapi.json``
documents them.

The handlers do not let pydantic validate a request: :mod:`t2iroute.serving.validation` checks the
raw body by hand (every refusal keeps its OpenAI-style error, status and message naming the field)
and builds the request model from the checked values. A request model's bounds that depend on
the server (``n`` up to ``max_n``, the backends' sizes, ``url`` only with an ``image_dir``, the
backends' names, ``max_route_prompts``) are set by :class:`RequestModels`, one per app; the
classes here carry the rest. The answers are documented, not enforced: the handlers build them
as dicts (extra fields are allowed in each model)."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from t2iroute.router.core import MAX_PROMPT_CHARS

#: one prompt: not blank, at most MAX_PROMPT_CHARS characters
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=r"\S")]

MODEL_HELP = (
    "router, router:lam=X, router:budget=X, router:quality_floor=X, router:max_cost=X, "
    "router:policy={type: NAME, ...} or a backend"
)
SEED_MAX = 2**63 - 2  # the largest seed the server takes (with n=1: it wants seed + n below 2**63)
SEED_HELP = "the first image's seed; image i gets seed + i (seed + n below 2**63)"


# -- requests ------------------------------------------------------------------------------------


class ImageGenerationRequest(BaseModel):
    """``POST /v1/images/generations``: the OpenAI images API's request. Fields it does not know
    are ignored."""

    prompt: Prompt = Field(description="the prompt (not blank)")
    n: int = Field(1, ge=1, description="how many images (at most the server's max_n)")
    size: str | None = Field(None, description="WIDTHxHEIGHT of one of the backends, or auto")
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="b64_json (the default), or url (a server with an image_dir)"
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description=SEED_HELP)
    model: str | None = Field(None, description=MODEL_HELP, examples=["router"])


class RouteRequest(BaseModel):
    """``POST /v1/route``: the routing decision for one prompt, or for a list (at most the server's
    max_route_prompts), routed together."""

    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1)] = Field(description="a prompt or a list")
    model: str | None = Field(None, description=MODEL_HELP, examples=["router"])


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a realized score for an image the server made (its ``t2iroute.id``
    or ``t2iroute.images[i].id``), in the metric's units. The same score sent again changes
    nothing; a new score from the same source replaces the earlier one."""

    id: str = Field(description="the image's id", examples=["img-0123456789abcdef0123456789abcdef"])
    score: float = Field(description="the realized quality, in the router's metric units")
    source: Literal["user", "autoscore"] = Field("user", description="who scored it")


class Feedback(BaseModel):
    """What ``POST /v1/feedback`` recorded."""

    id: str
    recorded: bool = True
    replaced: bool = Field(description="true if it replaced a score from the same source")


class ArtifactInfo(BaseModel):
    """The served artifact: its ``manifest_sha256``, folder and load time (Unix seconds)."""

    sha256: str | None
    path: str | None
    loaded_at: float


class ReloadInfo(ArtifactInfo):
    """What ``POST /admin/reload`` loaded."""

    previous_sha256: str | None
    reload_s: float


class RequestModels:
    """One server's request models: the classes above with its bounds (``generation``, ``route``)."""

    def __init__(self, *, backends: list[str], sizes: set[str], max_n: int, url: bool, max_route_prompts: int):
        model = (str | None, Field(None, description=MODEL_HELP, examples=["router", *backends]))
        self.generation: type[ImageGenerationRequest] = create_model(
            "ImageGenerationRequest",
            __base__=ImageGenerationRequest,
            __doc__=ImageGenerationRequest.__doc__,
            n=(int, Field(1, ge=1, le=max_n, description="how many images")),
            size=(
                Literal[(*sorted(sizes), "auto")] | None,
                Field(None, description="WIDTHxHEIGHT of one of the backends, or auto"),
            ),
            response_format=(
                Literal[("b64_json", "url") if url else ("b64_json",)] | None,
                Field(None, description="b64_json (the default)" + (", or url" if url else "")),
            ),
            seed=(int, Field(0, ge=0, le=SEED_MAX, description=SEED_HELP)),
            model=model,
        )
        self.route: type[RouteRequest] = create_model(
            "RouteRequest",
            __base__=RouteRequest,
            __doc__=RouteRequest.__doc__,
            prompt=(
                Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=max_route_prompts)],
                Field(description="a prompt or a list"),
            ),
            model=model,
        )

    def schemas(self) -> dict[str, dict]:
        """The models' JSON schemas, by name (the OpenAPI components of the request bodies)."""
        return {
            m.__name__: m.model_json_schema(ref_template="#/components/schemas/{model}")
            for m in (self.generation, self.route)
        }


def request_body(model: type[BaseModel]) -> dict:
    """An operation's ``requestBody`` (OpenAPI) referring to ``model``'s schema component."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


# -- answers -------------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Open):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error or server_error")
    param: str | None = Field(None, description="the field at fault (null: the message names the limit)")
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer: an OpenAI-style error object."""

    error: ErrorDetail


class RouteDecision(_Open):
    """Where one prompt goes, and why (:class:`t2iroute.router.core.RouteDecision`)."""

    prompt: str
    backend: str = Field(description="the chosen backend (a forced one where model names a backend)")
    policy: dict[str, Any]
    predicted_quality: dict[str, float]
    higher_is_better: bool
    cost: dict[str, float]
    ranking: list[str]
    timings_s: dict[str, float]
    cost_unit: str | None = Field(None, description="the unit of the costs (in /v1/route answers)")
    lam: float | None = Field(None, alias="lambda")
    utility: dict[str, float] | None = None
    anchor: str | None = None
    imputed: dict[str, str] | None = None
    predicted_clipped: bool | None = None
    predicted_quality_raw: dict[str, float] | None = None
    out_of_domain: dict[str, Any] | None = None
    warnings: list[str] | None = None


class RouteList(BaseModel):
    """``POST /v1/route`` of a list of prompts: a decision each, in order."""

    data: list[RouteDecision]


class ImageData(_Open):
    """One image: ``b64_json`` (a PNG) or ``url``."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class GeneratedImage(_Open):
    """What made one image (:meth:`t2iroute.router.core.GenerateResult.to_dict` less the decision)."""

    id: str | None = Field(None, description="the image's id: POST /v1/feedback scores it")
    backend: str
    routed_backend: str
    seed: int
    latency_s: float
    route_s: float
    cost: float | None = None
    steps_run: int | None = None
    steps_budget: int | None = None
    nfe: int | None = None
    stopped_early: bool | None = None
    fallbacks: list[dict[str, Any]] = Field(description="each backend tried before, with its error")


class RoutingInfo(_Open):
    """The ``t2iroute`` field of a generation's answer: the routing of its first image and each image's record."""

    id: str | None = Field(None, description="the first image's id (also the x-t2iroute-id header)")
    backend: str
    routed_backend: str
    policy: dict[str, Any]
    images: list[GeneratedImage]
    decision: RouteDecision
    cost_unit: str


class ImagesResponse(_Open):
    """``POST /v1/images/generations``: the OpenAI images API's answer plus ``t2iroute``."""

    created: int
    data: list[ImageData]
    t2iroute: RoutingInfo


class ModelCard(_Open):
    id: str
    object: Literal["model"]
    owned_by: str
    policy: dict[str, Any] | None = Field(None, description="the artifact's default policy (id router)")
    predicted_cost: float | None = Field(None, description="a backend's cost in the router's table")
    cost_unit: str | None = None
    configured: bool | None = Field(None, description="whether this server can run the backend")


class ModelList(_Open):
    """``GET /v1/models``: the router variants and the backends."""

    object: Literal["list"]
    data: list[ModelCard]


class Health(_Open):
    """``GET /health`` (liveness)."""

    status: Literal["ok"]
    ready: bool
    backends: list[str]
    queue_depth: int
    engine: str
    artifact: ArtifactInfo | None = None


class Readiness(_Open):
    """``GET /ready`` (readiness): ``ready``, or ``warming_up`` (503) while the models load."""

    status: Literal["ready", "warming_up"]
    warmup: bool
    warmup_s: float | None
    failed: dict[str, str] | None = Field(None, description="what could not load, with its error")


_WHY = {
    400: "bad input (the error's param names the field)",
    401: "no or a wrong API key",
    404: "no such image (or image id)",
    409: "no reload: the server has no artifact folder, or the new artifact does not load or routes to other backends",
    429: "the queue is full",
    500: "every backend failed to make an image",
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}


def responses(*codes: int, ok: Any = None) -> dict:
    """An operation's ``responses``: 200 (``ok``: a model or a union of models, or the content as a
    dict) and the error codes."""
    out: dict = {c: {"description": _WHY[c], "model": ErrorResponse} for c in codes}
    if 429 in codes:
        out[429]["headers"] = _RETRY_AFTER
    if isinstance(ok, dict):
        out[200] = {"description": "OK", "content": ok}
    elif ok is not None:
        out[200] = {"description": "OK", "model": ok}
    return out
