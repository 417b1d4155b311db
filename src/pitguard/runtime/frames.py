"""Frames as they travel between processes: a flat float32 buffer and the crop count its sender
declares (a ROS ``Float32MultiArray`` or a 32FC1 ``Image``), read into (N, 3, S, S) crops, or
the reason it cannot be.

A frame that cannot be read is still answered: :class:`FlatFrame` keeps the count of crops the
sender declared (or, without one, what the buffer's length suggests, at least one), so every
crop of it can be sent to review.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHANNELS = 3
FLOAT_ENCODING = "32FC1"  # sensor_msgs/Image encoding of one float32 channel


@dataclass(frozen=True)
class FlatFrame:
    crops: np.ndarray | None  # (N, 3, S, S) float32, None when the buffer cannot be read
    count: int  # crops the frame holds: how many answers it needs
    error: str = ""  # why it cannot be read; "" when it can


def frame_from_flat(
    data, declared: int | None, size: int, max_crops: int, offset: int = 0
) -> FlatFrame:
    """Crops from a flat buffer of float32 values in (N, 3, S, S) order, after ``offset``
    values of padding (a MultiArray's ``data_offset``).

    ``declared`` is the count the sender states (a MultiArray's first dimension); without one
    it is the buffer's length over one crop's values.
    """
    values = _floats(data)[offset:]
    per_crop = CHANNELS * size * size
    inferred = len(values) // per_crop or (1 if len(values) else 0)
    count = int(declared) if declared else inferred
    if count > max_crops:
        # answered for the crops the buffer holds: a count stated far beyond them is no frame
        held = min(count, max(len(values) // per_crop, 1))
        return FlatFrame(None, held, f"{count} crops, more than max_crops {max_crops}")
    if len(values) != count * per_crop:
        return FlatFrame(
            None,
            count,
            f"{len(values)} values for {count} crops: expected {count * per_crop} "
            f"({count} x {CHANNELS} x {size} x {size}, float32)",
        )
    return FlatFrame(values.reshape(count, CHANNELS, size, size), count)


def frame_from_image(
    height: int,
    width: int,
    encoding: str,
    big_endian: bool,
    step: int,
    data,
    size: int,
    max_crops: int,
) -> FlatFrame:
    """Crops from an image of one float32 channel whose rows stack them: width S, height
    N x 3 x S (crop after crop, channel after channel)."""
    rows = CHANNELS * size
    count = height // rows if height >= rows else 1
    if count > max_crops:  # answered for the crops its data could hold: no absurd allocation
        count = min(count, max(len(data) // (4 * size * rows), 1))
    if encoding != FLOAT_ENCODING or width != size or step != 4 * size or height % rows:
        return FlatFrame(
            None,
            count,
            f"image {width}x{height} {encoding!r} step {step}: expected encoding "
            f"{FLOAT_ENCODING!r}, width {size}, step {4 * size} and a height that is a "
            f"multiple of {rows} (N crops x {CHANNELS} channels x {size} rows)",
        )
    if len(data) != height * step:
        return FlatFrame(None, count, f"image data of {len(data)} bytes: {height} rows of {step}")
    values = _floats(data)
    if big_endian:
        values = values.byteswap()
    return frame_from_flat(values, count, size, max_crops)


def _floats(data) -> np.ndarray:
    """A flat float32 view of a buffer (bytes, array.array('f')), or a copy of a sequence."""
    typecode = getattr(data, "typecode", None)  # array.array, as rclpy fills a message
    if typecode == "f":
        return np.frombuffer(data, dtype=np.float32)
    if isinstance(data, bytes | bytearray | memoryview) or typecode == "B":
        raw = np.frombuffer(data, dtype=np.uint8)
        return raw[: len(raw) - len(raw) % 4].view(np.float32)
    return np.asarray(data, dtype=np.float32).ravel()
