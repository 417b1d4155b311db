"""How frames cross DDS: pitguard's Fast DDS profile for large frames (``large_frames.xml``),
set for the node and its client where no profile is set."""

from __future__ import annotations

import os

PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
LARGE_FRAMES_PROFILE = os.path.join(os.path.dirname(__file__), "large_frames.xml")


def use_large_frame_transport() -> str | None:
    """Point Fast DDS at pitguard's profile for large frames (large_frames.xml: shared memory
    in 8 MB segments), unless a profile is already set, another RMW is chosen, or
    PITGUARD_FASTDDS_PROFILE=none. It applies to the participants this process creates from
    now on, so call it before rclpy.init; returns the profile set, or None."""
    rmw = os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if os.environ.get("PITGUARD_FASTDDS_PROFILE") == "none" or "fastrtps" not in rmw:
        return None
    if any(os.environ.get(v) for v in PROFILE_VARIABLES):
        return None
    # Humble's Fast DDS 2.6 reads the older name; later releases warn on it
    name = PROFILE_VARIABLES[os.environ.get("ROS_DISTRO") == "humble"]
    os.environ[name] = LARGE_FRAMES_PROFILE
    return LARGE_FRAMES_PROFILE
