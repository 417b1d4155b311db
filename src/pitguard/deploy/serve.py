"""``pitguard serve``: the FastAPI app for one bundle and its uvicorn entry point.

``POST /v1/classify`` takes PNG crops (multipart field ``files``) or one ``.npy`` uint8 array
(N, H, W, 3) / (N, 3, H, W). Crops of concurrent requests are gathered into one model call of at
most ``max_batch`` crops, waiting at most ``max_wait_ms`` for company, and the results are split
back to each request. ``GET /healthz`` says what is loaded; ``GET /metrics`` is Prometheus text.
Request parsing lives in :mod:`.crop_reader`, batching in :mod:`.batching`, the counters in
:mod:`.server_metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pitguard.deploy.batching import MicroBatcher
from pitguard.deploy.crop_reader import CropReader, RequestError
from pitguard.deploy.predict import Prediction, Predictor
from pitguard.deploy.queue import ReviewQueue
from pitguard.deploy.server_metrics import METRICS_CONTENT_TYPE, Metrics
from pitguard.errors import PitguardError

log = logging.getLogger("pitguard.serve")  # one logger for the whole server


def create_app(
    bundle: str | Path,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    max_request_bytes: int = 8 * 2**20,
    max_crops: int = 256,
    backend: str = "auto",
    threads: int = 0,
    queue: ReviewQueue | None = None,
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


def _queue_all(queue: ReviewQueue, crops, names: list, pred: Prediction) -> None:
    for i, route in enumerate(pred.routes):
        queue.offer(crops[i], f"http:{names[i]}", route, float(pred.p_pit[i]))


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, **kw) -> None:
    """Serve ``bundle`` with uvicorn (one worker: the micro-batcher lives in its event loop)."""
    import uvicorn

    app = create_app(bundle, **kw)
    uvicorn.run(app, host=host, port=port, workers=1, log_level="info")
