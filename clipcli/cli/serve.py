"""`clip serve`: parse options, load the model, run uvicorn (the service itself is clipcli.service)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from .. import config
from .common import handles_errors
from .options import MODEL_GROUP, UI, uses

SERVICE = "Service"
LIMITS = "Limits"


@handles_errors
@uses(MODEL_GROUP, UI)
def serve(
    store: Annotated[Optional[Path], typer.Option("--store", metavar="STORE", rich_help_panel=SERVICE, help=(
        "A store from `clip embed`: enables POST /v1/search and the page's search box (and its model is "
        "served when no --model is given)."))] = None,
    host: Annotated[str, typer.Option("--host", rich_help_panel=SERVICE, help=(
        "Address to listen on. Anything but loopback needs --api-key."))] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, rich_help_panel=SERVICE,
                                      help="TCP port (0: any free port).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="CLIPCLI_API_KEY", show_envvar=True, rich_help_panel=SERVICE, help=(
            "Required on every endpoint but /health (Authorization: Bearer KEY; the page asks for it)."))] = None,
    allow_dir: Annotated[Optional[List[Path]], typer.Option(
        "--allow-dir", metavar="DIR", rich_help_panel=SERVICE, help=(
            "Let requests name images by path ({\"path\": ...}) inside DIR (repeatable). Off by default."))] = None,
    allow_urls: Annotated[Optional[List[str]], typer.Option(
        "--allow-urls", metavar="PREFIX", rich_help_panel=SERVICE, help=(
            "Let requests name images by URL ({\"url\": ...}) under PREFIX, e.g. https://images.example.com/photos/ "
            "(repeatable; redirects are not followed). Off by default."))] = None,
    cors: Annotated[Optional[List[str]], typer.Option(
        "--cors", metavar="ORIGIN", rich_help_panel=SERVICE,
        help="Allow this web origin to call the API from a browser (repeatable). Off by default.")] = None,
    templates: Annotated[Optional[str], typer.Option(
        "--templates", "-t", rich_help_panel=SERVICE,
        help="Default template set of requests that name none.")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, rich_help_panel=LIMITS, help=(
        "Images encoded together at most (1: no batching)."))] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, rich_help_panel=LIMITS, help=(
        "How long a batch waits for more images after its first."))] = 5.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, rich_help_panel=LIMITS, help=(
        "Images waiting to be encoded at most; beyond, requests get 503 with Retry-After."))] = 256,
    timeout: Annotated[float, typer.Option("--timeout", min=0.01, rich_help_panel=LIMITS, help=(
        "Seconds a request may take (504 after; its queued work is dropped)."))] = 30.0,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, rich_help_panel=LIMITS, help=(
        "Largest request body (413 above)."))] = 32.0,
    max_megapixels: Annotated[float, typer.Option("--max-megapixels", min=0.001, rich_help_panel=LIMITS, help=(
        "Refuse larger images before decoding (decompression bombs)."))] = config.DEFAULT_MAX_MEGAPIXELS,
    *, model, ui,
) -> None:
    """Serve the model over HTTP: a JSON API (classify, embeddings, search), metrics, and a web page at /."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise _usage(f"clip serve needs the serve extra ({exc.name} is missing): pip install fastapi uvicorn "
                     "prometheus_client python-multipart httpx (in a clipcli checkout: pip install '.[serve]')") \
            from None

    from ..service import ServeConfig, check_exposure, create_app
    from ..service.app import load_service
    from . import output

    check_exposure(host, api_key)  # before anything slow
    for folder in allow_dir or []:
        if not folder.is_dir():
            raise _usage(f"--allow-dir {folder}: not a folder")
    for prefix in allow_urls or []:
        if not prefix.startswith(("http://", "https://")) or "/" not in prefix.split("://", 1)[1]:
            raise _usage(f"--allow-urls {prefix}: give a URL prefix with a path, e.g. https://images.example.com/")
    settings = ServeConfig(
        model=model, store=str(store) if store is not None else None, templates=templates,
        max_megapixels=max_megapixels, max_batch=max_batch, max_wait=max_wait_ms / 1000, max_queue=max_queue,
        timeout=timeout, max_upload=int(max_upload_mb * 1024 * 1024), api_key=api_key or None,
        allow_dirs=tuple(str(folder.resolve()) for folder in allow_dir or []), allow_urls=tuple(allow_urls or []),
        cors=tuple(cors or []))
    if templates is not None:
        from ..service.records import template_set

        template_set(templates)  # an unknown set is refused now, not by every request
    sock = _bind(host, port)  # a port in use is refused before the model loads; nobody can connect until listen
    try:
        service = load_service(settings)  # the model loaded and warmed before the port opens
        app = create_app(settings, service)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning" if ui.quiet else "info",
                                              access_log=not ui.quiet,
                                              timeout_graceful_shutdown=settings.timeout + 5))
        if not ui.quiet:
            shown = f"[{host}]" if ":" in host else host
            output.info(f"serving {service.describe()['name']} on http://{shown}:{sock.getsockname()[1]}/ "
                        "(API docs at /docs); Ctrl-C or SIGTERM stops")
        _run_until_signal(server, sock)
    finally:
        sock.close()


def _bind(host: str, port: int):
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise _usage(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another --port or --host)") \
            from None
    return sock


def _run_until_signal(server, sock) -> None:
    """uvicorn drains in-flight requests on SIGTERM, then raises the signal again; a handler of ours takes that
    second one, so SIGTERM ends the command with 0 (SIGINT still ends it with 130)."""
    import signal

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)


def _usage(message: str):
    from ..errors import UsageError

    return UsageError(message)
