"""The HTTP service's Prometheus metrics: request, crop, route and batch counters, a latency histogram."""

from __future__ import annotations

from pitguard.policy import ROUTES

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
