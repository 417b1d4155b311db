"""``pitguard serve``: a bundle behind HTTP, with micro-batching and Prometheus metrics.

``POST /v1/classify`` takes PNG crops (multipart field ``files``) or one ``.npy`` uint8 array
(N, H, W, 3) / (N, 3, H, W). Crops of concurrent requests are gathered into one model call of at
most ``max_batch`` crops, waiting at most ``max_wait_ms`` for company, and the results are split
back to each request. ``GET /healthz`` says what is loaded; ``GET /metrics`` is Prometheus text.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from pitguard.bundle import ROUTES
from pitguard.errors import PitguardError
from pitguard.predict import Prediction, Predictor

log = logging.getLogger("pitguard.serve")

NPY_CONTENT_TYPES = ("application/octet-stream", "application/x-npy")
NPY_MAGIC = b"\x93NUMPY"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RequestError(Exception):
    """A client mistake: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Counters and a latency histogram, rendered as Prometheus text exposition 0.0.4.

    Only the event loop thread updates them, so no lock is needed.
    """

    def __init__(self) -> None:
        self.requests: dict[str, int] = {"200": 0}
        self.crops = 0
        self.routes = dict.fromkeys(ROUTES, 0)
        self.batches = 0
        self.bucket_counts = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe(self, status: int | str, seconds: float) -> None:
        key = str(status)
        self.requests[key] = self.requests.get(key, 0) + 1
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def count_routes(self, routes: list[str]) -> None:
        self.crops += len(routes)
        for route in routes:
            self.routes[route] = self.routes.get(route, 0) + 1

    def render(self) -> str:
        lines = [
            "# HELP pitguard_requests_total Classify requests by HTTP status code.",
            "# TYPE pitguard_requests_total counter",
            *(
                f'pitguard_requests_total{{status="{s}"}} {n}'
                for s, n in sorted(self.requests.items())
            ),
            "# HELP pitguard_crops_total Crops classified.",
            "# TYPE pitguard_crops_total counter",
            f"pitguard_crops_total {self.crops}",
            "# HELP pitguard_routes_total Crops classified, by route.",
            "# TYPE pitguard_routes_total counter",
            *(f'pitguard_routes_total{{route="{r}"}} {n}' for r, n in self.routes.items()),
            "# HELP pitguard_batches_total Model calls (one per micro-batch).",
            "# TYPE pitguard_batches_total counter",
            f"pitguard_batches_total {self.batches}",
            "# HELP pitguard_request_latency_seconds Classify request latency.",
            "# TYPE pitguard_request_latency_seconds histogram",
        ]
        for bound, n in zip(LATENCY_BUCKETS, self.bucket_counts, strict=True):
            lines.append(f'pitguard_request_latency_seconds_bucket{{le="{bound}"}} {n}')
        lines += [
            f'pitguard_request_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
            f"pitguard_request_latency_seconds_sum {self.latency_sum:.6f}",
            f"pitguard_request_latency_seconds_count {self.latency_count}",
        ]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- micro-batching


@dataclass
class _Piece:
    """Up to ``max_batch`` crops of one request, waiting for their share of a model call."""

    crops: np.ndarray  # (n, 3, H, W) uint8
    future: asyncio.Future


class MicroBatcher:
    """Gathers crops of concurrent requests into model calls run in one worker thread."""

    def __init__(
        self, predictor: Predictor, max_batch: int, max_wait_s: float, metrics: Metrics
    ) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Piece] | None = None
        self._task: asyncio.Task | None = None
        self._getter: asyncio.Future | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._taken: list[_Piece] = []  # out of the queue, not yet answered

    def start(self) -> None:
        """Start the collector on the running loop (again, if an earlier loop has gone)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop = loop
        self._queue = asyncio.Queue()
        self._getter = None
        if self._executor is None:
            # One thread: model calls run one after another, the next batch fills meanwhile.
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="pitguard-infer")
        self._task = loop.create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for piece in self._taken:
            if not piece.future.done():
                piece.future.set_exception(RuntimeError("server is shutting down"))
        self._taken = []
        if self._getter is not None:
            self._getter.cancel()
            self._getter = None
        while self._queue is not None and not self._queue.empty():
            piece = self._queue.get_nowait()
            if not piece.future.done():
                piece.future.set_exception(RuntimeError("server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def classify(self, crops: np.ndarray) -> Prediction:
        """Predictions for ``crops`` (N, 3, H, W) uint8, in order; N may exceed ``max_batch``."""
        self.start()
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(crops), self.max_batch):
            future = loop.create_future()
            self._queue.put_nowait(_Piece(crops[start : start + self.max_batch], future))
            futures.append(future)
        parts: list[Prediction] = await asyncio.gather(*futures)
        if len(parts) == 1:
            return parts[0]
        return Prediction(
            [label for p in parts for label in p.labels],
            np.concatenate([p.p_pit for p in parts]),
            [route for p in parts for route in p.routes],
        )

    async def _next_piece(self, timeout: float | None) -> _Piece | None:
        # The pending get() is kept across timeouts rather than cancelled, so a piece that
        # arrives just as the wait ends is never dropped.
        assert self._queue is not None
        if self._getter is None:
            self._getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({self._getter}, timeout=timeout)
        if not done:
            return None
        piece = self._getter.result()
        self._getter = None
        return piece

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        held: _Piece | None = None
        while True:
            first = held or await self._next_piece(None)
            held = None
            assert first is not None
            pieces, n = [first], len(first.crops)
            self._taken = pieces
            deadline = loop.time() + self.max_wait_s
            while n < self.max_batch:
                piece = await self._next_piece(max(deadline - loop.time(), 0.0))
                if piece is None:
                    break
                if n + len(piece.crops) > self.max_batch:
                    held = piece  # starts the next batch
                    self._taken = [*pieces, piece]
                    break
                pieces.append(piece)
                n += len(piece.crops)
            await self._run(pieces)
            self._taken = [held] if held else []

    async def _run(self, pieces: list[_Piece]) -> None:
        live = [p for p in pieces if not p.future.done()]  # skip requests that went away
        if not live:
            return
        batch = live[0].crops if len(live) == 1 else np.concatenate([p.crops for p in live])
        loop = asyncio.get_running_loop()
        try:
            pred = await loop.run_in_executor(self._executor, self.predictor.predict_uint8, batch)
        except Exception as exc:
            log.exception("model call on %d crops failed", len(batch))
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self.metrics.batches += 1
        start = 0
        for p in live:
            end = start + len(p.crops)
            if not p.future.done():
                p.future.set_result(
                    Prediction(
                        pred.labels[start:end], pred.p_pit[start:end], pred.routes[start:end]
                    )
                )
            start = end


# --------------------------------------------------------------------------- request parsing


class CropReader:
    """Turns a classify request into (N, 3, H, W) uint8 crops and their names, or a RequestError."""

    def __init__(self, predictor: Predictor, max_request_bytes: int, max_crops: int) -> None:
        self.predictor = predictor
        self.size = predictor.size
        self.max_request_bytes = max_request_bytes
        self.max_crops = max_crops
        self.how = (
            f"send {self.size}x{self.size} RGB PNG crops as multipart/form-data field 'files', "
            f"or one uint8 .npy array (N, {self.size}, {self.size}, 3) or (N, 3, {self.size}, "
            f"{self.size}) as application/x-npy"
        )

    async def read(self, request: Request) -> tuple[np.ndarray, list[str | None]]:
        content_type = request.headers.get("content-type", "")
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind != "multipart/form-data" and kind not in NPY_CONTENT_TYPES:
            what = f"unsupported Content-Type {kind!r}" if kind else "missing Content-Type"
            raise RequestError(415, f"{what}; {self.how}")
        body = await self._read_body(request)
        if not body:
            raise RequestError(400, f"empty request body; {self.how}")
        if kind in NPY_CONTENT_TYPES:
            crops = await asyncio.to_thread(self._parse_npy, body, "the request body")
            return crops, [None] * len(crops)
        return await self._read_form(request, body)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise RequestError(400, f"invalid Content-Length {declared!r}") from None
            if length > limit:
                raise RequestError(413, self._too_large(length))
        chunks, total = [], 0
        # Counted as read as well: a client may send no or a wrong Content-Length.
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise RequestError(413, self._too_large(total, at_least=True))
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, n: int, at_least: bool = False) -> str:
        return (
            f"request body is {'over ' if at_least else ''}{n} bytes, the limit is "
            f"{self.max_request_bytes}; send fewer crops per request"
        )

    def _too_many(self, n: int | str) -> str:
        return f"{n} crops in one request, the limit is {self.max_crops}; split them over requests"

    async def _read_form(
        self, request: Request, body: bytes
    ) -> tuple[np.ndarray, list[str | None]]:
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        # The body was already read under the size limit; the form parser reads it again here.
        try:
            form = await Request(request.scope, replay).form(
                max_files=self.max_crops, max_fields=64
            )
        except (MultiPartException, StarletteHTTPException) as exc:
            detail = str(getattr(exc, "detail", None) or getattr(exc, "message", None) or exc)
            if detail.startswith("Too many files"):
                raise RequestError(413, self._too_many(f"over {self.max_crops}")) from None
            raise RequestError(400, f"malformed multipart body ({detail}); {self.how}") from None
        try:
            uploads: list[tuple[str, bytes]] = []
            others: list[str] = []
            for key, value in form.multi_items():
                if isinstance(value, str):
                    continue
                if key == "files":
                    uploads.append((value.filename or f"files[{len(uploads)}]", await value.read()))
                else:
                    others.append(key)
        finally:
            await form.close()
        if not uploads:
            if others:
                raise RequestError(
                    400, f"file field {others[0]!r} is not read; name the field 'files'"
                )
            raise RequestError(400, f"no files in the form; {self.how}")
        if len(uploads) > self.max_crops:
            raise RequestError(413, self._too_many(len(uploads)))
        npy = [name for name, data in uploads if _is_npy(name, data)]
        if npy:
            if len(uploads) > 1:
                raise RequestError(
                    400,
                    f"{npy[0]!r} is a .npy file among {len(uploads)} files; send either PNG "
                    "files or a single .npy file per request",
                )
            name, data = uploads[0]
            crops = await asyncio.to_thread(self._parse_npy, data, f"file {name!r}")
            return crops, [None] * len(crops)
        crops = await asyncio.to_thread(self._decode_pngs, uploads)
        return crops, [name for name, _ in uploads]

    def _decode_pngs(self, uploads: list[tuple[str, bytes]]) -> np.ndarray:
        arrays = [self._decode_png(data, name) for name, data in uploads]
        return np.stack(arrays).transpose(0, 3, 1, 2).copy()

    def _decode_png(self, data: bytes, name: str) -> np.ndarray:
        label, size = f"file {name!r}", self.size
        if not data:
            raise RequestError(400, f"{label} is empty (0 bytes); {self.how}")
        try:
            img = Image.open(io.BytesIO(data), formats=["PNG"])
        except UnidentifiedImageError:
            kind = "a JPEG" if data.startswith(b"\xff\xd8") else "not a PNG image"
            raise RequestError(400, f"{label} is {kind}; {self.how}") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise RequestError(400, f"{label} is not a readable PNG ({exc}); {self.how}") from None
        except Image.DecompressionBombError as exc:
            raise RequestError(400, f"{label}: {exc}; send {size}x{size} crops") from None
        with img:
            # Size and mode come from the header: checked before decoding any pixels.
            if img.size != (size, size):
                w, h = img.size
                raise RequestError(
                    400,
                    f"{label} is {w}x{h}, expected {size}x{size}; send crops as the line cuts them",
                )
            if img.mode != "RGB":
                raise RequestError(
                    400,
                    f"{label} has mode {img.mode}, expected RGB; save the crops as 8-bit RGB PNG",
                )
            try:
                img.load()
            except (OSError, ValueError, SyntaxError) as exc:
                raise RequestError(400, f"{label} is a corrupt PNG ({exc}); re-encode it") from None
            return np.asarray(img, dtype=np.uint8)

    def _parse_npy(self, data: bytes, label: str) -> np.ndarray:
        fmt = np.lib.format
        fp = io.BytesIO(data)
        # The header is checked before np.load so that a forged shape cannot make it allocate
        # more than was sent.
        try:
            version = fmt.read_magic(fp)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _fortran, dtype = fmt.read_array_header_2_0(fp)
            else:
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        except ValueError as exc:
            raise RequestError(
                400, f"{label} is not a readable .npy array ({exc}); {self.how}"
            ) from None
        if dtype.hasobject:
            raise RequestError(
                400, f"{label} holds Python objects (pickled), which are never loaded; {self.how}"
            )
        if dtype != np.uint8:
            raise RequestError(
                400, f"{label} has dtype {dtype}, expected uint8; convert with arr.astype(np.uint8)"
            )
        if len(shape) not in (3, 4):
            raise RequestError(
                400, f"{label} has shape {shape}, expected (N, H, W, 3) or (N, 3, H, W)"
            )
        n = shape[0] if len(shape) == 4 else 1
        if n == 0:
            raise RequestError(400, f"{label} holds no crops (shape {shape}); {self.how}")
        if n > self.max_crops:
            raise RequestError(413, self._too_many(n))
        expected = int(np.prod(shape)) * dtype.itemsize
        if len(data) - fp.tell() != expected:
            raise RequestError(
                400,
                f"{label} is truncated or padded: shape {shape} needs {expected} bytes of data, "
                f"{len(data) - fp.tell()} were sent",
            )
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            return self.predictor.to_uint8(arr)
        except PitguardError as exc:
            raise RequestError(400, f"{label}: {exc}") from None
        except ValueError as exc:
            raise RequestError(400, f"{label} cannot be read as .npy ({exc})") from None


