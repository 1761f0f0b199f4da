"""`podium serve`: an HTTP prediction server (FastAPI + uvicorn) with micro-batching.

Endpoints: ``POST /predict`` (multipart field ``files``, one or several images)
-> per image the top-k classes with probabilities; ``GET /health``;
``GET /classes``; ``GET /stats`` (batch sizes seen, for tuning and tests);
``GET /`` a self-contained page to drop an image on.

Concurrent requests are micro-batched: each image joins an asyncio queue that
one worker drains into a batch when ``max_batch_size`` images wait or
``max_wait_ms`` has passed since the first; the batch runs in a single
inference thread (the event loop keeps accepting requests meanwhile), so
throughput grows with concurrency instead of each request paying a forward.

Limits protect the server: request body size (checked on the Content-Length
and while streaming), bytes per file, pixels per image (checked from the
header before decoding, against decompression bombs), files per request and a
per-request timeout (once for the body to arrive, once for the answer). Every
client error is a 4xx JSON ``{"error": ...}`` saying what was wrong; an
unexpected server error is a 500 with a generic message and the traceback only
in the server log. An optional API key (header
``X-API-Key``) guards the model endpoints. The server binds 127.0.0.1 unless
told otherwise.
"""
# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time,
# and they name classes imported inside `create_app` (so FastAPI loads only when serving)
import asyncio
import io
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from podium.errors import PodiumError

log = logging.getLogger("podium.serve")

API_KEY_ENV = "PODIUM_API_KEY"
API_KEY_HEADER = "X-API-Key"
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF")  # what podium trains on (README: Data)
FORM_OVERHEAD_BYTES = 64 * 1024


@dataclass
class ServeSettings:
    """Batching and limits of one server (every field is a `podium serve` option)."""

    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_files: int = 16
    request_timeout_s: float = 30.0
    #: seconds for a request's headers to arrive complete (slowloris: a client that sends part of its
    #: headers, then nothing, held a connection open for good; uvicorn times out only idle keep-alive)
    header_timeout_s: float = 10.0
    top_k: int = 5
    api_key: str | None = None
    #: auto: micro-batching on a GPU, off on a CPU (benchmarks/serve/RESULTS.md: on a CPU a batch saves
    #: no per-image work and lowered throughput); on / off force it
    batching: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_upload_bytes", "max_pixels", "max_files", "top_k"):
            if int(getattr(self, name)) < 1:
                raise PodiumError(f"serve setting {name} must be >= 1, found {getattr(self, name)}")
        if self.batching not in ("auto", "on", "off"):
            raise PodiumError(f"serve setting batching must be auto, on or off, found {self.batching!r}")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0 or self.header_timeout_s <= 0:
            raise PodiumError(f"serve settings: max_wait_ms must be >= 0, request_timeout_s and header_timeout_s > 0, "
                              f"found {self.max_wait_ms}, {self.request_timeout_s} and {self.header_timeout_s}")

    @property
    def max_body_bytes(self) -> int:
        return self.max_files * self.max_upload_bytes + FORM_OVERHEAD_BYTES


