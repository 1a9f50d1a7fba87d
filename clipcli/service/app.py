"""`clip serve`: the library behind an HTTP API and a web page (FastAPI on uvicorn, metrics by prometheus_client).

    from clipcli.service import ServeConfig, create_app
    app = create_app(ServeConfig(model=ModelOptions("demo")))   # uvicorn.run(app, host="127.0.0.1", port=8000)

The model is loaded (and its sessions warmed) in the app's lifespan, before uvicorn opens the port: the first
request is never a cold load.  Everything a request needs lives on `app.state.service` (no module globals).
Images are decoded from the request's bytes by the project's decode path (`images.read_image_bytes`: EXIF
orientation, the decompression-bomb guard) and encoded by the dynamic batcher (`batcher`); records come from
`records.classify_records`, the same scoring as `clip classify`.  Errors are JSON `{"error": {"type",
"message"}}` with the status of ERROR_STATUS.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import ipaddress
import json
import os
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import config as clip_config
from ..batches import BatchItem
from ..errors import (
    ClipCliError,
    DeviceError,
    ExportError,
    InputError,
    LabelError,
    ModelLoadError,
    StoreError,
    TemplateError,
    UsageError,
)
from ..options import ModelOptions, OpenSetOptions
from .batcher import Batcher, BatcherClosed, DeadlineExceeded, QueueFull
from .records import ClassifyParams, ScorerCache, classify_records, labels_of, template_set

STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = ("localhost",)
ENV_API_KEY = "CLIPCLI_API_KEY"
MAX_IMAGES = 64  # images in one request


class ServiceError(Exception):
    """A request the service refuses: an HTTP status, a type and a message for people."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


class BodyTooLarge(Exception):
    pass


class Forbidden(ClipCliError):
    """A request for something the operator did not allow (a server-side path, a URL)."""


# The one table from exceptions to HTTP status (first match wins: subclasses before their bases).
ERROR_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (BodyTooLarge, 413, "too_large"),
    (QueueFull, 503, "busy"),
    (BatcherClosed, 503, "shutting_down"),
    (DeadlineExceeded, 504, "timeout"),
    (Forbidden, 403, "forbidden"),
    (TemplateError, 400, "bad_templates"),
    (LabelError, 400, "bad_labels"),
    (InputError, 400, "bad_input"),
    (UsageError, 400, "bad_request"),
    (StoreError, 503, "store_unavailable"),
    (ModelLoadError, 500, "model"),
    (DeviceError, 500, "model"),
    (ExportError, 500, "model"),
    (ClipCliError, 400, "bad_request"),
)


def error_status(exc: BaseException) -> tuple[int, str]:
    for kind, status, name in ERROR_STATUS:
        if isinstance(exc, kind):
            return status, name
    return 500, "internal"


def error_response(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None) -> None:
    """Listening beyond this machine needs an API key (raised before anything is loaded)."""
    if not is_loopback(host) and not api_key:
        raise UsageError(f"--host {host} is reachable from other machines; give an API key with --api-key KEY "
                         f"(or ${ENV_API_KEY}), or listen on 127.0.0.1")


