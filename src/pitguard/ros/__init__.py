"""pitguard on ROS 2: the line stage as a node of its own (``pitguard-node``) and a client that
calls it synchronously. A thin shell over :mod:`pitguard.runtime`: all decisions are made by
``LineStage``; this wing only moves messages.

rclpy comes from the ROS installation (``source /opt/ros/humble/setup.bash``) or, where there is
none, from the package registry's ROS 2 wheels (``pip install 'pitguard[ros]'``).
"""

from __future__ import annotations

import logging
import os
import sys
import time

ROS_MISSING = (
    "rclpy is not importable: on a ROS 2 machine source its setup (source "
    "/opt/ros/humble/setup.bash); elsewhere install the ROS 2 wheels with "
    "pip install 'pitguard[ros]'"
)


def main(argv: list[str] | None = None) -> int:
    """The ``pitguard-node`` console script: exit 0 when stopped by SIGINT or SIGTERM, 2 when
    it cannot start (no rclpy, a bad parameter, a bundle or device it cannot load)."""
    started = process_started()
    from pitguard.ros.transport import use_large_frame_transport

    use_large_frame_transport()
    try:
        import rclpy  # noqa: F401
    except ImportError:
        logging.basicConfig(format="pitguard-node: error: %(message)s")
        logging.getLogger("pitguard.ros").error(ROS_MISSING)
        return 2
    from pitguard.ros.node import run

    return run(sys.argv if argv is None else argv, started)


def process_started() -> float:
    """When this process started, on the ``time.monotonic`` clock (Linux: from /proc, so the
    interpreter's own start-up counts too; elsewhere: now)."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    return time.monotonic() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
