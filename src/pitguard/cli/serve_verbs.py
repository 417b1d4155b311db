"""The serve verb: a bundle over HTTP, and the serving options predict shares with it."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from pitguard.cli.common import COUNT, SHARE, THREADS, number, verb
from pitguard.core.errors import PitguardError
from pitguard.runtime.backends import ALIASES, SERVING  # no torch: help stays light

if TYPE_CHECKING:
    from pitguard.cli.common import Verbs


def serving_backends() -> str:
    """The --backend help of predict and serve, listed from the registry."""
    alias_of = {name: alias for alias, name in ALIASES.items()}
    names = [f"{n} (alias {alias_of[n]})" if n in alias_of else n for n in SERVING]
    return "auto (ONNX when present), " + ", ".join(names)


def review_queue(args: argparse.Namespace):
    """The review queue asked for with --queue, or None."""
    if not args.queue:
        return None
    from pitguard.runtime.queue import ReviewQueue, parse_routes

    return ReviewQueue(args.queue, parse_routes(args.queue_routes), args.queue_sample)


def add_queue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--queue",
        metavar="DIR",
        help="keep the crops routed to review as PNGs with an unlabelled manifest "
        "(DIR/queue.csv) for people to label (pitguard data review DIR)",
    )
    p.add_argument(
        "--queue-routes",
        default="maybe",
        metavar="ROUTES",
        help="routes kept whole in the queue, comma-separated (default maybe)",
    )
    p.add_argument(
        "--queue-sample",
        type=SHARE,
        default=0.0,
        metavar="SHARE",
        help="also keep this random share of the other routes, e.g. 0.01 (default 0)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from pitguard.deploy.serve import serve

    if not 0 < args.header_timeout < math.inf:
        raise PitguardError(
            f"--header-timeout {args.header_timeout}: give a positive number of seconds "
            "(default 10)"
        )
    serve(
        args.bundle,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        backend=args.backend,
        threads=args.threads,
        queue=review_queue(args),
        max_in_flight=args.max_in_flight,
        max_queue_ms=args.max_queue_ms,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        max_crops=args.max_crops,
        max_request_bytes=int(args.max_request_mb * 2**20),
        max_reading=args.max_reading,
        body_timeout=args.body_timeout,
        min_body_rate=args.min_body_rate * 1024,
        token=_read_token(args.token_file),
        docs=args.docs,
        trust=args.trust,
    )
    return 0


def _read_token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise PitguardError(f"--token-file {path}: cannot read it ({exc.strerror})") from exc
    if len(token) < 16:
        raise PitguardError(
            f"--token-file {path}: the token is {len(token)} characters; use 16 or more "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE)"
        )
    return token


def add_serve(sub: Verbs) -> None:
    p = verb(
        sub,
        "serve",
        "Serve a bundle over HTTP: POST /v1/classify (PNG files or .npy), /healthz, /metrics.",
        [
            "pitguard serve bundles/cpu-fast",
            "pitguard serve bundles/cpu-fast --port 8080 --max-batch 128 --max-in-flight 64",
            "pitguard serve bundles/cpu-fast --host 0.0.0.0 --token-file /etc/pitguard/token",
            "curl -F files=@a.png -F files=@b.png http://127.0.0.1:8000/v1/classify",
        ],
        cmd_serve,
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this machine only); another address exposes "
        "the model to the network: set --token-file and put a TLS reverse proxy in front",
    )
    p.add_argument(
        "--port",
        type=number(int, 0, 65535, hint="a port between 0 and 65535"),
        default=8000,
        help="port (default 8000)",
    )
    p.add_argument(
        "--max-batch",
        type=COUNT,
        default=None,
        help="most crops per model call (default 64 on a GPU, 4 on a CPU, where the time per "
        "crop hardly depends on the batch and small calls keep waits short)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=number(float, 0, hint="0 or more milliseconds"),
        default=5.0,
        help="longest wait for more requests to batch with (default 5)",
    )
    p.add_argument("--backend", default="auto", help=serving_backends())
    p.add_argument("--threads", type=THREADS, default=0, help="CPU threads (default: all cores)")
    _add_limits(p)
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="require Authorization: Bearer TOKEN (the file's content) on classify and metrics",
    )
    p.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json")
    add_trust_arg(p)
    add_queue_args(p)


def add_trust_arg(p) -> None:
    p.add_argument(
        "--trust",
        metavar="KEY",
        help="a public key (signing.pub from pitguard keygen) or a folder of them: refuse a "
        "bundle that none of them signed (without it, sha256 digests prove the bundle against "
        "accidents only, not against someone who edits it)",
    )


def _add_limits(p) -> None:
    """What the server takes on at once, and how long it waits: overload gets a 503."""
    p.add_argument(
        "--max-in-flight",
        type=COUNT,
        default=None,
        help="classify requests read or answered at once; more get 503 with Retry-After "
        "(default 2 per CPU core on a CPU, 32 on a GPU)",
    )
    p.add_argument(
        "--max-queue-ms",
        type=number(float, 0, low_open=True, hint="a positive number of milliseconds"),
        default=100.0,
        help="refuse new requests (503, Retry-After) while a new request's crops would wait more "
        "than this many ms of model work, estimated from the model's recent time per crop; "
        "lower keeps the latency of the requests taken closer to its unloaded value, at the "
        "price of more 503s (default 100)",
    )
    p.add_argument(
        "--max-connections",
        type=COUNT,
        default=256,
        help="open connections at once, slow ones included; more get 503 (default 256)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may take to send a request's line and headers; slower "
        "ones are closed (default 10)",
    )
    p.add_argument(
        "--max-crops", type=COUNT, default=256, help="most crops in one request (default 256)"
    )
    p.add_argument(
        "--max-request-mb",
        type=number(float, 0, low_open=True, hint="a positive size in MiB"),
        default=8.0,
        help="largest request body in MiB (default 8: 128 .npy crops of 128 px)",
    )
    p.add_argument(
        "--max-reading",
        type=COUNT,
        default=None,
        help="request bodies read at once, outside --max-in-flight so uploads that stall hold "
        "no model slot; more get 503 (default 4 x --max-in-flight)",
    )
    p.add_argument(
        "--body-timeout",
        type=number(float, 0, low_open=True, hint="a positive number of seconds"),
        default=30.0,
        help="seconds a request's whole body may take; slower gets 408 (default 30)",
    )
    p.add_argument(
        "--min-body-rate",
        type=number(float, 0, hint="0 or more KiB/s"),
        default=16.0,
        help="KiB/s a body must keep up after its first second; slower gets 408 (default 16)",
    )
