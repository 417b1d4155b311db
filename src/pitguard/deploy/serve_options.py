"""The settings of ``pitguard serve``: one frozen record of its limits and options, checked.

``max_batch`` and ``max_in_flight`` None pick by device (:meth:`ServeOptions.picked_for`). On a
GPU: 64 crops per call, where larger calls are cheaper per crop, and 32 requests in flight to fill
them. On a CPU: 4 crops per call, as the time per crop hardly changes with the batch size and a
small call keeps the wait of the requests behind it short, and 2 requests per core in flight, as
the cores are the bottleneck and more requests at once only lengthen each one's wait (README:
Serving, the load figures).
"""

from __future__ import annotations

from dataclasses import dataclass

from pitguard.core.devices import usable_cores
from pitguard.core.errors import PitguardError
from pitguard.runtime.queue import ReviewQueue

CPU_MAX_BATCH = 4  # crops per model call on a CPU (README: Serving)
CPU_IN_FLIGHT_PER_CORE = 2  # classify requests in flight per core on a CPU (README: Serving)
GPU_MAX_BATCH = 64
GPU_IN_FLIGHT = 32
# Bodies are read outside the in-flight limit, so uploads that stall hold no model slot; at most
# this many per request in flight are read at once (memory: that many x max_request_bytes).
READING_PER_IN_FLIGHT = 4
BODY_GRACE_S = 1.0  # a body's first second is not held to min_body_rate


@dataclass(frozen=True)
class ServeOptions:
    """How one bundle is served: the model's backend, the limits on work, and who may ask."""

    max_batch: int | None = None  # crops per model call; None: by device
    max_wait_ms: float = 5.0  # how long a model call waits for company
    max_request_bytes: int = 8 * 2**20
    max_crops: int = 256  # per request
    backend: str = "auto"
    threads: int = 0
    queue: ReviewQueue | None = None  # where routed crops are offered for review
    max_in_flight: int | None = None  # classify requests read or answered at once; None: by device
    token: str | None = None  # the bearer token classify and metrics ask for
    docs: bool = False  # serve /docs and /openapi.json
    max_queue_ms: float = 100.0  # model work queued ahead beyond which a request is refused
    trust: str | None = None  # a public key or keyring that must have signed the bundle
    body_timeout: float = 30.0  # seconds a request's whole body may take to arrive
    min_body_rate: float = 16 * 1024  # bytes a second a body must keep up after BODY_GRACE_S
    max_reading: int | None = None  # bodies read at once; None: READING_PER_IN_FLIGHT x in flight

    def __post_init__(self) -> None:
        counts = (self.max_batch or 1, self.max_in_flight or 1, self.max_crops)
        if (
            min(*counts, self.max_request_bytes) < 1
            or self.max_wait_ms < 0
            or not self.max_queue_ms > 0
            or not self.body_timeout > 0
            or self.min_body_rate < 0
            or (self.max_reading is not None and self.max_reading < 1)
        ):
            raise PitguardError(
                "max_batch, max_in_flight, max_reading, max_crops and max_request_bytes must be "
                ">= 1, max_wait_ms >= 0, min_body_rate >= 0 and max_queue_ms and body_timeout > 0"
            )

    def picked_for(self, device: str) -> tuple[int, int]:
        """``max_batch`` and ``max_in_flight``, each picked for ``device`` where it was left None
        (see the module)."""
        on_gpu = device == "cuda"
        max_batch, max_in_flight = self.max_batch, self.max_in_flight
        if max_batch is None:
            max_batch = GPU_MAX_BATCH if on_gpu else CPU_MAX_BATCH
        if max_in_flight is None:
            max_in_flight = GPU_IN_FLIGHT if on_gpu else CPU_IN_FLIGHT_PER_CORE * usable_cores()
        return max_batch, max_in_flight
