"""Frames read from a flat float32 buffer or a 32FC1 image, or refused with the count of crops
they must still be answered for."""

from __future__ import annotations

import array

import numpy as np

from pitguard.runtime.frames import frame_from_flat, frame_from_image

S = 128
PER_CROP = 3 * S * S


def crops(n: int) -> np.ndarray:
    return np.random.default_rng(n).random((n, 3, S, S), dtype=np.float32)


def test_a_stated_count_reads_the_crops_in_order():
    x = crops(3)
    frame = frame_from_flat(array.array("f", x.tobytes()), 3, S, 256)
    assert frame.error == "" and frame.count == 3
    assert np.array_equal(frame.crops, x)


def test_without_a_count_the_length_says_it():
    frame = frame_from_flat(crops(2).reshape(-1), None, S, 256)
    assert frame.count == 2 and frame.crops is not None


def test_a_data_offset_skips_the_padding():
    x = crops(1)
    frame = frame_from_flat(np.r_[np.zeros(5, np.float32), x.reshape(-1)], 1, S, 256, offset=5)
    assert np.array_equal(frame.crops, x)


def test_a_wrong_length_is_refused_with_the_count_to_answer():
    frame = frame_from_flat(np.zeros(1000, np.float32), None, S, 256)
    assert frame.crops is None and frame.count == 1
    assert "1000 values for 1 crops: expected 49152" in frame.error
    frame = frame_from_flat(np.zeros(2 * 3 * 100 * 100, np.float32), 2, S, 256)
    assert frame.count == 2 and "expected 98304 (2 x 3 x 128 x 128" in frame.error


def test_an_empty_frame_is_a_frame_without_cherries_unless_it_states_crops():
    assert frame_from_flat(array.array("f"), None, S, 256).count == 0
    assert frame_from_flat(array.array("f"), 0, S, 256).error == ""
    stated = frame_from_flat(array.array("f"), 3, S, 256)
    assert stated.count == 3 and "0 values for 3 crops" in stated.error


def test_an_oversized_frame_is_refused_before_it_is_read():
    frame = frame_from_flat(np.zeros(PER_CROP * 5, np.float32), 5, S, 4)
    assert frame.crops is None and frame.count == 5 and "more than max_crops 4" in frame.error


def test_an_image_stacks_crops_and_channels_as_rows():
    x = crops(2)
    frame = frame_from_image(2 * 3 * S, S, "32FC1", False, 4 * S, x.tobytes(), S, 256)
    assert frame.error == "" and np.array_equal(frame.crops, x)
    swapped = x.astype(">f4").tobytes()
    assert np.array_equal(
        frame_from_image(2 * 3 * S, S, "32FC1", True, 4 * S, swapped, S, 256).crops, x
    )


def test_an_image_of_another_kind_is_refused():
    frame = frame_from_image(3 * S, S, "mono8", False, S, bytes(3 * S * S), S, 256)
    assert frame.count == 1 and "expected encoding '32FC1'" in frame.error
    frame = frame_from_image(2 * 3 * S, S, "32FC1", False, 4 * S, bytes(10), S, 256)
    assert frame.count == 2 and "10 bytes" in frame.error


def test_an_absurd_stated_count_is_answered_for_what_the_buffer_holds():
    frame = frame_from_flat(np.zeros(1000, np.float32), 4_000_000_000, S, 256)
    assert frame.count == 1 and "4000000000 crops, more than max_crops 256" in frame.error


def test_an_image_stating_absurd_rows_is_answered_for_what_its_data_holds():
    frame = frame_from_image(4_000_000_000 // 384 * 384, S, "mono8", False, S, bytes(100), S, 256)
    assert frame.count == 1 and frame.crops is None