def _is_npy(name: str, data: bytes) -> bool:
    return name.lower().endswith(".npy") or data.startswith(NPY_MAGIC)


# --------------------------------------------------------------------------- app


def create_app(
    bundle: str | Path,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    max_request_bytes: int = 8 * 2**20,
    max_crops: int = 256,
    backend: str = "auto",
    threads: int = 0,
) -> FastAPI:
    """The service for one bundle; the model loads here, so a bad bundle fails before serving."""
    if max_batch < 1 or max_crops < 1 or max_request_bytes < 1 or max_wait_ms < 0:
        raise PitguardError(
            "max_batch, max_crops and max_request_bytes must be >= 1 and max_wait_ms >= 0"
        )
    predictor = Predictor(bundle, backend=backend, threads=threads)
    model_name = predictor.meta.get("model_name", Path(bundle).name)
    metrics = Metrics()
    batcher = MicroBatcher(predictor, max_batch, max_wait_ms / 1000.0, metrics)
    reader = CropReader(predictor, max_request_bytes, max_crops)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="pitguard", summary="Cherry pit crop classifier", lifespan=lifespan)
    app.state.predictor = predictor
    app.state.metrics = metrics
    app.state.batcher = batcher

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        return JSONResponse({"error": str(exc.errors())}, status_code=422)

    @app.post("/v1/classify")
    async def classify(request: Request):
        t0 = time.perf_counter()
        status = 499  # the client went away before an answer
        try:
            crops, names = await reader.read(request)
            pred = await batcher.classify(crops)
            metrics.count_routes(pred.routes)
            status = 200
            return JSONResponse(
                {
                    "n": len(pred),
                    "results": [
                        {
                            "index": i,
                            "name": names[i],
                            "route": pred.routes[i],
                            "p_pit": float(pred.p_pit[i]),
                            "label": pred.labels[i],
                        }
                        for i in range(len(pred))
                    ],
                    "model": model_name,
                }
            )
        except RequestError as exc:
            status = exc.status
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except Exception as exc:
            status = 500
            log.exception("classify failed")
            return JSONResponse(
                {"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
            )
        finally:
            metrics.observe(status, time.perf_counter() - t0)

    @app.get("/healthz")
    async def healthz():
        return {
            "status": "ok",
            "model": model_name,
            "backend": predictor.backend,
            "device": predictor.device,
            "classes": list(predictor.classes),
            "input_size": predictor.size,
        }

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return app


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, **kw) -> None:
    """Serve ``bundle`` with uvicorn (one worker: the micro-batcher lives in its event loop)."""
    import uvicorn

    app = create_app(bundle, **kw)
    uvicorn.run(app, host=host, port=port, workers=1, log_level="info")