@dataclass(frozen=True)
class ServeConfig:
    """How the service runs (built once by `clip serve`, or by a test)."""

    model: ModelOptions = ModelOptions()
    store: str | None = None
    templates: str | None = None  # default template set; None: $CLIPCLI_TEMPLATES or imagenet
    max_megapixels: float | None = clip_config.DEFAULT_MAX_MEGAPIXELS
    max_batch: int = 32  # images per model call (1: batching off)
    max_wait: float = 0.005  # seconds the batcher waits for more images after the first
    max_queue: int = 256  # images waiting; beyond, 503 + Retry-After
    timeout: float = 30.0  # seconds a request may take (504 after)
    max_upload: int = 32 * 1024 * 1024  # bytes of one request body (413 above)
    api_key: str | None = None  # required on every endpoint but /health when set
    allow_dirs: tuple[str, ...] = ()  # folders requests may name images in ({"path": ...}); none by default
    allow_urls: tuple[str, ...] = ()  # URL prefixes requests may name images by ({"url": ...}); none by default
    cors: tuple[str, ...] = ()  # origins allowed by CORS; none by default


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process do not clash)."""

    def __init__(self, queue_depth) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("clipcli_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("clipcli_request_seconds", "Time to answer a request", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("clipcli_batch_images", "Images per model call", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.images = Counter("clipcli_images_encoded", "Images encoded", registry=self.registry)
        self.in_flight = Gauge("clipcli_requests_in_flight", "Requests being answered", ["endpoint"],
                               registry=self.registry)
        queue = Gauge("clipcli_queue_images", "Images waiting to be encoded", registry=self.registry)
        queue.set_function(queue_depth)
        speed = Gauge("clipcli_images_per_second", "Images encoded per second over the last 10 seconds",
                      registry=self.registry)
        self._recent: deque = deque(maxlen=4096)
        self._lock = threading.Lock()
        speed.set_function(self.images_per_second)

    def on_batch(self, images: int, seconds: float) -> None:
        self.batch.observe(images)
        self.images.inc(images)
        with self._lock:
            self._recent.append((time.monotonic(), images))

    def images_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        with self._lock:
            return sum(n for t, n in self._recent if now - t <= window) / window


@dataclass
class Service:
    """What the lifespan loaded: the model, the batcher, the scorer cache, the store (if any)."""

    config: ServeConfig
    loaded: Any
    batcher: Batcher
    scorers: ScorerCache
    metrics: Metrics
    started: float = field(default_factory=time.time)
    text_lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self) -> dict:
        return self.loaded.describe()


# --- requests: images ---------------------------------------------------------------------------------------------
def _b64(text: str, where: str) -> bytes:
    """Base64 or a data URI's base64 payload."""
    if not isinstance(text, str):
        raise UsageError(f"{where}: expected a base64 string or a data URI")
    if text.startswith("data:"):
        head, comma, text = text.partition(",")
        if not comma or not head.endswith(";base64"):
            raise UsageError(f"{where}: a data URI must be base64-encoded (data:image/...;base64,...)")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UsageError(f"{where}: not valid base64 ({exc})") from None


def _allowed_path(value: Any, allow_dirs: tuple[str, ...], where: str) -> str:
    """A server-side path a request names: only inside an --allow-dir, after resolving symlinks and `..`."""
    if not allow_dirs:
        raise Forbidden(f"{where}: this service reads no server-side paths; send the image's bytes (base64), "
                        "or start clip serve with --allow-dir DIR")
    if not isinstance(value, str) or not value or "\0" in value:
        raise UsageError(f"{where}: path must be a non-empty string")
    real = os.path.realpath(value if os.path.isabs(value) else os.path.join(allow_dirs[0], value))
    for folder in allow_dirs:
        root = os.path.realpath(folder)
        if os.path.commonpath([root, real]) == root:
            return real
    raise Forbidden(f"{where}: {value!r} is outside the folders this service may read (--allow-dir)")


class Source(NamedTuple):
    """One image of a request: its bytes, or a server-side path (--allow-dir), or a URL (--allow-urls)."""

    name: str
    data: bytes | None = None
    path: str | None = None
    url: str | None = None


def _allowed_url(value: Any, prefixes: tuple[str, ...], where: str) -> str:
    """A URL a request names: fetched only under an --allow-urls prefix (same scheme, host and port, a path below
    the prefix's), with no `..` segment, no encoded separator or dot, no user name."""
    from urllib.parse import urlsplit

    if not prefixes:
        raise Forbidden(f"{where}: this service fetches no URLs; send the image's bytes (base64), or start clip "
                        "serve with --allow-urls PREFIX")
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: url must be a non-empty string")
    url = urlsplit(value)
    lowered = url.path.lower()
    unsafe = (url.scheme not in ("http", "https") or "@" in url.netloc or "\\" in value
              or any(code in lowered for code in ("%2f", "%5c", "%2e", "%00"))
              or any(part in (".", "..") for part in url.path.split("/")))
    if not unsafe:
        for prefix in prefixes:
            allowed = urlsplit(prefix)
            if ((url.scheme, url.netloc.lower()) == (allowed.scheme, allowed.netloc.lower())
                    and url.path.startswith(allowed.path.rstrip("/") + "/")):
                return value
    raise Forbidden(f"{where}: {value!r} is outside the URLs this service may fetch (--allow-urls)")


