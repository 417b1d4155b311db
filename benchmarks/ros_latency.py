"""What the ROS 2 node costs against the line stage in-process: a frame's round trip through DDS
(client -> pitguard-node -> client) and ``LineStage`` called directly, for frames of 8 and 16
crops, and the node's start to ready, on a first start (bundle hashed) and a second (its digests
remembered).

    .venv-runtime/bin/python benchmarks/ros_latency.py BUNDLE [BUNDLE ...] [--frames 200]
        [--crops 8,16] [--threads 2] [--json OUT]

Runs where rclpy imports (the environment `make test-runtime` builds). The node runs as its own
process on a ROS domain of this run, loopback only; frames are the line sample's crops
(../shared/line_sample/crops_226.npy) repeated to the frame's size where present, else random
crops in [0, 1]. Each figure: median and 90th percentile over ``--frames`` frames after 10
warm-up frames; the node's own time per frame is read from its ~/results records. The CPU is
named from /proc/cpuinfo.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_latency import cpu_name

LINE_SAMPLE = Path(__file__).resolve().parents[2] / "shared/line_sample/crops_226.npy"
WARMUP = 10


def frame(n: int) -> np.ndarray:
    if LINE_SAMPLE.is_file():
        sample = np.load(LINE_SAMPLE)
        return np.ascontiguousarray(np.resize(sample, (n, *sample.shape[1:])))
    return np.random.default_rng(n).random((n, 3, 128, 128), dtype=np.float32)


def start_node(bundle: str, threads: int, env: dict, log: Path) -> tuple[subprocess.Popen, float]:
    """The node's process and the seconds from launch to its ready line."""
    cmd = [str(Path(sys.executable).parent / "pitguard-node"), "--ros-args"]
    cmd += ["-p", f"bundle:={bundle}", "-p", "device:=cpu", "-p", f"threads:={threads}"]
    fh = log.open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    while "ready in" not in log.read_text():
        if proc.poll() is not None:
            raise SystemExit(f"pitguard-node exited {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.02)
    return proc, time.monotonic() - t0


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(2)
    proc.wait(30)


def percentiles(ms: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90))}


def time_in_process(bundle: str, n: int, frames: int, threads: int) -> dict:
    from pitguard.runtime import LineStage

    stage = LineStage(bundle, device="cpu", threads=threads)
    x, ms = frame(n), []
    for i in range(WARMUP + frames):
        t0 = time.perf_counter()
        stage.frame(x)
        if i >= WARMUP:
            ms.append((time.perf_counter() - t0) * 1000)
    return percentiles(ms)


def time_over_dds(n: int, frames: int) -> dict:
    from pitguard.ros.client import LineClient

    client = LineClient(timeout=10)
    client.wait_for_node(30)
    x, ms = frame(n), []
    for i in range(WARMUP + frames):
        t0 = time.perf_counter()
        codes = client.classify(x)
        if i >= WARMUP:
            ms.append((time.perf_counter() - t0) * 1000)
        assert len(codes) == n
    client.close()
    return percentiles(ms)


def dds_profile() -> str:
    """The Fast DDS profile the node and the client ran with (pitguard's, unless one was set)."""
    from pitguard.ros.transport import PROFILE_VARIABLES

    given = next((os.environ[v] for v in PROFILE_VARIABLES if os.environ.get(v)), None)
    return Path(given).name if given else "Fast DDS defaults"


def ready_seconds(log: Path) -> float:
    found = re.search(r"ready in ([0-9.]+) s", log.read_text())
    return float(found.group(1)) if found else float("nan")


def bench_bundle(bundle: str, args: argparse.Namespace, env: dict, work: Path) -> dict:
    out: dict = {"bundle": Path(bundle).name, "starts": []}
    for start in ("first (hashed)", "second (remembered)"):
        proc, seen = start_node(bundle, args.threads, env, work / "node.log")
        out["starts"].append(
            {"start": start, "to_ready_s": seen, "node_says_s": ready_seconds(work / "node.log")}
        )
        if start.startswith("second"):
            for n in args.crops:
                dds = time_over_dds(n, args.frames)
                out[f"dds_{n}"] = dds
        stop(proc)
    for n in args.crops:
        out[f"in_process_{n}"] = time_in_process(bundle, n, args.frames, args.threads)
        dds, local = out[f"dds_{n}"], out[f"in_process_{n}"]
        out[f"overhead_{n}"] = dds["p50_ms"] / local["p50_ms"] - 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--crops", default="8,16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="results/ros-latency.json")
    args = parser.parse_args()
    args.crops = [int(c) for c in args.crops.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "ROS_DOMAIN_ID": str(150 + os.getpid() % 50),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "ROS_LOG_DIR": str(work / "log"),
            "ROS_HOME": str(work),
            "PITGUARD_CACHE": str(work / "cache"),  # empty: the first start hashes
        }
        os.environ.update(env)
        rows = [bench_bundle(b, args, env, work) for b in args.bundles]
    from importlib.metadata import PackageNotFoundError, version

    try:
        rclpy_version = version("ros-rclpy")
    except PackageNotFoundError:  # a ROS installation's own rclpy
        rclpy_version = "system"
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "frames": args.frames,
        "rclpy": rclpy_version,
        "frame_source": "line sample" if LINE_SAMPLE.is_file() else "random",
        "dds_profile": dds_profile(),
        "bundles": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cpu']}, {args.threads} threads, {args.frames} frames a figure")
    print(
        f"{'bundle':<22} {'crops':>5} {'DDS p50/p90 ms':>16} {'in-process p50/p90':>19} {'overhead':>8}"
    )
    for row in rows:
        for n in args.crops:
            d, i = row[f"dds_{n}"], row[f"in_process_{n}"]
            print(
                f"{row['bundle']:<22} {n:>5} {d['p50_ms']:>7.2f}/{d['p90_ms']:<8.2f} "
                f"{i['p50_ms']:>9.2f}/{i['p90_ms']:<9.2f} {row[f'overhead_{n}']:>8.1%}"
            )
        for s in row["starts"]:
            print(f"{row['bundle']:<22} start {s['start']}: ready in {s['to_ready_s']:.2f} s")


if __name__ == "__main__":
    main()