class ClientError(Exception):
    """A request the client can fix: answered with ``status`` and a JSON message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------- micro-batching


class MicroBatcher:
    """Collects single images from concurrent requests into batches for one inference thread.

    ``infer`` maps a uint8 (N, 3, H, W) array to (N, C) probabilities. A batch
    closes when it holds ``max_batch_size`` images or ``max_wait_ms`` after its
    first image arrived; while one batch runs, the next one fills.
    """

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch_size: int, max_wait_ms: float):
        self.infer = infer
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.batch_sizes: Counter[int] = Counter()
        self.inference_s = 0.0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="podium-infer")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="podium-micro-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray) -> np.ndarray:
        """The probabilities of one preprocessed CHW image, computed in some batch."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((image, future))
        return await future

    async def _collect(self) -> list:
        queue = self._queue
        if queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(image, future) for image, future in batch if not future.done()]  # timed-out requests drop out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            images = np.stack([image for image, _ in batch])
            started = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._executor, self.infer, images)
            except Exception as exc:  # answered per request as a 500; the loop keeps serving
                log.exception("inference failed on a batch of %d images", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.inference_s += time.perf_counter() - started
            self.batch_sizes[len(batch)] += 1
            for (_, future), row in zip(batch, probs):
                if not future.done():
                    future.set_result(row)

    def stats(self) -> dict:
        sizes = self.batch_sizes
        images = sum(k * v for k, v in sizes.items())
        return {"batches": sum(sizes.values()), "images": images, "largest_batch": max(sizes, default=0),
                "batch_sizes": {str(k): sizes[k] for k in sorted(sizes)}, "inference_s": round(self.inference_s, 4),
                "max_batch_size": self.max_batch_size, "max_wait_ms": self.max_wait_s * 1000.0}


# ---------------------------------------------------------------- decoding uploads


def decode_upload(data: bytes, name: str, predictor, settings: ServeSettings) -> np.ndarray:
    """An uploaded file -> the model's uint8 CHW input, or a `ClientError` saying what is wrong.

    The pixel count is checked from the header before any decoding; then the
    image is read by the same code as training and prediction (EXIF rotation,
    mode conversion, resize, eval pipeline).
    """
    from PIL import Image, UnidentifiedImageError

    from podium.data.images import BadImageError

    if not data:
        raise ClientError(400, f"file {name!r} is empty")
    if len(data) > settings.max_upload_bytes:
        raise ClientError(413, f"file {name!r} has {len(data):,} bytes; the limit is {settings.max_upload_bytes:,} "
                               "per file (podium serve --max-upload-mb)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError as exc:
        raise ClientError(413, f"image {name!r} is too large to decode safely: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ClientError(415, f"file {name!r} is not an image podium can read; "
                               "send JPEG, PNG, WebP, BMP or GIF") from None
    if fmt not in IMAGE_FORMATS:
        raise ClientError(415, f"file {name!r} is a {fmt} image; podium serves JPEG, PNG, WebP, BMP and GIF")
    if w * h > settings.max_pixels:
        raise ClientError(413, f"image {name!r} is {w}x{h} = {w * h:,} pixels; the limit is {settings.max_pixels:,} "
                               "(podium serve --max-pixels)")
    try:
        image, _ = predictor.dataset([io.BytesIO(data)])[0]
    except (BadImageError, Image.DecompressionBombError) as exc:
        reason = str(exc).split(": ")[-1][:200]
        raise ClientError(415, f"image {name!r} cannot be decoded (truncated or corrupt?): {reason}") from None
    return image.numpy()


def top_classes(probs: np.ndarray, classes: list[str], k: int) -> list[dict]:
    """The ``k`` most probable classes of one image, best first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": classes[i], "index": int(i), "probability": float(probs[i])} for i in order]


# ---------------------------------------------------------------- the app


class BodyLimit:
    """ASGI middleware: a request body above ``max_bytes`` gets a 413, one that has not fully
    arrived after ``timeout_s`` a 408 (both JSON errors saying so).

    A declared Content-Length above the limit is refused before the app runs. A
    chunked body (no Content-Length) is counted while it is read: the read that
    crosses the limit (or the deadline) raises, and so does every later one.
    Whatever the app answers after that (FastAPI turns an error raised while
    parsing a form into a 400 "error parsing the body"; the multipart parser or a
    disconnect can raise first) is replaced by the 413 or 408, so the client is
    told what was wrong whichever layer noticed the cut body first.
    """

    def __init__(self, app, max_bytes: int, timeout_s: float | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _answer(scope, receive, send, _too_large(int(declared), self.max_bytes))
        body = _BodyReader(receive, self.max_bytes, self.timeout_s)
        started = False

        async def guarded_send(message):
            nonlocal started
            if body.refused:  # the app's own answer to a body it could not read: the real reason instead
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _answer(scope, receive, send, body.refused)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, guarded_send)
        except Exception:  # the refusal itself, or whatever the app raised on the cut body
            if body.refused is None:
                raise
            if not started:
                await _answer(scope, receive, send, body.refused)


class _BodyReader:
    """``receive`` for one request, counting body bytes against the limit and the deadline."""

    def __init__(self, receive, max_bytes: int, timeout_s: float | None):
        self._receive = receive
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s if timeout_s else None
        self.received = 0
        self.complete = False
        self.refused: ClientError | None = None

    async def receive(self):
        if self.refused:
            raise ClientError(self.refused.status, self.refused.message)
        if self.complete or self.deadline is None:  # after the body: disconnect notices, no deadline
            message = await self._receive()
        else:
            try:
                message = await asyncio.wait_for(self._receive(), max(self.deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                self.refused = ClientError(408, f"the request body had not arrived after {self.timeout_s:g} s "
                                                f"({self.received:,} bytes received; podium serve --timeout)")
                raise ClientError(408, self.refused.message) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.received > self.max_bytes:
                self.refused = _too_large(self.received, self.max_bytes)
                raise ClientError(413, self.refused.message)
        return message


def _too_large(size: int, limit: int) -> ClientError:
    return ClientError(413, f"request body of {size:,}+ bytes exceeds the limit of {limit:,} bytes "
                            "(files per request x bytes per file)")


async def _answer(scope, receive, send, refusal: ClientError) -> None:
    await error_response(refusal.status, refusal.message)(scope, receive, send)


def batching_on(settings: ServeSettings, predictor) -> bool:
    """Whether requests are micro-batched: ``auto`` batches when the model runs on a CUDA device."""
    if settings.batching == "auto":
        return str(getattr(predictor, "device", "cpu")).startswith("cuda")
    return settings.batching == "on"


def create_app(predictor, settings: ServeSettings | None = None):
    """The FastAPI app serving ``predictor`` (a `podium.inference.predictor.Predictor`)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    settings = settings or ServeSettings()
    batch = settings.max_batch_size if batching_on(settings, predictor) else 1
    batcher = MicroBatcher(predictor.probabilities, batch, settings.max_wait_ms)
    counters: Counter[str] = Counter()

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    # with an API key, the schema is behind it too and the interactive docs (which fetch it without
    # the header) are off: they would describe every endpoint to anyone who reaches the address
    keyed = bool(settings.api_key)
    hidden: dict[str, Any] = {"openapi_url": None, "docs_url": None, "redoc_url": None} if keyed else {}
    app = FastAPI(title="podium", description=f"Image classification with {predictor.source.name}",
                  lifespan=lifespan, **hidden)
    if keyed:
        from fastapi import Depends

        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(_key_check(settings))])
        def openapi_schema() -> dict:
            return app.openapi()
    app.state.batcher = batcher
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.request_timeout_s)
    _add_error_handlers(app, counters)
    _add_info_routes(app, predictor, settings, batcher, counters)
    _add_predict_route(app, predictor, settings, batcher, counters)
    return app


