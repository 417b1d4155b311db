"""The ROS 2 tests: a real ``pitguard-node`` process and real client nodes over Fast DDS on
loopback, each session on a ROS domain of its own. They run where rclpy imports (`make
test-runtime` installs the registry's ROS 2 wheels there) and skip elsewhere."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.runtime.make_bundle import expected_of, made_or_given

READY = "ready in"


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> Path:
    """A folder with ``bundle/`` and ``expected.npz`` (tests/runtime/make_bundle.py)."""
    return made_or_given(tmp_path_factory)


@pytest.fixture(scope="session")
def expected(made) -> dict[str, np.ndarray]:
    return expected_of(made)


@pytest.fixture(scope="session")
def ros_env(tmp_path_factory) -> dict[str, str]:
    """Environment of every ROS process of this session: its own domain, loopback only,
    logs and ROS home in a temporary folder."""
    home = tmp_path_factory.mktemp("ros-home")
    env = {
        **os.environ,
        "ROS_DOMAIN_ID": str(100 + os.getpid() % 100),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOCALHOST_ONLY": "1",  # Humble's spelling of the line above
        "ROS_LOG_DIR": str(home / "log"),
        "ROS_HOME": str(home),
        "PITGUARD_CACHE": str(home / "cache"),
        "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
    }
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    os.environ.update({k: env[k] for k in ("ROS_LOCALHOST_ONLY", "ROS_LOG_DIR", "ROS_HOME")})
    return env


def node_command(bundle: Path, **params) -> list[str]:
    exe = shutil.which("pitguard-node", path=str(Path(sys.executable).parent))
    base = [exe] if exe else [sys.executable, "-m", "pitguard.ros"]
    args = [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
    return [*base, "--ros-args", "-p", f"bundle:={bundle}", *args]


class NodeProcess:
    """``pitguard-node`` as its own process; its log (stderr) kept in a file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path):
        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY in self.text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.1)
        raise AssertionError(f"node not ready in {timeout} s:\n{self.text()}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._fh.close()
        return code


class Listener:
    """A client node that keeps what the pitguard node publishes on ~/results and
    /diagnostics, and can publish Image frames."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image
        from std_msgs.msg import Int32MultiArray, String

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"listener_{os.getpid()}", context=self.context)
        self.results: list[dict] = []
        self.codes: list[tuple[str, list[int]]] = []
        self.diagnostics: list = []
        self.node.create_subscription(
            String, "/pitguard/results", lambda m: self.results.append(json.loads(m.data)), 50
        )
        self.node.create_subscription(
            Int32MultiArray,
            "/pitguard/codes",
            lambda m: self.codes.append((m.layout.dim[0].label, list(m.data))),
            50,
        )
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.images = self.node.create_publisher(Image, "/pitguard/frames", 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # shut down under it
            self.executor.spin()

    def wait_for(self, what, timeout: float = 10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = what()
            if found:
                return found
            time.sleep(0.05)
        return None

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def crops_of(expected: dict, n: int, start: int = 0) -> np.ndarray:
    return np.ascontiguousarray(expected["crops"][start : start + n].astype(np.float32) / 255)


def mixed_frame(expected: dict, n: int) -> np.ndarray:
    """n crops whose eager routes alternate between the routes the bundle gives them."""
    routes = expected["routes"]
    groups = [list(np.flatnonzero(routes == r)) for r in sorted(set(routes))]
    order = [i for row in zip(*groups, strict=False) for i in row]
    order += [i for i in range(len(routes)) if i not in order]
    return np.ascontiguousarray(expected["crops"][order[:n]].astype(np.float32) / 255)