def _image_source(value: Any, config: ServeConfig, where: str) -> Source:
    """One image item: base64, a data URI, {"image": ...}, {"path": ...} (with --allow-dir) or {"url": ...} (with
    --allow-urls)."""
    if isinstance(value, dict):
        if "path" in value:
            return Source(str(value["path"]), path=_allowed_path(value["path"], config.allow_dirs, where))
        if "url" in value:
            return Source(str(value["url"]), url=_allowed_url(value["url"], config.allow_urls, where))
        name = value.get("name") if isinstance(value.get("name"), str) else where
        return Source(name, _b64(value.get("image"), where))
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return Source(value, url=_allowed_url(value, config.allow_urls, where))
    return Source(where, _b64(value, where))


def fetch(url: str, limit: int, timeout: float) -> bytes:
    """An allowed URL's bytes: no redirect followed (it could leave the allowed prefix), at most `limit` bytes."""
    import httpx

    from ..errors import ImageReadError

    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=False) as response:
            if response.is_redirect:
                raise ImageReadError(url, f"redirected ({response.status_code}); redirects are not followed",
                                     "fetch_failed")
            if response.status_code != 200:
                raise ImageReadError(url, f"HTTP {response.status_code} from the server", "fetch_failed")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > limit:
                    raise ImageReadError(url, f"larger than the service's limit of {limit} bytes", "too_large")
            return bytes(body)
    except httpx.HTTPError as exc:
        raise ImageReadError(url, f"cannot fetch ({type(exc).__name__}: {exc})", "fetch_failed") from None


def decode(service: Service, source: Source):
    """(BatchItem, pixels or None) of one image: decoded and preprocessed as `clip classify` does."""
    from ..errors import ImageReadError
    from ..images import read_image, read_image_bytes

    name, data, path = source.name, source.data, source.path
    try:
        if source.url is not None:
            data = fetch(source.url, service.config.max_upload, min(30.0, service.config.timeout))
        if data is not None:
            image, size = read_image_bytes(name, data, service.config.max_megapixels)
        else:
            image, size = read_image(path, service.config.max_megapixels)
            name = path
        return BatchItem(name, None, size), np.asarray(service.loaded.preprocess(image), dtype=np.float32)
    except ImageReadError as exc:
        return BatchItem(name, (exc.kind, exc.reason)), None
    except Exception as exc:  # noqa: BLE001  (a preprocess failure is this image's problem only)
        return BatchItem(name, ("decode_error", f"cannot preprocess image ({exc})")), None


async def encode_items(service: Service, sources: list[Source], deadline: float):
    """Decode every image (a worker thread each), encode the readable ones in the batcher; (items, features)."""
    from starlette.concurrency import run_in_threadpool

    decoded = await asyncio.gather(*(run_in_threadpool(decode, service, source) for source in sources))
    items = [item for item, _ in decoded]
    pixels = [p for _, p in decoded if p is not None]
    if not pixels:
        return items, None
    future = service.batcher.submit(np.stack(pixels), deadline)
    try:
        features = await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        future.cancel()  # still queued: dropped without being encoded
        raise DeadlineExceeded(f"the request took longer than {service.config.timeout:g} s") from None
    return items, features


# --- requests: parsing ---------------------------------------------------------------------------------------------
async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"the request body is not valid JSON ({exc})") from None


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "on", "yes", "0", "false", "off", "no", ""):
        return value.lower() in ("1", "true", "on", "yes")
    raise UsageError(f"parameters.{name} must be true or false")


def _number(value: Any, name: str, kind=float, low: float | None = None, high: float | None = None):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"parameters.{name} must be a number") from None
    if isinstance(value, bool) or (low is not None and number < low) or (high is not None and number > high):
        raise UsageError(f"parameters.{name} must be a number from {low:g}"
                         + (f" to {high:g}" if high is not None else ""))
    return number