def error_response(status: int, message: str):
    """The JSON body of every error the server answers: ``{"error": ..., "status": ...}``."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, "status": status}, status_code=status)


def _validation_message(exc) -> str:
    """FastAPI's validation errors as one sentence naming the fields."""
    problems = []
    for item in exc.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query"))
        problems.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    hint = " (send images as multipart/form-data field 'files')" if any("files" in p for p in problems) else ""
    return "; ".join(problems) + hint


def _add_error_handlers(app, counters: Counter) -> None:
    """Client errors -> 4xx JSON saying what was wrong; anything else -> a 500 with no traceback."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ClientError)
    async def client_error(request, exc: ClientError):
        counters["client_errors"] += 1
        return error_response(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        counters["client_errors"] += 1
        return error_response(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        if exc.status_code < 500:
            counters["client_errors"] += 1
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        log.error("error while serving %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error; the details are in the server log")


def _key_check(settings: ServeSettings):
    """The dependency guarding the model endpoints when an API key is set."""
    from fastapi import Request

    def check_key(request: Request) -> None:
        if settings.api_key and not secrets.compare_digest(
                request.headers.get(API_KEY_HEADER, "").encode(), settings.api_key.encode()):
            raise ClientError(401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header")

    return check_key


def _add_info_routes(app, predictor, settings: ServeSettings, batcher: MicroBatcher, counters: Counter) -> None:
    """``GET /`` (the page) and ``/health`` stay open; ``/classes`` and ``/stats`` need the key."""
    from fastapi import Depends
    from fastapi.responses import HTMLResponse

    from podium.deploy.page import page_html

    guarded = [Depends(_key_check(settings))]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(page_html(predictor.source.name, api_key_required=bool(settings.api_key),
                                      top_k=min(settings.top_k, len(predictor.classes))))

    @app.get("/health")
    async def health():
        return {"status": "ok", **predictor.describe(), "api_key_required": bool(settings.api_key)}

    @app.get("/classes", dependencies=guarded)
    async def classes():
        return {"classes": predictor.classes}

    @app.get("/stats", dependencies=guarded)
    async def stats():
        return {**batcher.stats(), "requests": counters["requests"], "client_errors": counters["client_errors"],
                "settings": {k: v for k, v in asdict(settings).items() if k != "api_key"}}


def _add_predict_route(app, predictor, settings: ServeSettings, batcher: MicroBatcher, counters: Counter) -> None:
    """``POST /predict``: multipart field ``files`` -> per file the top-k classes, within the request timeout."""
    from fastapi import Depends, File, Query, UploadFile

    @app.post("/predict", dependencies=[Depends(_key_check(settings))])
    async def predict(files: list[UploadFile] = File(..., description="one or several images"),
                      top_k: int = Query(settings.top_k, ge=1, description="classes per image")):
        counters["requests"] += 1
        if len(files) > settings.max_files:
            raise ClientError(413, f"{len(files)} files in one request; the limit is {settings.max_files} "
                                   "(podium serve --max-files)")
        k = min(top_k, len(predictor.classes))
        try:
            return await asyncio.wait_for(predict_files(files, predictor, settings, batcher, k),
                                          settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise ClientError(504, f"prediction took longer than {settings.request_timeout_s:g} s "
                                   "(podium serve --timeout); try fewer files or later") from None


async def predict_files(files, predictor, settings: ServeSettings, batcher: MicroBatcher, k: int) -> dict:
    """Read, check and decode the uploads (in threads), then run them through the micro-batcher."""
    names = [f.filename or f"file{i}" for i, f in enumerate(files)]
    blobs = [await f.read(settings.max_upload_bytes + 1) for f in files]
    inputs = await asyncio.gather(*[asyncio.to_thread(decode_upload, b, n, predictor, settings)
                                    for b, n in zip(blobs, names)])
    probs = await asyncio.gather(*[batcher.submit(x) for x in inputs])
    return {"model": predictor.source.name,
            "predictions": [{"file": n, "top": top_classes(p, predictor.classes, k)} for n, p in zip(names, probs)]}


def serve(model, *, host: str = "127.0.0.1", port: int = 8000, checkpoint: str = "best",
          settings: ServeSettings | None = None, threads: int | None = None, log_level: str = "info",
          trust: bool = False, log: Callable[[str], None] | None = None) -> None:
    """Serve a run, cv run or ensemble folder (PyTorch) or an exported ``.onnx`` file (a TorchScript
    ``.pt`` only with ``trust=True``) until interrupted. The port is bound before anything says
    "serving" (``log``), so a port in use is one message, not a banner and then uvicorn's exit."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise PodiumError("serving needs FastAPI and uvicorn: pip install -e '.[serve]' in the podium clone") from None
    from podium.inference.predictor import load_predictor

    check_port(port)
    settings = settings or ServeSettings(api_key=os.environ.get(API_KEY_ENV) or None)
    predictor = load_predictor(getattr(model, "dir", model), checkpoint=checkpoint, threads=threads, trust=trust)
    app = create_app(predictor, settings)
    sock = bind_socket(host, port)
    if log is not None:
        log(f"serving {model} on http://{host}:{port}/ (POST /predict, GET /health, /classes, /stats); Ctrl+C stops")
    uvicorn.Server(server_config(app, settings, host=host, port=port, log_level=log_level)).run(sockets=[sock])


