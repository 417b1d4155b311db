"""The HTTP service's Prometheus metrics: requests by status and error reason, crops, routes,
batches and their sizes, model time, requests in flight, queue depth, process memory, and a
latency histogram."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable

from pitguard.runtime.policy import ROUTES

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Counters and a latency histogram, rendered as Prometheus text exposition 0.0.4.

    Only the event loop thread updates them, so no lock is needed.
    """

    def __init__(self) -> None:
        self.requests: dict[str, int] = {"200": 0}
        self.errors: dict[str, int] = {}  # by reason
        self.in_flight = 0
        self.reading = 0  # classify request bodies being read now
        self.queue_depth: Callable[[], int] = lambda: 0
        self.batch_crops = 0
        self.model_seconds = 0.0
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

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def observe_batch(self, n: int, seconds: float) -> None:
        self.batches += 1
        self.batch_crops += n
        self.model_seconds += seconds

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
            "# HELP pitguard_batch_crops_total Crops over all model calls (mean batch size: "
            "this / batches).",
            "# TYPE pitguard_batch_crops_total counter",
            f"pitguard_batch_crops_total {self.batch_crops}",
            "# HELP pitguard_model_seconds_total Time spent in model calls.",
            "# TYPE pitguard_model_seconds_total counter",
            f"pitguard_model_seconds_total {self.model_seconds:.6f}",
            "# HELP pitguard_errors_total Refused or failed classify requests, by reason.",
            "# TYPE pitguard_errors_total counter",
            *(f'pitguard_errors_total{{reason="{r}"}} {n}' for r, n in sorted(self.errors.items())),
            "# HELP pitguard_in_flight Classify requests whose crops are being answered now.",
            "# TYPE pitguard_in_flight gauge",
            f"pitguard_in_flight {self.in_flight}",
            "# HELP pitguard_reading Classify request bodies being read now.",
            "# TYPE pitguard_reading gauge",
            f"pitguard_reading {self.reading}",
            "# HELP pitguard_queue_depth Request pieces waiting for a model call.",
            "# TYPE pitguard_queue_depth gauge",
            f"pitguard_queue_depth {self.queue_depth()}",
            "# HELP pitguard_max_resident_bytes Peak resident memory of the process.",
            "# TYPE pitguard_max_resident_bytes gauge",
            f"pitguard_max_resident_bytes {_max_rss_bytes()}",
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


def _max_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # kilobytes on Linux
