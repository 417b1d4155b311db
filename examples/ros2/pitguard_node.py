"""A ROS2 node around pitguard's line stage: crops in, the line's label codes out.

Runs where ROS2 Humble runs (Ubuntu 22.04, Python 3.10) with `pip install pitguard` (the base
install: no torch). It subscribes to one frame's crops as a Float32MultiArray of shape
(N, 3, 128, 128), float32 in [0, 1], channels bot1, bot2, top2, and publishes an
Int32MultiArray of codes in the same order: clean 1, pit 2, maybe 5. All logic lives in
``pitguard.runtime.LineStage``, which has its own tests; this file is the rclpy shell.

    ros2 run <your package> pitguard_node --ros-args -p bundle:=/opt/bundles/line-2026
"""

import numpy as np
import rclpy
from rclpy.node import Node
from std_msgs.msg import Float32MultiArray, Int32MultiArray

from pitguard.runtime import LineStage


class PitguardNode(Node):
    def __init__(self):
        super().__init__("pitguard")
        self.declare_parameter("bundle", "")
        self.declare_parameter("device", "auto")
        bundle = self.get_parameter("bundle").value
        self.stage = LineStage(bundle, device=self.get_parameter("device").value)
        self.get_logger().info(f"pitguard: {self.stage.classifier!r}")
        self.codes = self.create_publisher(Int32MultiArray, "~/codes", 10)
        self.create_subscription(Float32MultiArray, "~/crops", self.on_crops, 10)

    def on_crops(self, msg: Float32MultiArray) -> None:
        crops = np.asarray(msg.data, dtype=np.float32).reshape(-1, 3, 128, 128)
        self.codes.publish(Int32MultiArray(data=self.stage(crops).tolist()))


def main():
    rclpy.init()
    rclpy.spin(PitguardNode())


if __name__ == "__main__":
    main()
