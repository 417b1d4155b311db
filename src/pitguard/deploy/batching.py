"""The micro-batcher: crops of concurrent requests gathered into one model call, results split back.

Each request's crops are cut into pieces of at most ``max_batch``; a batch waits at most
``max_wait_s`` for company, and model calls run one after another in a single worker thread.
Pieces are taken by their place in their request, then by arrival: every request's first piece
goes before any request's second, so one client's large requests do not hold up the small ones
of the others. The batcher keeps a running estimate of the model's time per crop, and from it
the wait a new request's first piece would have (the call running now plus every first piece
queued ahead): the server refuses new work while that wait is over its bound.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

import numpy as np

from pitguard.deploy.predict import Prediction, Predictor
from pitguard.deploy.server_metrics import Metrics

log = logging.getLogger("pitguard.serve")  # one logger for the whole server


@dataclass
class _Piece:
    """Up to ``max_batch`` crops of one request, waiting for their share of a model call."""

    crops: np.ndarray  # (n, 3, H, W) uint8
    future: asyncio.Future
    first: bool = True  # its request's first piece


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
        self._queue: asyncio.PriorityQueue[tuple[int, int, _Piece]] | None = None
        self._arrivals = itertools.count()
        self._task: asyncio.Task | None = None
        self._getter: asyncio.Future | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._taken: list[_Piece] = []  # out of the queue, not yet answered
        self._first_crops = 0  # crops in queued first pieces: what a new request waits behind
        self._running_crops = 0
        self.seconds_per_crop: float | None = None  # median over the recent model calls
        self._recent: deque[float] = deque(maxlen=32)
        self._timed = 0

    def depth(self) -> int:
        """Pieces waiting for a model call."""
        return self._queue.qsize() if self._queue is not None else 0

    def expected_wait(self) -> float:
        """Seconds a new request's first piece would wait for its model call (0 until the
        first call has been timed)."""
        if self.seconds_per_crop is None:
            return 0.0
        return (self._first_crops + self._running_crops) * self.seconds_per_crop

    def start(self) -> None:
        """Start the collector on the running loop (again, if an earlier loop has gone)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop = loop
        self._queue = asyncio.PriorityQueue()
        self._first_crops = 0
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
            *_, piece = self._queue.get_nowait()
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
        arrival = next(self._arrivals)
        for place, start in enumerate(range(0, len(crops), self.max_batch)):
            future = loop.create_future()
            piece = _Piece(crops[start : start + self.max_batch], future, place == 0)
            if place == 0:
                self._first_crops += len(piece.crops)
            self._queue.put_nowait((place, arrival, piece))
            futures.append(future)
        parts: list[Prediction] = await asyncio.gather(*futures)
        if len(parts) == 1:
            return parts[0]
        return Prediction(
            [label for p in parts for label in p.labels],
            np.concatenate([p.p_pit for p in parts]),
            [route for p in parts for route in p.routes],
            [reason for p in parts for reason in p.reasons],
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
        *_, piece = self._getter.result()
        self._getter = None
        if piece.first:
            self._first_crops -= len(piece.crops)
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
        started = loop.time()
        self._running_crops = len(batch)
        try:
            pred = await loop.run_in_executor(self._executor, self.predictor.predict_uint8, batch)
        except Exception as exc:
            log.exception("model call on %d crops failed", len(batch))
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            self._running_crops = 0
        took = loop.time() - started
        self.metrics.observe_batch(len(batch), took)
        self._timed += 1
        if self._timed > 1:  # the first call pays for warm-up; it would skew the estimate
            self._recent.append(took / len(batch))
            self.seconds_per_crop = float(np.median(self._recent))
        start = 0
        for p in live:
            end = start + len(p.crops)
            if not p.future.done():
                p.future.set_result(
                    Prediction(
                        pred.labels[start:end],
                        pred.p_pit[start:end],
                        pred.routes[start:end],
                        pred.reasons[start:end],
                    )
                )
            start = end
