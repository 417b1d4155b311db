"""Good clients beside uploads that stall: ``pitguard serve`` with 16 clients sending single
crops, alone and then beside 8 connections that send their headers and part of a body and
then nothing, and 2 more that trickle a byte a second.

    .venv/bin/python benchmarks/serve_stalled.py BUNDLE [--seconds 20] [--json OUT]

The server runs as its own process on loopback with its defaults (``--max-in-flight`` 2 per
core, ``--body-timeout`` 30 s, ``--min-body-rate`` 16 KiB/s); each phase lasts ``--seconds``
(shorter than the body timeout, so the stalled uploads stay open through it). Figures: the
good clients' requests answered, their statuses, connection errors (resets), and latency p50
and p99; the CPU is named from /proc/cpuinfo.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from runtime_latency import cpu_name

GOOD_CLIENTS = 16
STALLED, TRICKLING = 8, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_crop() -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def good_clients(url: str, seconds: float, png: bytes) -> dict:
    times: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = http.post(url, files=[("files", ("c.png", png, "image/png"))])
                except httpx.HTTPError as err:
                    with lock:
                        errors.append(type(err).__name__)
                    continue
                with lock:
                    statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                    if r.status_code == 200:
                        times.append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=client) for _ in range(GOOD_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(times) if times else np.array([np.nan])
    return {
        "answered_200": len(times),
        "statuses": statuses,
        "connection_errors": len(errors),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def stalled_upload(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        b"Content-Length: 500000\r\n\r\n\x93NUMPY"
    )
    return sock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", default="results/serve-stalled.json")
    args = ap.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "pitguard.cli", "serve", args.bundle, "--port", str(port)]
    log = open(os.devnull, "w")  # noqa: SIM115 (the server's whole life)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    png = png_crop()
    try:
        alone = good_clients(f"{base}/v1/classify", args.seconds, png)
        stalled = [stalled_upload(port) for _ in range(STALLED)]
        trickling = [stalled_upload(port) for _ in range(TRICKLING)]
        keep = threading.Event()

        def trickle() -> None:
            while not keep.wait(1.0):
                for sock in trickling:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"\0")

        threading.Thread(target=trickle, daemon=True).start()
        loaded = good_clients(f"{base}/v1/classify", args.seconds, png)
        keep.set()
        for sock in stalled + trickling:
            sock.close()
    finally:
        server.terminate()
        server.wait(30)
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "seconds": args.seconds,
        "good_clients": GOOD_CLIENTS,
        "stalled_uploads": STALLED,
        "trickling_uploads": TRICKLING,
        "bundle": Path(args.bundle).name,
        "alone": alone,
        "beside_stalled": loaded,
        "p99_ratio": loaded["p99_ms"] / alone["p99_ms"],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cpu']}, {GOOD_CLIENTS} good clients, {args.seconds:g} s a phase")
    for name in ("alone", "beside_stalled"):
        r = result[name]
        print(
            f"{name:<15} answered {r['answered_200']:>5}  statuses {r['statuses']}  "
            f"errors {r['connection_errors']}  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms"
        )
    print(f"p99 beside stalled uploads / alone: {result['p99_ratio']:.2f}x")


if __name__ == "__main__":
    main()
