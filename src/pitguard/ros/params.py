"""The node's parameters: names, defaults and what each is for, read into typed settings with
one clear error per bad value (rclpy itself is not needed here)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pitguard.core.errors import PitguardError
from pitguard.runtime.line import MAX_CROPS

# name: (default, what it is); `ros2 param describe` and the docs read the same words
PARAMETERS: dict[str, tuple[object, str]] = {
    "bundle": ("", "the bundle folder written by pitguard export (required)"),
    "device": ("auto", "auto, cpu, cuda or tensorrt; a device whose provider is missing stops it"),
    "graph": ("onnx", "onnx, onnx-int8 or onnx-fp16: which of the bundle's graphs to run"),
    "threads": (0, "ONNX Runtime intra-op threads; 0 lets it choose"),
    "second_look": (True, "run the bundle's second look on the crops its first graph calls maybe"),
    "max_crops": (MAX_CROPS, "a frame with more crops is refused unscored (all maybe)"),
    "warmup_crops": (16, "crops of the blank frame scored before ready; 0 for none"),
    "summary_period": (5.0, "seconds between /diagnostics summaries; 0 for none"),
    "window": (1000, "frames the rolling summary covers"),
    "trust": ("", "a public key (signing.pub) or a folder of them: refuse unsigned bundles"),
    "verify": (
        True,
        "score the bundle's check crops at start; refuse a graph that routes them otherwise",
    ),
}


@dataclass(frozen=True)
class NodeSettings:
    bundle: str
    device: str
    graph: str
    threads: int
    second_look: bool
    max_crops: int
    warmup_crops: int
    summary_period: float
    window: int
    trust: str
    verify: bool


def read_settings(values: dict) -> NodeSettings:
    """Typed settings from the parameters' values; every bad one reported at once."""
    unknown = sorted(set(values) - set(PARAMETERS))
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name, PARAMETERS, n=1)
        problems.append(f"{name}: unknown" + (f" (did you mean {close[0]}?)" if close else ""))
    out: dict = {}
    for name, (default, _) in PARAMETERS.items():
        value = values.get(name, default)
        try:
            out[name] = _typed(name, value, default)
        except ValueError as err:
            problems.append(str(err))
    if not problems and not out["bundle"]:
        problems.append("bundle: give the bundle folder (--ros-args -p bundle:=DIR)")
    if problems:
        raise PitguardError("parameters: " + "; ".join(problems))
    return NodeSettings(**out)


def _typed(name: str, value: object, default: object) -> object:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError(f"{name} {value!r}: give true or false")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} {value!r}: give a whole number, 0 or more")
        if name in ("max_crops", "window") and value < 1:
            raise ValueError(f"{name} {value!r}: give 1 or more")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"{name} {value!r}: give a number of seconds, 0 or more")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} {value!r}: give a string")
    return value
