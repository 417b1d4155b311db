"""The server under a bounded loopback load: every request answered, memory bounded, small
requests' latency kept. Writes JSON, prints a short table.

    .venv/bin/python benchmarks/serve_load.py BUNDLE [--clients 64] [--seconds 30] [--json OUT]
        [--nice 10 | --idle] [--serve-flags '--max-queue-ms 25']

It starts `pitguard serve BUNDLE` on a free loopback port. A probe process sends single-crop
requests one after another, alone (unloaded, 200 requests) and then while CLIENTS concurrent
clients run for SECONDS: mostly single-crop PNG requests, mixed with 64-crop .npy requests,
oversized bodies (9 MiB), malformed bodies and text files, while SLOW connections send half a
header and hold. It reports the statuses, client-side failures (a request with no HTTP
answer), p50/p99 of the probe's answered requests loaded against unloaded (and the load
clients' own single-crop latencies, which include their event loop's queueing), and the
server's peak resident memory.

On loopback the load generator shares the server's cores. It runs at `--nice` (default 10)
so that, like clients on other machines, it does not take the server's CPU time; the server
and the probe keep the default priority. `--idle` runs it under SCHED_IDLE instead: it then gets
a core only when neither the server nor the probe wants one, the nearest loopback comes to
clients on other machines (the kernel's loopback work for its traffic is still shared).
`--nice 0` measures with no such advantage.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import random
import shlex
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
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


def _probe(url: str, png: bytes, unloaded_n: int, seconds: float, ready, go, out) -> None:
    """Single-crop requests one after another: UNLOADED_N answered alone, then for SECONDS
    after GO."""

    def series(done) -> tuple[list[float], Counter]:
        ms: list[float] = []
        statuses: Counter = Counter()
        with httpx.Client(timeout=60) as http:
            while not done(ms):
                t = time.perf_counter()
                try:
                    r = http.post(url, files=[("files", ("c.png", png, "image/png"))])
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                statuses[str(r.status_code)] += 1
                if r.status_code == 200:
                    ms.append(1000 * (time.perf_counter() - t))
                elif r.status_code == 503:
                    time.sleep(0.01)
        return ms, statuses

    alone_ms, _ = series(lambda ms: len(ms) >= unloaded_n)
    ready.set()
    go.wait()
    end = time.perf_counter() + seconds
    loaded_ms, statuses = series(lambda _ms: time.perf_counter() > end)
    out.put({"unloaded": alone_ms, "loaded": loaded_ms, "statuses": dict(statuses)})


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


def _single_request(url: str, png: bytes) -> bytes:
    """One single-crop multipart request as raw HTTP/1.1 bytes (keep-alive)."""
    request = httpx.Request("POST", url, files=[("files", ("c.png", png, "image/png"))])
    body = request.read()
    head = f"POST {request.url.raw_path.decode()} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in request.headers.items()
    )
    return (head + "\r\n").encode() + body


class _RawClient:
    """A keep-alive HTTP/1.1 connection for the single-crop requests: far less client CPU per
    request than an HTTP library, so the load reaches the server instead of queueing here."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port, self.request = port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, dict[str, str]]:
        for attempt in (0, 1):  # once more on a fresh connection if a kept-alive one closed
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                assert self.reader is not None
                self.writer.write(self.request)
                await self.writer.drain()
                head = await self.reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                await self.reader.readexactly(int(headers.get("content-length", "0")))
                if headers.get("connection", "").lower() == "close":
                    self.close()
                return int(lines[0].split()[1]), headers
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.close()
                if attempt:
                    raise ConnectionError(type(exc).__name__) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


MIX = ["single"] * 16 + ["batch64"] * 2 + ["oversize", "garbage", "text"]


