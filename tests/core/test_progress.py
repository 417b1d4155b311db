"""Tests for pitguard.core.progress: long steps report progress with rate and time left, in lines a
log can hold; short steps stay silent."""

import io

from pitguard.core.progress import Progress, eta_text


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_long_step_prints_plain_lines_with_rate_and_eta_in_a_log():
    clock, out = _Clock(), io.StringIO()
    progress = Progress(
        "decoding crops", 1000, "files", every_s=10, quiet_s=3, stream=out, clock=clock
    )
    for _ in range(100):  # 100 files a second for 10 s
        clock.now += 0.1
        progress.update(10)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "decoding crops: 300/1,000 files (30%), 100 files/s, eta 7 s"  # after 3 s
    assert lines[-1] == "decoding crops: 1,000/1,000 files (100%), 100 files/s, eta 0 s"
    assert len(lines) == 2  # one line per 10 s, and the last; nothing redrawn


def test_a_short_step_prints_nothing():
    clock, out = _Clock(), io.StringIO()
    progress = Progress("scoring crops", 100, stream=out, clock=clock)
    for _ in range(10):
        clock.now += 0.2
        progress.update(10)
    progress.close()
    assert out.getvalue() == ""


def test_times_left_read_as_seconds_then_minutes():
    assert eta_text(42) == "42 s" and eta_text(600) == "10 min"
