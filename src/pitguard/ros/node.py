"""The ``pitguard`` node: one frame's crops in, the line's codes out, over DDS.

Topics (relative to the node, so ``/pitguard/...`` for the node named ``pitguard``):

- ``~/crops`` in, ``std_msgs/Float32MultiArray``: N x 3 x S x S float32 in [0, 1]. The first
  layout dimension, when the sender fills it, states N (its ``size``) and the frame's id (its
  ``label``).
- ``~/frames`` in, ``sensor_msgs/Image``: the same crops as a 32FC1 image of width S and height
  N x 3 x S, with the frame's header (stamp, frame id).
- ``~/codes`` out, ``std_msgs/Int32MultiArray``: a code per crop in order (clean 1, pit 2,
  maybe 5); its first layout dimension carries the frame's id as label and N as size.
- ``~/results`` out, ``std_msgs/String``: per frame, JSON with the sequence number, frame id,
  stamp, codes, calibrated p(pit), the guard's reasons, the refusal's reason and milliseconds.
- ``/diagnostics`` out, ``diagnostic_msgs/DiagnosticArray``: every ``summary_period`` seconds,
  the rolling summary of the last ``window`` frames (maybe rate, guard rate, latency p50, p99).

A frame that cannot be scored (any layout, values or count the stage refuses) is answered with
maybe for each of its crops, one log line and its reason on ``~/results``; the node goes on.
"""

from __future__ import annotations

import array
import json
import logging
import math
import os
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import (
    Float32MultiArray,
    Int32MultiArray,
    MultiArrayDimension,
    MultiArrayLayout,
    String,
)

from pitguard.core.errors import PitguardError
from pitguard.ros.params import PARAMETERS, NodeSettings, read_settings
from pitguard.ros.transport import PROFILE_VARIABLES
from pitguard.runtime.frames import FlatFrame, frame_from_flat, frame_from_image
from pitguard.runtime.line import LineResult, LineStage
from pitguard.runtime.monitor import LineMonitor
from pitguard.runtime.trust import INTEGRITY_ONLY

QUEUE_DEPTH = 10  # as the detector's own subscriptions


