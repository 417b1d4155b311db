"""A synchronous call to the pitguard node: send a frame's crops, wait for its codes.

The detector asks for an answer before it goes on, as with a ROS service. Service types must be
compiled into an interface package, which the registry's ROS 2 wheels cannot build (they ship
no ROS headers), so the call runs over the node's topic pair: the frame's id travels in the
crops' first layout dimension and comes back on its codes, and a reply is matched to its call by
that id. A reply that does not come within the timeout answers every crop with maybe, the same
fail-safe as a frame the node refuses.

    client = LineClient(timeout=0.05)
    client.wait_for_node(10)
    codes = client.classify(crops)        # (N, 3, 128, 128) float32 in [0, 1] -> int32 (N,)
    client.close()

The client runs its own node and executor on a background thread, so ``classify`` may be called
from inside another node's callback.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import logging
import os
import threading
import time

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import Float32MultiArray, Int32MultiArray, MultiArrayDimension, MultiArrayLayout

from pitguard.core.errors import PitguardError
from pitguard.ros.transport import use_large_frame_transport
from pitguard.runtime.line import MAYBE_CODE

log = logging.getLogger(__name__)


class LineClient:
    """Calls the node at ``namespace`` (``/pitguard``) and waits at most ``timeout`` seconds.

    ``large_frames``: use pitguard's Fast DDS profile for large frames when no profile is set
    (:func:`pitguard.ros.transport.use_large_frame_transport`; it must come before the process's first
    participant, so create the client first or set the profile for the whole process)."""

    def __init__(
        self,
        namespace: str = "/pitguard",
        timeout: float = 0.1,
        name: str = "",
        large_frames: bool = True,
    ):
        if large_frames:
            use_large_frame_transport()
        self.context = Context()
        rclpy.init(context=self.context)
        self.timeout = timeout
        self.node = rclpy.create_node(
            name or f"pitguard_client_{os.getpid()}", context=self.context
        )
        self.prefix = f"{self.node.get_name()}-"
        self.crops_topic = f"{namespace.rstrip('/')}/crops"
        self.codes_topic = f"{namespace.rstrip('/')}/codes"
        self.publisher = self.node.create_publisher(Float32MultiArray, self.crops_topic, 10)
        self.node.create_subscription(Int32MultiArray, self.codes_topic, self._on_codes, 10)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[threading.Event, list]] = {}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def wait_for_node(self, timeout: float = 10.0) -> None:
        """Block until the node's topics are matched both ways (discovery takes a moment)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                self.publisher.get_subscription_count() > 0
                and self.node.count_publishers(self.codes_topic) > 0
            ):
                return
            time.sleep(0.05)
        raise PitguardError(
            f"no pitguard node answers on {self.crops_topic} within {timeout:g} s; start it "
            "(pitguard-node --ros-args -p bundle:=DIR) with the same ROS_DOMAIN_ID"
        )

    def classify(self, crops: np.ndarray, frame_id: str = "") -> np.ndarray:
        """The node's codes (int32, (N,)) for one frame; maybe for all after the timeout."""
        crops = np.ascontiguousarray(crops, dtype=np.float32)
        count = len(crops) if crops.ndim == 4 else 1
        frame_id = frame_id or f"{self.prefix}{next(self._ids)}"
        codes = self.call(crops.reshape(-1), count, frame_id)
        if codes is None:
            log.warning(
                "frame %s: no answer within %g s, all %d crops sent to review",
                frame_id,
                self.timeout,
                count,
            )
            return np.full(count, MAYBE_CODE, dtype=np.int32)
        return codes

    def call(self, values: np.ndarray, count: int | None, frame_id: str) -> np.ndarray | None:
        """Send raw values (any length: what a malformed frame looks like) with a stated
        count (None: not stated), and wait for the reply to ``frame_id``; None after the timeout."""
        done, box = threading.Event(), list[np.ndarray]()
        with self._lock:
            self._waiting[frame_id] = (done, box)
        dim = MultiArrayDimension(label=frame_id, size=count or 0)  # size 0: not stated
        data = array.array("f")
        raw = np.ascontiguousarray(values, dtype=np.float32).view(np.uint8)
        data.frombytes(raw.data)  # one copy
        msg = Float32MultiArray(layout=MultiArrayLayout(dim=[dim]), data=data)
        try:
            self.publisher.publish(msg)
            done.wait(self.timeout)
        finally:
            with self._lock:
                self._waiting.pop(frame_id, None)
        return box[0] if box else None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)

    def _on_codes(self, msg: Int32MultiArray) -> None:
        frame_id = msg.layout.dim[0].label if msg.layout.dim else ""
        with self._lock:
            waiter = self._waiting.get(frame_id)
        if waiter is not None:
            waiter[1].append(np.frombuffer(msg.data, dtype=np.int32).copy())
            waiter[0].set()

    def _spin(self) -> None:
        # the context shut down under it: close() or the process ending
        with contextlib.suppress(Exception):
            self.executor.spin()
