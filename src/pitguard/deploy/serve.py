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
The settings live in :mod:`.serve_options`, the route handlers in :mod:`.serve_handlers`, request
parsing in :mod:`.crop_reader`, batching in :mod:`.batching`, the counters in
:mod:`.server_metrics`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pitguard.deploy.serve_handlers import Service
from pitguard.deploy.serve_options import ServeOptions

__all__ = ["ServeOptions", "create_app", "header_timeout_protocol", "serve"]

log = logging.getLogger("pitguard.serve")  # one logger for the whole server


def create_app(bundle: str | Path, options: ServeOptions | None = None, **settings: Any) -> FastAPI:
    """The service for one bundle; the model loads here, so a bad bundle fails before serving.

    ``options`` holds the limits and options (:class:`ServeOptions`); or give its fields as
    keywords, e.g. ``create_app(bundle, max_batch=4, token=...)``, each replacing the default.
    ``max_batch`` and ``max_in_flight`` None pick by device (:mod:`.serve_options`).
    """
    if options is None:
        options = ServeOptions(**settings)
    elif settings:
        options = replace(options, **settings)
    service = Service(bundle, options)
    app = FastAPI(
        title="pitguard",
        summary="Cherry pit crop classifier",
        lifespan=service.lifespan,
        docs_url="/docs" if options.docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if options.docs else None,
    )
    app.state.predictor = service.predictor
    app.state.metrics = service.metrics
    app.state.batcher = service.batcher
    app.state.max_in_flight = service.max_in_flight
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.post("/v1/classify")(service.classify)
    app.get("/healthz")(service.healthz)
    app.get("/metrics")(service.prometheus_metrics)
    return app


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": str(exc.errors())}, status_code=422)


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
    **kw: Any,
) -> None:
    """Serve ``bundle`` with uvicorn (one worker: the micro-batcher lives in its event loop).

    ``max_connections`` bounds open connections (uvicorn answers 503 beyond it);
    ``header_timeout`` closes a connection whose request headers are not in after that many
    seconds, so clients that send their headers slowly cannot hold the server's connections;
    idle keep-alive ends after 5 s.
    """
    import uvicorn

    options = ServeOptions(**kw)
    app = create_app(bundle, options)
    if host not in ("127.0.0.1", "localhost", "::1") and not options.token:
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
