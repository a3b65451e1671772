"""Errors the server answers with: :class:`RequestError` and the OpenAI-style error object.

Imports nothing from FastAPI (``t2iroute.serving.app`` stays importable without the ``serve`` extra);
:func:`error_response` imports Starlette when called."""

from typing import Any


class RequestError(Exception):
    """A request the server refuses: ``status`` (400 by default) with an OpenAI-style error whose
    ``param`` names the field (None: the message names the limit), plus ``headers``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.param, self.status, self.headers = param, status, headers or {}


def error_type(status: int) -> str:
    """The OpenAI error ``type`` of an HTTP status."""
    return {401: "authentication_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}`` (:class:`t2iroute.serving.models.ErrorResponse`)."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": None}}


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None):
    """The JSON response of an error (every 4xx and 5xx the server sends)."""
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def short(value: Any) -> str:
    """``repr`` of a client's value, cut to 80 characters (it goes into an error message)."""
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."