def classify_params(labels: Any, parameters: dict, default_templates: str | None) -> ClassifyParams:
    if not isinstance(parameters, dict):
        raise UsageError("parameters must be an object")
    known = {"hypothesis_template", "templates", "top_k", "score", "other", "other_threshold", "other_label"}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise UsageError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    score = parameters.get("score", "softmax")
    if score not in ("softmax", "sigmoid"):
        raise UsageError(f"parameters.score {score!r}: use softmax or sigmoid")
    threshold = parameters.get("other_threshold")
    other = OpenSetOptions(_flag(parameters.get("other", False), "other"),
                           str(parameters.get("other_label") or "other"),
                           None if threshold in (None, "") else _number(threshold, "other_threshold", float, 0, 1))
    return ClassifyParams(labels_of(labels), template_set(parameters.get("templates") or None,
                                                          parameters.get("hypothesis_template"), default_templates),
                          score, _number(parameters.get("top_k", 5), "top_k", int, 0), other)


async def classify_request(request: Request, service: Service):
    """(params, image sources) from the Hugging Face JSON schema or a multipart form."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_IMAGES, max_fields=64)
        uploads = [value for key, value in form.multi_items() if key in ("image", "images", "file", "files")
                   and not isinstance(value, str)]
        if not uploads:
            raise InputError("no image in the form; upload one or more files in the field `image`")
        params = {key: value for key, value in form.multi_items() if isinstance(value, str) and key not in
                  ("labels", "candidateLabels")}
        labels = form.get("labels", form.get("candidateLabels"))
        sources = [Source(upload.filename or f"image[{n}]", await upload.read()) for n, upload in enumerate(uploads)]
        return classify_params(labels, params, service.config.templates), sources
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), (dict, str, list)):
        raise UsageError('expected {"inputs": {"image": BASE64, "candidateLabels": [...]}, "parameters": {...}}')
    inputs = body["inputs"]
    parameters = body.get("parameters") or {}
    if not isinstance(inputs, dict):  # Hugging Face's other form: the image(s) as inputs, labels in parameters
        parameters = dict(parameters) if isinstance(parameters, dict) else parameters
        inputs = {"image": inputs, "candidateLabels": parameters.pop("candidate_labels", None)
                  if isinstance(parameters, dict) else None}
    params = classify_params(inputs.get("candidateLabels", inputs.get("candidate_labels")), parameters,
                             service.config.templates)
    images = inputs.get("image", inputs.get("images"))
    images = images if isinstance(images, list) else [images] if images is not None else []
    if not images:
        raise InputError("no image given; send inputs.image as base64 or a data URI (or a list of them)")
    if len(images) > MAX_IMAGES:
        raise UsageError(f"{len(images)} images; at most {MAX_IMAGES} in one request")
    where = "inputs.image" if not isinstance(inputs.get("image", inputs.get("images")), list) else None
    return params, [_image_source(item, service.config, where or f"inputs.image[{n}]")
                    for n, item in enumerate(images)]


# --- the app ---------------------------------------------------------------------------------------------------------
def load_service(config: ServeConfig) -> Service:
    """Load the model (the store's, with a store and no model named), check the store, warm the sessions."""
    from ..embeddings import load_model_for

    loaded = load_model_for(config.model, config.store)
    if config.store is not None:
        from ..embeddings import store_model
        from ..store import check_model, open_store

        reader = open_store(config.store)
        check_model(reader.directory, reader.manifest, store_model(loaded))
    size = loaded.image_size
    from PIL import Image

    blank = np.asarray(loaded.preprocess(Image.new("RGB", (size, size))), dtype=np.float32)[None]
    loaded.encode_pixels(blank)  # the image session is made now, not by the first request
    loaded.encode_texts(["warm"])  # and the text session
    metrics_box: list = []
    batcher = Batcher(lambda pixels: _as_numpy(loaded.encode_pixels(pixels)), config.max_batch, config.max_wait,
                      config.max_queue, on_batch=lambda n, s: metrics_box[0].on_batch(n, s))
    metrics = Metrics(lambda: batcher.depth)
    metrics_box.append(metrics)
    scorers = ScorerCache(loaded, config.model.cache_dir, config.model.use_cache)
    return Service(config, loaded, batcher, scorers, metrics)


def _tokens(loaded, texts: list[str]) -> int:
    """Tokens the texts took (OpenAI's usage), start and end tokens included; words when the tokenizer cannot say."""
    try:
        return int(np.count_nonzero(np.asarray(loaded.tokenizer(texts))))
    except Exception:  # noqa: BLE001  (usage is informative only)
        return sum(len(text.split()) for text in texts)


def _as_numpy(features) -> np.ndarray:
    from ..vectors import as_array

    return as_array(features)


ENDPOINTS = ("/", "/health", "/v1/models", "/v1/config", "/v1/classify", "/v1/embeddings", "/v1/search",
             "/v1/thumbnail", "/metrics", "/docs", "/openapi.json")


class Guard:
    """ASGI middleware around every HTTP request: the API key (all but /health), the upload limit (413), and
    the request metrics."""

    def __init__(self, app, config: ServeConfig, metrics_of) -> None:
        self.app, self.config, self.metrics_of = app, config, metrics_of
        self.key = config.api_key.encode() if config.api_key else None

    def authorised(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        scheme, _, value = auth.partition(b" ")
        if scheme.lower() == b"bearer":
            given = value.strip()
        elif scheme.lower() == b"basic":  # the browser's own prompt on the page: any user name, the key as password
            try:
                given = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                given = None
        return given is not None and hmac.compare_digest(given, self.key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "/static" if path.startswith("/static/") else "other"

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        metrics = self.metrics_of()
        if metrics is not None:
            metrics.in_flight.labels(endpoint).inc()
        try:
            headers = dict(scope["headers"])
            if self.key is not None and path != "/health" and not self.authorised(headers):
                response = error_response(401, "unauthorized", "this service needs its API key: send "
                                          "`Authorization: Bearer KEY` (or X-API-Key: KEY)",
                                          {"WWW-Authenticate": 'Basic realm="clip serve"'})
                return await response(scope, receive, sending)
            limit = self.config.max_upload
            try:
                length = int(headers.get(b"content-length", b"0"))
            except ValueError:
                length = 0
            if length > limit:
                response = error_response(413, "too_large", f"the request body is {length} bytes, above the "
                                          f"service's limit of {limit} bytes (--max-upload-mb)")
                return await response(scope, receive, sending)
            seen = [0]

            async def counted():
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > limit:
                        raise BodyTooLarge(f"the request body is above the service's limit of {limit} bytes "
                                           "(--max-upload-mb)")
                return message

            await self.app(scope, counted, sending)
        finally:
            if metrics is not None:
                metrics.in_flight.labels(endpoint).dec()
                metrics.requests.labels(endpoint, str(status[0])).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def create_app(config: ServeConfig = ServeConfig(), service: Service | None = None) -> FastAPI:
    """The service as an ASGI app; the model is loaded in its lifespan (or `service` is used as it is)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = service or await asyncio.to_thread(load_service, config)
        app.state.service = loaded
        loaded.batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(loaded.batcher.close)  # what is queued is encoded, then the worker stops

    app = FastAPI(title="clip serve", version=_version(), lifespan=lifespan,
                  description="Zero-shot image classification, image and text embeddings and search, "
                              "with the clipcli library.")
    app.state.service = None

    def state(request: Request) -> Service:
        return request.app.state.service

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception):
        status, kind = error_status(exc)
        if isinstance(exc, ServiceError):
            return error_response(exc.status, exc.kind, str(exc), exc.headers)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
        if status == 500:
            import logging

            logging.getLogger("clipcli.service").exception("request failed")
            from ..errors import first_line

            return error_response(500, kind, f"internal error ({type(exc).__name__}: {first_line(exc)})")
        return error_response(status, kind, str(exc), headers)

    for exc_class in (ClipCliError, QueueFull, DeadlineExceeded, BatcherClosed, BodyTooLarge, ServiceError):
        app.add_exception_handler(exc_class, on_error)

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException):  # 404, 405, a malformed multipart body: same shape
        return error_response(exc.status_code, "http", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return error_response(422, "bad_request", f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", summary="Liveness: the model is loaded and the queue has room")
    async def health(request: Request):
        service_ = state(request)
        return {"status": "ok", "queue": service_.batcher.depth, "max_queue": service_.config.max_queue}

    @app.get("/v1/models", summary="The served model (OpenAI's list shape)")
    async def models(request: Request):
        service_ = state(request)
        described = service_.describe()
        return {"object": "list", "data": [{"id": described["name"], "object": "model", "owned_by": "clipcli",
                                            "created": int(service_.started), "clipcli": described}]}

    @app.get("/v1/config", summary="What the page needs: template sets, the default, limits, the store")
    async def page_config(request: Request):
        from ..templates import bundled_names

        service_ = state(request)
        return {"model": service_.describe(), "templates": bundled_names(),
                "default_templates": service_.config.templates or clip_config.default_templates(),
                "store": service_.config.store is not None, "max_images": MAX_IMAGES,
                "max_upload": service_.config.max_upload}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/classify", summary="Classify images into labels (Hugging Face JSON schema, or multipart)",
              openapi_extra=CLASSIFY_DOC)
    async def classify(request: Request):
        service_ = state(request)
        deadline = time.monotonic() + service_.config.timeout
        params, sources = await classify_request(request, service_)
        await asyncio.to_thread(service_.scorers.get, params)  # labels checked and encoded before any image
        items, features = await encode_items(service_, sources, deadline)
        return await asyncio.to_thread(classify_records, service_.scorers, service_.describe(), params, items,
                                       features)

    @app.post("/v1/embeddings", summary="Text and image embeddings (OpenAI-compatible)", openapi_extra=EMBED_DOC)
    async def embeddings(request: Request):
        service_ = state(request)
        deadline = time.monotonic() + service_.config.timeout
        body = await read_json(request)
        if not isinstance(body, dict) or "input" not in body:
            raise UsageError('expected {"input": "text" or ["text", "data:image/png;base64,...", '
                             '{"image": BASE64}, ...]}')
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise UsageError(f"encoding_format {fmt!r}: use float or base64")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if not inputs or len(inputs) > 2048:
            raise UsageError("input must hold 1 to 2048 items")
        texts, images = {}, {}
        for n, item in enumerate(inputs):
            if isinstance(item, str) and not item.startswith("data:"):
                texts[n] = item
            elif isinstance(item, (str, dict)):
                images[n] = _image_source(item, service_.config, f"input[{n}]")
            else:
                raise UsageError(f"input[{n}]: expected a string, a data URI or {{\"image\": BASE64}}")
        if len(images) > MAX_IMAGES:
            raise UsageError(f"{len(images)} images; at most {MAX_IMAGES} in one request")
        vectors: dict[int, np.ndarray] = {}
        tokens = 0
        if texts:
            def encode_texts():
                with service_.text_lock:
                    return _as_numpy(service_.loaded.encode_texts(list(texts.values())))

            for n, vector in zip(texts, await asyncio.to_thread(encode_texts)):
                vectors[n] = vector
            tokens = _tokens(service_.loaded, list(texts.values()))
        if images:
            items, features = await encode_items(service_, list(images.values()), deadline)
            rows = iter(features if features is not None else [])
            for n, item in zip(images, items):
                if item.error:
                    raise UsageError(f"input[{n}]: {item.error[1]}")
                vectors[n] = next(rows)
        data = []
        for n in range(len(inputs)):
            vector = np.asarray(vectors[n], dtype=np.float32)
            embedding = (base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") if fmt == "base64"
                         else vector.tolist())
            data.append({"object": "embedding", "index": n, "embedding": embedding})
        return {"object": "list", "data": data, "model": service_.describe()["name"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/search", summary="Search the served store by text and/or an example image",
              openapi_extra=SEARCH_DOC)
    async def search(request: Request):
        service_ = state(request)
        if service_.config.store is None:
            raise ServiceError(404, "no_store", "this service has no store; start clip serve with --store STORE")
        deadline = time.monotonic() + service_.config.timeout
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=16)
            upload = form.get("image")
            body = {key: value for key, value in form.items() if isinstance(value, str)}
            source = Source(upload.filename or "image", await upload.read()) if upload is not None and \
                not isinstance(upload, str) else None
        else:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise UsageError('expected {"text": "...", "image": BASE64, "k": 10}')
            source = (_image_source(body["image"], service_.config, "image")
                      if body.get("image") else None)
        text = body.get("text") or None
        if text is not None and not isinstance(text, str):
            raise UsageError("text must be a string")
        if text is None and source is None:
            raise InputError("nothing to search for: give a text, an example image, or both")
        k = _number(body.get("k", 10), "k", int, 1, 1000)
        templates = template_set(body.get("templates") or None, None, "simple")
        parts = []
        if text:
            from ..search import text_embedding

            def encode_text():
                with service_.text_lock:
                    return text_embedding(text, templates, service_.loaded, None,
                                          clip_config.cache_dir(service_.config.model.cache_dir),
                                          service_.config.model.use_cache)

            parts.append(await asyncio.to_thread(encode_text))
        if source is not None:
            items, features = await encode_items(service_, [source], deadline)
            if items[0].error:
                raise InputError(f"image: {items[0].error[1]}")
            parts.append(features[0])

        def ranked():
            from ..search import combine_query, search_store
            from ..store import open_store

            counts: dict = {}
            hits = search_store(open_store(service_.config.store), combine_query(parts), k, counts=counts)
            return counts["searched"], hits  # photos and videos, as `clip search` counts them

        searched, hits = await asyncio.to_thread(ranked)
        return {"model": service_.describe(), "store": service_.config.store, "searched": searched,
                "results": [hit.record() for hit in hits]}  # a video's moment: with its start and end

    @app.get("/v1/thumbnail", summary="A small JPEG of one image of the served store (only its rows)")
    async def thumbnail(request: Request, path: str, size: int = 256):
        service_ = state(request)
        if service_.config.store is None:
            raise ServiceError(404, "no_store", "this service has no store; start clip serve with --store STORE")
        size = _number(size, "size", int, 16, 1024)
        data = await asyncio.to_thread(_thumbnail, service_, path, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    if config.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"])
    app.add_middleware(Guard, config=config, metrics_of=lambda: getattr(app.state.service, "metrics", None))
    return app


def _thumbnail(service: Service, path: str, size: int) -> bytes:
    from ..errors import ImageReadError
    from ..images import read_image
    from ..store import open_store

    from ..paths import is_video_name, split_frame

    reader = open_store(service.config.store)
    if path not in reader.locate([path]):
        raise Forbidden(f"{path!r} is not an image of the served store")
    try:
        if is_video_name(split_frame(path)[0]):  # a stored frame of a video (`video#t=seconds`)
            from ..frames import picture

            image = picture(path, size)
        else:
            image, _ = read_image(path, service.config.max_megapixels, size)
    except ImageReadError as exc:
        raise ServiceError(404, exc.kind, str(exc)) from None
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def _version() -> str:
    from .. import __version__

    return __version__


_IMAGE = {"type": "string", "description": "base64, or a data URI (data:image/png;base64,...)"}
CLASSIFY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "inputs": {"type": "object", "properties": {
            "image": {"oneOf": [_IMAGE, {"type": "array", "items": _IMAGE}]},
            "candidateLabels": {"oneOf": [{"type": "array", "items": {"type": "string"}},
                                          {"type": "string", "description": "comma-separated"}]}}},
        "parameters": {"type": "object", "properties": {
            "hypothesis_template": {"type": "string", "example": "This is a photo of {}."},
            "templates": {"type": "string", "description": "a bundled template set (clip templates)"},
            "top_k": {"type": "integer", "default": 5}, "score": {"enum": ["softmax", "sigmoid"]},
            "other": {"type": "boolean"}, "other_threshold": {"type": "number"},
            "other_label": {"type": "string"}}}}}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "labels": {"type": "string", "description": "comma-separated (CSV quoting)"},
        "templates": {"type": "string"}, "hypothesis_template": {"type": "string"}, "top_k": {"type": "integer"},
        "score": {"type": "string"}, "other": {"type": "boolean"}, "other_threshold": {"type": "number"}}}}}}}
EMBED_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["input"], "properties": {
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"oneOf": [
            {"type": "string", "description": "a text, or an image as a data URI"},
            {"type": "object", "properties": {"image": _IMAGE}}]}}]},
        "model": {"type": "string"}, "encoding_format": {"enum": ["float", "base64"]}}}}}}}
SEARCH_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "text": {"type": "string"}, "image": _IMAGE, "k": {"type": "integer", "default": 10},
        "templates": {"type": "string", "default": "simple"}}}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "text": {"type": "string"}, "image": {"type": "string", "format": "binary"},
        "k": {"type": "integer"}}}}}}}
