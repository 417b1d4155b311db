"""The handlers of ``pitguard serve``'s routes, around the state of the one bundle served.

A classify request is turned away at once, before its body is read, without the token (401) or
when ``max_reading`` bodies are already being read or its crops would wait more than
``max_queue_ms`` of model work (503 with ``Retry-After``; a small body is drained first, and the
connection closed, so the client reads the 503 rather than a reset). A body is read outside the
``max_in_flight`` limit, within ``body_timeout`` and at ``min_body_rate`` (else 408), so uploads
that stall or trickle hold no model slot; ``max_in_flight`` counts requests whose crops are in
and being answered, checked again with the queue once the body is in. A client that goes away
during its upload or before its answer is counted and logged as gone (499), never as a failure.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from pitguard.deploy.batching import MicroBatcher
from pitguard.deploy.crop_reader import CropReader, RequestError
from pitguard.deploy.predict import Prediction, Predictor
from pitguard.deploy.serve_options import READING_PER_IN_FLIGHT, ServeOptions
from pitguard.deploy.server_metrics import METRICS_CONTENT_TYPE, Metrics
from pitguard.runtime.queue import ReviewQueue

log = logging.getLogger("pitguard.serve")  # one logger for the whole server

ERROR_REASONS = {
    400: "malformed",
    408: "too_slow",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    499: "client_gone",
}
DRAIN_BYTES = 1 << 20  # a refused request's body up to this size is read before the 503
DRAIN_SECONDS = 1.0


class Service:
    """One bundle being served: its predictor, micro-batcher, request reader and counters, and
    the handlers of the routes over them. The model loads here, so a bad bundle fails early."""

    def __init__(self, bundle: str | Path, options: ServeOptions) -> None:
        self.options = options
        self.predictor = Predictor(
            bundle, backend=options.backend, threads=options.threads, trust=options.trust
        )
        self.max_batch, self.max_in_flight = options.picked_for(self.predictor.device)
        self.model_name = self.predictor.meta.get("model_name", Path(bundle).name)
        self.metrics = Metrics()
        self.batcher = MicroBatcher(
            self.predictor, self.max_batch, options.max_wait_ms / 1000.0, self.metrics
        )
        self.reader = CropReader(
            self.predictor,
            options.max_request_bytes,
            options.max_crops,
            options.body_timeout,
            options.min_body_rate,
        )
        self.max_reading = options.max_reading or READING_PER_IN_FLIGHT * self.max_in_flight
        self.metrics.queue_depth = self.batcher.depth

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI):
        """The micro-batcher runs while the app does."""
        self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()

    async def classify(self, request: Request) -> Response:
        """``POST /v1/classify``: the route and p(pit) of each crop sent."""
        t0 = time.perf_counter()
        turned_away = self._turned_away(request, t0)
        if turned_away is not None:
            await _drain(request)
            return turned_away
        status = 499  # the client went away before an answer
        try:
            status, answer = await self._answer(request, t0)
            return answer
        except RequestError as exc:
            status = exc.status
            self.metrics.error(ERROR_REASONS.get(exc.status, f"http_{exc.status}"))
            if exc.status == 499:
                log.info("classify: %s", exc.message)
                return Response(status_code=499)
            closing = {"Connection": "close"} if exc.status in (408, 413) else None
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=closing)
        except Exception as exc:
            status = 500
            self.metrics.error("internal")
            log.exception("classify failed")
            return JSONResponse(
                {"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
            )
        finally:
            self.metrics.observe(status, time.perf_counter() - t0)

    async def healthz(self):
        """``GET /healthz``: what is loaded."""
        predictor = self.predictor
        return {
            "status": "ok",
            "model": self.model_name,
            "backend": predictor.backend,
            "device": predictor.device,
            "classes": list(predictor.classes),
            "input_size": predictor.size,
        }

    async def prometheus_metrics(self, request: Request) -> Response:
        """``GET /metrics``: the counters as Prometheus text."""
        return self._refused(request) or Response(
            self.metrics.render(), media_type=METRICS_CONTENT_TYPE
        )

    def _turned_away(self, request: Request, t0: float) -> JSONResponse | None:
        """The answer to a classify request refused before its body is read, else None."""
        denied = self._refused(request)
        if denied is not None:
            self.metrics.observe(401, time.perf_counter() - t0)
            return denied
        if self.metrics.reading >= self.max_reading:
            return self._busy(t0, f"{self.max_reading} request bodies being read (the limit)")
        if self._queue_too_long():
            return self._busy(t0, self._queued_note())
        return None

    async def _answer(self, request: Request, t0: float) -> tuple[int, Response]:
        """Read the crops (outside the in-flight limit), then classify them and offer them for
        review within it; the status and the answer."""
        self.metrics.reading += 1
        try:
            crops, names = await self.reader.read(request)
        finally:
            self.metrics.reading -= 1
        if self.metrics.in_flight >= self.max_in_flight:
            self.metrics.error("busy")
            why = f"{self.max_in_flight} requests in flight (the limit)"
            return 503, _busy_response(why)
        if self._queue_too_long():  # it grew while the body came in
            self.metrics.error("busy")
            return 503, _busy_response(self._queued_note())
        self.metrics.in_flight += 1
        try:
            pred = await _unless_gone(request, self.batcher.classify(crops))
            if pred is None:
                self.metrics.error("client_gone")
                log.info("classify: the client went away before its answer")
                return 499, Response(status_code=499)
            self.metrics.count_routes(pred.routes)
            if self.options.queue is not None:
                await asyncio.to_thread(_queue_all, self.options.queue, crops, names, pred)
            return 200, JSONResponse(_results(pred, names, self.model_name))
        finally:
            self.metrics.in_flight -= 1

    def _refused(self, request: Request) -> JSONResponse | None:
        """401 without the token (when one is set), else None."""
        token = self.options.token
        if token is None:
            return None
        sent = request.headers.get("authorization", "")
        if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return None
        self.metrics.error("unauthorized")
        return JSONResponse(
            {"error": "missing or wrong token; send the header Authorization: Bearer TOKEN"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _queue_too_long(self) -> bool:
        return self.batcher.expected_wait() > self.options.max_queue_ms / 1000.0

    def _queued_note(self) -> str:
        return (
            f"{1000 * self.batcher.expected_wait():.0f} ms of model work queued, over the "
            f"{self.options.max_queue_ms:g} ms limit"
        )

    def _busy(self, t0: float, why: str) -> JSONResponse:
        self.metrics.error("busy")
        self.metrics.observe(503, time.perf_counter() - t0)
        return _busy_response(why)


def _busy_response(why: str) -> JSONResponse:
    return JSONResponse(
        {"error": f"busy: {why}; retry shortly"},
        status_code=503,
        headers={"Retry-After": "1", "Connection": "close"},
    )


async def _drain(request: Request) -> None:
    """Read a refused request's small body for a moment, so the client is not reset while it
    still sends; a large or slow one is left to the closed connection."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > DRAIN_BYTES:
        return

    async def read() -> None:
        async for _ in request.stream():
            pass

    with suppress(TimeoutError, ClientDisconnect):
        await asyncio.wait_for(read(), DRAIN_SECONDS)


def _results(pred: Prediction, names: list, model_name: str) -> dict:
    """The JSON answer to a classify request."""
    return {
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
