"""``pitguard serve``: the FastAPI app for one bundle and its uvicorn entry point.

``POST /v1/classify`` takes PNG crops (multipart field ``files``) or one ``.npy`` uint8 array
(N, H, W, 3) / (N, 3, H, W). Crops of concurrent requests are gathered into one model call of at
most ``max_batch`` crops, waiting at most ``max_wait_ms`` for company, and the results are split
back to each request. ``GET /healthz`` says what is loaded; ``GET /metrics`` is Prometheus text.
At most ``max_in_flight`` classify requests are read or answered at once, and a request whose
first crops would wait more than ``max_queue_ms`` of model work is not taken; both are refused
at once with 503 and ``Retry-After`` (memory stays near max_in_flight x max_request_bytes, and
the latency of what is taken stays near its unloaded value). With
a token, classify and metrics need ``Authorization: Bearer TOKEN``; ``/docs`` is off unless
asked. A client that goes away before its answer has its model work skipped.
Request parsing lives in :mod:`.crop_reader`, batching in :mod:`.batching`, the counters in
:mod:`.server_metrics`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pitguard.core.devices import usable_cores
from pitguard.core.errors import PitguardError
from pitguard.deploy.batching import MicroBatcher
from pitguard.deploy.crop_reader import CropReader, RequestError
from pitguard.deploy.predict import Prediction, Predictor
from pitguard.deploy.server_metrics import METRICS_CONTENT_TYPE, Metrics
from pitguard.runtime.queue import ReviewQueue

log = logging.getLogger("pitguard.serve")  # one logger for the whole server


def create_app(
    bundle: str | Path,
    max_batch: int | None = None,
    max_wait_ms: float = 5.0,
    max_request_bytes: int = 8 * 2**20,
    max_crops: int = 256,
    backend: str = "auto",
    threads: int = 0,
    queue: ReviewQueue | None = None,
    max_in_flight: int | None = None,
    token: str | None = None,
    docs: bool = False,
    max_queue_ms: float = 100.0,
) -> FastAPI:
    """The service for one bundle; the model loads here, so a bad bundle fails before serving.

    ``max_batch`` and ``max_in_flight`` None pick by device. On a GPU: 64 crops per call,
    where larger calls are cheaper per crop, and 32 requests in flight to fill them. On a CPU: 4
    crops per call, as the time per crop hardly changes with the batch size and a small call
    keeps the wait of the requests behind it short, and 2 requests per core in flight, as the
    cores are the bottleneck and more requests at once only lengthen each one's wait (README:
    Serving, the load figures).
    """
    if (
        min(max_batch or 1, max_in_flight or 1, max_crops, max_request_bytes) < 1
        or max_wait_ms < 0
        or not max_queue_ms > 0
    ):
        raise PitguardError(
            "max_batch, max_in_flight, max_crops and max_request_bytes must be >= 1, "
            "max_wait_ms >= 0 and max_queue_ms > 0"
        )
    predictor = Predictor(bundle, backend=backend, threads=threads)
    if max_batch is None:
        max_batch = 64 if predictor.device == "cuda" else CPU_MAX_BATCH
    if max_in_flight is None:
        max_in_flight = (
            32 if predictor.device == "cuda" else CPU_IN_FLIGHT_PER_CORE * usable_cores()
        )
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

    metrics.queue_depth = batcher.depth
    app = FastAPI(
        title="pitguard",
        summary="Cherry pit crop classifier",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )

    def refused(request: Request) -> JSONResponse | None:
        """401 without the token (when one is set), else None."""
        if token is None:
            return None
        sent = request.headers.get("authorization", "")
        if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return None
        metrics.error("unauthorized")
        return JSONResponse(
            {"error": "missing or wrong token; send the header Authorization: Bearer TOKEN"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    max_queue_s = max_queue_ms / 1000.0

    def queued_note() -> str:
        return (
            f"{1000 * batcher.expected_wait():.0f} ms of model work queued, over the "
            f"{max_queue_ms:g} ms limit"
        )

    def busy_response(why: str) -> JSONResponse:
        return JSONResponse(
            {"error": f"busy: {why}; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    def busy(t0: float, why: str) -> JSONResponse:
        metrics.error("busy")
        metrics.observe(503, time.perf_counter() - t0)
        return busy_response(why)

    app.state.predictor = predictor
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.max_in_flight = max_in_flight

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        return JSONResponse({"error": str(exc.errors())}, status_code=422)

    @app.post("/v1/classify")
    async def classify(request: Request):
        t0 = time.perf_counter()
        denied = refused(request)
        if denied is not None:
            metrics.observe(401, time.perf_counter() - t0)
            return denied
        if metrics.in_flight >= max_in_flight:
            return busy(t0, f"{max_in_flight} requests in flight (the limit)")
        if batcher.expected_wait() > max_queue_s:
            return busy(t0, queued_note())
        metrics.in_flight += 1
        status = 499  # the client went away before an answer
        try:
            crops, names = await reader.read(request)
            if batcher.expected_wait() > max_queue_s:  # it grew while the body came in
                status = 503
                metrics.error("busy")
                return busy_response(queued_note())
            pred = await _unless_gone(request, batcher.classify(crops))
            if pred is None:
                metrics.error("client_gone")
                return Response(status_code=499)
            metrics.count_routes(pred.routes)
            if queue is not None:
                await asyncio.to_thread(_queue_all, queue, crops, names, pred)
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
                            "reason": pred.reasons[i],
                        }
                        for i in range(len(pred))
                    ],
                    "model": model_name,
                }
            )
        except RequestError as exc:
            status = exc.status
            metrics.error(ERROR_REASONS.get(exc.status, f"http_{exc.status}"))
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except Exception as exc:
            status = 500
            metrics.error("internal")
            log.exception("classify failed")
            return JSONResponse(
                {"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
            )
        finally:
            metrics.in_flight -= 1
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
    async def prometheus_metrics(request: Request):
        return refused(request) or Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return app


CPU_MAX_BATCH = 4  # crops per model call on a CPU (README: Serving)
CPU_IN_FLIGHT_PER_CORE = 2  # classify requests in flight per core on a CPU (README: Serving)

ERROR_REASONS = {
    400: "malformed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
}


async def _unless_gone(request: Request, work):
    """The result of ``work``, or None when the client disconnects first (the work cancelled,
    so its crops never reach the model)."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(gone())
    done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    return None