class PitguardNode(Node):
    """The line stage on DDS; see the module for its topics."""

    def __init__(self, started: float):
        super().__init__("pitguard")
        self.settings = read_settings(self._declared())
        s = self.settings
        self.stage = LineStage(
            s.bundle,
            device=s.device,
            graph=s.graph,
            threads=s.threads,
            second_look=s.second_look,
            max_crops=s.max_crops,
            trust=s.trust or None,
            verify=s.verify,
        )
        warm_ms = self.stage.warm_up(s.warmup_crops) if s.warmup_crops else 0.0
        self.monitor = LineMonitor(s.window)
        self.sequence = 0
        self.codes = self.create_publisher(Int32MultiArray, "~/codes", QUEUE_DEPTH)
        self.results = self.create_publisher(String, "~/results", QUEUE_DEPTH)
        self.create_subscription(Float32MultiArray, "~/crops", self.on_crops, QUEUE_DEPTH)
        self.create_subscription(Image, "~/frames", self.on_image, QUEUE_DEPTH)
        if s.summary_period > 0:
            self.diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", QUEUE_DEPTH)
            self.create_timer(s.summary_period, self.publish_summary)
        self.get_logger().info(self._ready_line(time.monotonic() - started, warm_ms))

    def _declared(self) -> dict:
        any_type = ParameterDescriptor(dynamic_typing=True)
        for name, (default, _) in PARAMETERS.items():
            self.declare_parameter(name, default, any_type)
        return {name: self.get_parameter(name).value for name in PARAMETERS}

    def on_crops(self, msg: Float32MultiArray) -> None:
        first = msg.layout.dim[0] if msg.layout.dim else None
        frame = frame_from_flat(
            msg.data,
            first.size if first is not None else None,
            self.stage.size,
            self.stage.max_crops,
            offset=msg.layout.data_offset,
        )
        self.answer(frame, first.label if first is not None else "", None)

    def on_image(self, msg: Image) -> None:
        frame = frame_from_image(
            msg.height,
            msg.width,
            msg.encoding,
            bool(msg.is_bigendian),
            msg.step,
            msg.data,
            self.stage.size,
            self.stage.max_crops,
        )
        self.answer(frame, msg.header.frame_id, msg.header.stamp)

    def answer(self, frame: FlatFrame, frame_id: str, stamp) -> None:
        """Codes for every frame, whatever it holds: never an exception out of a callback."""
        self.sequence += 1
        label = f"frame {frame_id or '#' + str(self.sequence)}"
        if frame.error or frame.crops is None:
            result = self.stage.refuse(frame.count, frame.error, label=label)
        else:
            result = self.stage.frame(frame.crops, label=label)
        size = len(result)
        dim = MultiArrayDimension(label=frame_id, size=size, stride=size)
        self.codes.publish(
            Int32MultiArray(
                layout=MultiArrayLayout(dim=[dim]), data=array.array("i", result.codes.tolist())
            )
        )
        self.results.publish(String(data=json.dumps(self._record(result, frame_id, stamp))))
        self.monitor.add(result)

    def _record(self, result: LineResult, frame_id: str, stamp) -> dict:
        return {
            "sequence": self.sequence,
            "frame_id": frame_id,
            "stamp": None if stamp is None else {"sec": stamp.sec, "nanosec": stamp.nanosec},
            "codes": result.codes.tolist(),
            "p_pit": [None if math.isnan(p) else round(float(p), 6) for p in result.p_pit],
            "reasons": [str(r) for r in result.reasons],
            "error": result.error,
            "ms": round(result.ms, 3),
        }

    def publish_summary(self) -> None:
        summary = self.monitor.summary()
        level = DiagnosticStatus.WARN if summary.refused_frames else DiagnosticStatus.OK
        status = DiagnosticStatus(
            level=level,
            name="pitguard: line stage",
            message=summary.line(),
            hardware_id=Path(self.settings.bundle).name,
            values=[KeyValue(key=k, value=f"{v}") for k, v in summary.to_dict().items()],
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics.publish(msg)

    def _ready_line(self, seconds: float, warm_ms: float) -> str:
        clf, s = self.stage.classifier, self.settings
        guard = clf.guard
        profile = next((os.environ[v] for v in PROFILE_VARIABLES if os.environ.get(v)), None)
        profile = Path(profile).name if profile else "Fast DDS defaults"
        signed = clf.meta.get("trust")
        integrity = f"signed by key {signed['key_id']}" if signed else INTEGRITY_ONLY
        checked = clf.check.line() if clf.check is not None else "off (verify:=false)"
        guard_text = (
            f"{len(guard.names)} features, {guard.quantile:.1%} of {guard.n} training crops "
            "inside" + (f", dead channels {[c for c, _ in guard.dead]}" if guard.dead else "")
            if guard is not None
            else "none"
        )
        return (
            f"ready in {seconds:.1f} s: bundle {s.bundle} ({clf.meta['model_name']}, "
            f"{'/'.join(clf.classes)}), graph {clf.graph} on {clf.provider}, threads "
            f"{s.threads or 'default'}, second look {'on' if clf.second else 'off'}; "
            f"guarantee: {describe_guarantee(clf.meta.get('guarantee'))}; input guard: "
            f"{guard_text}; integrity: {integrity}; self-check: {checked}; warm-up {s.warmup_crops} crops "
            f"{warm_ms:.1f} ms; DDS profile: {profile}; "
            f"{self.get_fully_qualified_name()}/crops and /frames -> /codes and /results"
        )


def describe_guarantee(guarantee: dict | None) -> str:
    """The bundle's certified bound in a few words."""
    if not guarantee or guarantee.get("max_pit_miss") is None:
        return "none (the bundle was not calibrated)"
    return (
        f"pits routed clean <= {guarantee['max_pit_miss']:.2%} with "
        f"{guarantee.get('confidence', float('nan')):.0%} confidence "
        f"({guarantee.get('kind', '?')}, {guarantee.get('mode', '?')})"
    )


class _ToRosLog(logging.Handler):
    """The runtime's log records (a refused frame, a scoring failure) in the node's log."""

    def __init__(self, logger):
        super().__init__(logging.INFO)
        self.ros = logger

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.ros.error(text)
        elif record.levelno >= logging.WARNING:
            self.ros.warning(text)
        else:
            self.ros.info(text)


def run(argv: list[str], started: float) -> int:
    """Start the node and spin until SIGINT or SIGTERM (exit 0); 2 when it cannot start.
    ``started``: when the process started, on the ``time.monotonic`` clock."""
    rclpy.init(args=argv)
    ros_log = rclpy.logging.get_logger("pitguard")
    package_log = logging.getLogger("pitguard")
    package_log.addHandler(_ToRosLog(ros_log))
    package_log.setLevel(logging.INFO)
    package_log.propagate = False
    node = None
    try:
        node = PitguardNode(started)
        rclpy.spin(node)
    except PitguardError as err:
        ros_log.error(f"cannot start: {err}")
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


__all__ = ["NodeSettings", "PitguardNode", "describe_guarantee", "run"]