#: uvicorn's own limit on a request head (h11's default), said here: a client cannot grow one without end
MAX_HEADER_BYTES = 16 * 1024


def server_config(app, settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000,
                  log_level: str = "info"):
    """The uvicorn settings of `serve`: the HTTP protocol with a header-read timeout
    (`header_timeout_protocol`), request heads of at most `MAX_HEADER_BYTES`, and uvicorn's idle
    keep-alive timeout (5 s) between requests."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                          http=header_timeout_protocol(settings.header_timeout_s), timeout_keep_alive=5,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES)


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete
    ``seconds`` after it opened or after its previous response (or its first byte of a new request).

    uvicorn times out only an idle keep-alive connection, and only after a first response: a client
    that sends half a request head and then nothing (slowloris) held its connection, and with
    enough of them the server, for good. The request body and the answer have their own timeout
    (``request_timeout_s``, in `BodyLimit` and `/predict`). h11 rather than httptools: this hooks
    h11's connection state, which says when a request head is complete.

    Why a subclass of uvicorn's protocol rather than a setting: uvicorn (0.55) has none for this.
    ``timeout_keep_alive`` is armed only after a response and cancelled by the first byte received
    (``data_received``), so one byte a minute keeps it off; ``h11_max_incomplete_event_size`` caps a
    head's size, not its time; ASGI middleware runs only once the head is parsed. The setting
    uvicorn planned for it (``--timeout-request-start``, Kludex/uvicorn#157) was never added. A
    proxy in front (nginx ``client_header_timeout``) does the same where there is one; `serve` is
    also run bare. The hooks used (``connection_made``, ``data_received``, ``on_response_complete``,
    ``connection_lost``, ``self.conn``) are exercised by tests/test_serve.py against a real server.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()  # still no complete request head: the clock runs (from its first call)
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # idle from here: uvicorn's keep-alive timeout applies
            self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.warning("closed a connection from %s: request headers incomplete after %g s",
                            self.client, seconds)
                self.transport.close()

    return HeaderTimeoutH11


def check_port(port: int) -> None:
    """A TCP port number (1-65535)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise PodiumError(f"--port must be a TCP port from 1 to 65535, found {port!r}")


def bind_socket(host: str, port: int):
    """The listening socket, bound here so a busy port or a bad address is one clear message."""
    import socket

    check_port(port)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise PodiumError(f"cannot serve on {host}:{port}: unknown address ({exc.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = ("another program is listening there; stop it or choose another --port" if exc.errno == 98
                else "check --host and --port")
        raise PodiumError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; {hint}") from None
    sock.set_inheritable(True)
    return sock