def _queue_all(queue: ReviewQueue, crops, names: list, pred: Prediction) -> None:
    for i, route in enumerate(pred.routes):
        queue.offer(crops[i], f"http:{names[i]}", route, float(pred.p_pit[i]))


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline on each request's line and headers.

    uvicorn times out idle keep-alive connections but not a client that sends its headers a
    byte at a time: such a connection would be held for as long as the client likes. Here a
    connection whose request line and headers are not complete ``seconds`` after it opened (or
    after its first byte of a next request) is closed without an answer.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closed a connection whose headers took over %.0f s", seconds)
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                self._arm()  # a next request on a kept-alive connection starts its clock
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the request line and headers are in

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def serve(
    bundle: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_connections: int = 256,
    header_timeout: float = 10.0,
    **kw,
) -> None:
    """Serve ``bundle`` with uvicorn (one worker: the micro-batcher lives in its event loop).

    ``max_connections`` bounds open connections (uvicorn answers 503 beyond it);
    ``header_timeout`` closes a connection whose request headers are not in after that many
    seconds, so clients that send their headers slowly cannot hold the server's connections;
    idle keep-alive ends after 5 s.
    """
    import uvicorn

    app = create_app(bundle, **kw)
    if host not in ("127.0.0.1", "localhost", "::1") and not kw.get("token"):
        log.warning(
            "serving on %s without --token-file: anyone who reaches this port can use the model; "
            "set a token and put the service behind a reverse proxy with TLS (README)",
            host,
        )
    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=1,
        log_level="info",
        timeout_keep_alive=5,
        limit_concurrency=max_connections,
        http=header_timeout_protocol(header_timeout),
    )
