"""HTTP serving: an OpenAI-compatible chat endpoint, a structured predict endpoint and a web page (FastAPI)."""

from .app import create_app

__all__ = ["create_app"]
