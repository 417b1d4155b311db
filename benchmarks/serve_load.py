"""The server under a bounded loopback load: every request answered, memory bounded, small
requests' latency kept. Writes JSON, prints a short table.

    .venv/bin/python benchmarks/serve_load.py BUNDLE [--clients 64] [--seconds 30] [--json OUT]

It starts `pitguard serve BUNDLE` on a free loopback port, times single-crop requests alone
(unloaded), then runs CLIENTS concurrent clients for SECONDS: mostly single-crop PNG requests,
mixed with 64-crop .npy requests, oversized bodies (9 MiB), malformed bodies and text files,
while SLOW connections send half a header and hold. It reports the statuses, client-side
failures (a request with no HTTP answer), p50/p99 of single-crop requests loaded against
unloaded, and the server's peak resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.zeros((128, 128, 3), np.uint8)
    yy, xx = np.mgrid[:128, :128]
    inside = (yy - 64) ** 2 + (xx - 64) ** 2 < 35**2
    img[inside, 0] = rng.integers(60, 160)
    img[inside, 2] = rng.integers(80, 200)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _npy(n: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((n, 128, 128, 3), np.uint8))
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def _slow_connections(port: int, n: int, hold: float) -> int:
    """Open N connections that send half a request header and hold; how many the server took."""
    writers = []
    for _ in range(n):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
            await w.drain()
            writers.append(w)
        except OSError:
            break
    await asyncio.sleep(hold)
    for w in writers:
        w.close()
    return len(writers)


async def _load(url: str, clients: int, seconds: float, png: bytes) -> dict:
    big, oversize = _npy(64), os.urandom(9 * 2**20)
    kinds = ["single"] * 16 + ["batch64"] * 2 + ["oversize", "garbage", "text"]
    statuses: Counter = Counter()
    failures: Counter = Counter()
    single_ms: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(k)
        while time.perf_counter() < deadline:
            kind = rng.choice(kinds)
            t = time.perf_counter()
            try:
                if kind == "single":
                    r = await http.post(url, files=[("files", ("c.png", png, "image/png"))])
                elif kind == "batch64":
                    r = await http.post(
                        url, content=big, headers={"content-type": "application/x-npy"}
                    )
                elif kind == "oversize":
                    r = await http.post(
                        url, content=oversize, headers={"content-type": "application/x-npy"}
                    )
                elif kind == "garbage":
                    r = await http.post(
                        url,
                        content=b"\x93NUMPY garbage",
                        headers={"content-type": "application/x-npy"},
                    )
                else:
                    r = await http.post(url, files=[("files", ("a.txt", b"hello", "text/plain"))])
            except httpx.HTTPError as exc:
                failures[f"{kind}: {type(exc).__name__}"] += 1
                continue
            statuses[f"{kind} {r.status_code}"] += 1
            if kind == "single" and r.status_code == 200:
                single_ms.append(1000 * (time.perf_counter() - t))
            if r.status_code == 503:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")) / 10)

    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    return {"statuses": dict(statuses), "failures": dict(failures), "single_ms": single_ms}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--slow", type=int, default=100, help="slow-header connections held")
    parser.add_argument("--json", default="runs/serve_load.json")
    args = parser.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1/classify"
    server = subprocess.Popen(
        [sys.executable, "-m", "pitguard", "serve", args.bundle, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        png = _png(0)
        unloaded = []
        with httpx.Client(timeout=30) as http:
            for _ in range(200):
                t = time.perf_counter()
                http.post(url, files=[("files", ("c.png", png, "image/png"))]).raise_for_status()
                unloaded.append(1000 * (time.perf_counter() - t))
        peak = [_rss_mb(server.pid)]

        async def run() -> tuple[dict, int]:
            async def watch() -> None:
                while server.poll() is None:
                    peak.append(_rss_mb(server.pid))
                    await asyncio.sleep(0.2)

            watcher = asyncio.ensure_future(watch())
            slow = asyncio.ensure_future(_slow_connections(port, args.slow, args.seconds))
            result = await _load(url, args.clients, args.seconds, png)
            held = await slow
            watcher.cancel()
            return result, held

        loaded, held = asyncio.run(run())
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)

    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(values, q)) if values else None

    record = {
        "bundle": args.bundle,
        "clients": args.clients,
        "seconds": args.seconds,
        "slow_connections_held": held,
        "unloaded_single_ms": {"p50": pct(unloaded, 50), "p99": pct(unloaded, 99), "n": 200},
        "loaded_single_ms": {
            "p50": pct(loaded["single_ms"], 50),
            "p99": pct(loaded["single_ms"], 99),
            "n": len(loaded["single_ms"]),
        },
        "statuses": loaded["statuses"],
        "client_failures": loaded["failures"],
        "server_peak_rss_mb": float(np.nanmax(peak)),
        "server_alive_after": alive,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    u, lo = record["unloaded_single_ms"], record["loaded_single_ms"]
    print(f"single-crop ms  unloaded p50 {u['p50']:.1f} p99 {u['p99']:.1f} (n=200)")
    if lo["n"]:
        print(f"                loaded   p50 {lo['p50']:.1f} p99 {lo['p99']:.1f} (n={lo['n']})")
    for key, n in sorted(loaded["statuses"].items()):
        print(f"  {key:<22} {n}")
    print(f"  requests with no answer: {sum(loaded['failures'].values())} {loaded['failures']}")
    print(
        f"  slow-header connections held: {held}; server peak RSS {record['server_peak_rss_mb']:.0f} MB; alive: {alive}"
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
