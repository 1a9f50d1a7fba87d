"""`clip serve`: the library as a local HTTP service and web page (needs the `serve` extra: fastapi, uvicorn,
prometheus_client, python-multipart).  See app.py."""

from .app import ServeConfig, check_exposure, create_app  # noqa: F401 (API)