async def _load(
    url: str, port: int, clients: int, seconds: float, png: bytes, kinds: list[str]
) -> dict:
    big, oversize = _npy(64), os.urandom(9 * 2**20)
    statuses: Counter = Counter()
    failures: Counter = Counter()
    single_ms: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    single = _single_request(url, png)

    npy = {"batch64": big, "oversize": oversize, "garbage": b"\x93NUMPY garbage"}

    async def send(kind: str, raw: _RawClient, http: httpx.AsyncClient) -> tuple[int, Mapping]:
        if kind == "single":
            return await raw.post()
        if kind in npy:
            r = await http.post(
                url, content=npy[kind], headers={"content-type": "application/x-npy"}
            )
        else:
            r = await http.post(url, files=[("files", ("a.txt", b"hello", "text/plain"))])
        return r.status_code, r.headers

    async def client(k: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(k)
        raw = _RawClient(port, single)
        while time.perf_counter() < deadline:
            kind = rng.choice(kinds)
            t = time.perf_counter()
            try:
                code, headers = await send(kind, raw, http)
            except ConnectionError as exc:  # the raw client names what went wrong
                failures[f"{kind}: {exc}"] += 1
                continue
            except httpx.HTTPError as exc:
                failures[f"{kind}: {type(exc).__name__}"] += 1
                continue
            statuses[f"{kind} {code}"] += 1
            if kind == "single" and code == 200:
                single_ms.append(1000 * (time.perf_counter() - t))
            elif code == 503:
                await asyncio.sleep(float(headers.get("retry-after", "1")) / 10)
        raw.close()

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
    parser.add_argument("--nice", type=int, default=10, help="the load generator's niceness")
    parser.add_argument(
        "--idle", action="store_true", help="run the load generator under SCHED_IDLE (Linux)"
    )
    parser.add_argument("--json", default="runs/serve_load.json")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated request kinds to send (single, batch64, oversize, garbage, "
        "text); default all, in the mix 16:2:1:1:1",
    )
    parser.add_argument(
        "--serve-flags", default="", help="flags for pitguard serve, as one quoted string"
    )
    args = parser.parse_args()
    serve_flags = shlex.split(args.serve_flags)
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    if only - set(MIX):
        parser.error(
            f"--only: unknown kinds {sorted(only - set(MIX))}; choose from {sorted(set(MIX))}"
        )
    kinds = [k for k in MIX if not only or k in only]

    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1/classify"
    server = subprocess.Popen(
        [sys.executable, "-m", "pitguard", "serve", args.bundle, "--port", str(port), *serve_flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        png = _png(0)
        probe = ctx.Process(target=_probe, args=(url, png, 200, args.seconds, ready, go, out))
        probe.start()  # before the niceness below: the probe keeps the server's priority
        ready.wait()
        if args.idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.nice(args.nice)
        peak = [_rss_mb(server.pid)]

        async def run() -> tuple[dict, int]:
            async def watch() -> None:
                while server.poll() is None:
                    peak.append(_rss_mb(server.pid))
                    await asyncio.sleep(0.2)

            watcher = asyncio.ensure_future(watch())
            slow = asyncio.ensure_future(_slow_connections(port, args.slow, args.seconds))
            go.set()
            result = await _load(url, port, args.clients, args.seconds, png, kinds)
            held = await slow
            watcher.cancel()
            return result, held

        loaded, held = asyncio.run(run())
        probed = out.get(timeout=120)
        probe.join(timeout=30)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)

    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(values, q)) if values else None

    def summary(values: list[float]) -> dict:
        return {"p50": pct(values, 50), "p99": pct(values, 99), "n": len(values)}

    record = {
        "bundle": args.bundle,
        "serve_flags": serve_flags,
        "clients": args.clients,
        "kinds": sorted(set(kinds)),
        "seconds": args.seconds,
        "load_generator_priority": "SCHED_IDLE" if args.idle else f"nice {args.nice}",
        "cpu_count": os.cpu_count(),
        "slow_connections_held": held,
        "probe_unloaded_ms": summary(probed["unloaded"]),
        "probe_loaded_ms": summary(probed["loaded"]),
        "probe_loaded_statuses": probed["statuses"],
        "load_clients_single_ms": summary(loaded["single_ms"]),
        "statuses": loaded["statuses"],
        "client_failures": loaded["failures"],
        "server_peak_rss_mb": float(np.nanmax(peak)),
        "server_alive_after": alive,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(f"single-crop ms (p50 / p99, n)  load generator at {record['load_generator_priority']}")
    for label, key in (
        ("probe, unloaded", "probe_unloaded_ms"),
        ("probe, loaded", "probe_loaded_ms"),
        ("load clients", "load_clients_single_ms"),
    ):
        v = record[key]
        if v["n"]:
            print(f"  {label:<18} {v['p50']:8.1f} {v['p99']:8.1f}  n={v['n']}")
    print(f"  probe statuses under load: {probed['statuses']}")
    for key, n in sorted(loaded["statuses"].items()):
        print(f"  {key:<22} {n}")
    print(f"  requests with no answer: {sum(loaded['failures'].values())} {loaded['failures']}")
    print(
        f"  slow-header connections held: {held}; server peak RSS "
        f"{record['server_peak_rss_mb']:.0f} MB; alive: {alive}"
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
