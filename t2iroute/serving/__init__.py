"""``t2iroute serve``: an OpenAI-compatible image endpoint that routes every request."""

from t2iroute.serving.app import create_app, parse_model

__all__ = ["create_app", "parse_model"]
