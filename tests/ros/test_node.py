"""pitguard-node over real DDS: the line's frames in, the same codes as in-process out, every
malformed frame answered with maybe while the node lives on, and a clean exit on a signal."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from tests.ros.conftest import Listener, NodeProcess, crops_of, mixed_frame, node_command

pytest.importorskip("rclpy", reason="needs rclpy: make test-runtime installs the ROS 2 wheels")

from pitguard.ros.client import LineClient
from pitguard.runtime import LineStage
from pitguard.runtime.line import MAYBE_CODE

pytestmark = [pytest.mark.ros, pytest.mark.slow]

LINE_SAMPLE = Path(__file__).resolve().parents[3] / "shared/line_sample/crops_226.npy"
MAX_CROPS = 20  # the node under test refuses larger frames
TIMEOUT = 10.0  # seconds a test waits for an answer; the line's client waits far less


@pytest.fixture(scope="module")
def node(made, ros_env, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    cmd = node_command(
        made / "bundle", device="cpu", threads=1, max_crops=MAX_CROPS, summary_period=0.5
    )
    proc = NodeProcess(cmd, ros_env, log)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(node):
    c = LineClient(timeout=TIMEOUT)
    c.wait_for_node(30)
    yield c
    c.close()


@pytest.fixture(scope="module")
def listener(node, client, expected):
    """Listening once a frame sent after it started has come back to it (discovery done)."""
    lst = Listener()
    for attempt in range(50):
        client.classify(crops_of(expected, 1), frame_id=f"handshake {attempt}")
        if lst.wait_for(lambda: lst.results, timeout=0.2):
            break
    assert lst.results, "the listener never heard the node"
    yield lst
    lst.close()


@pytest.fixture(scope="module")
def in_process(made):
    return LineStage(made / "bundle", device="cpu", threads=1)


def good_frames(expected) -> dict[str, np.ndarray]:
    frames = {"16 crops": mixed_frame(expected, 16), "8 crops": crops_of(expected, 8, 16)}
    frames["1 crop"] = crops_of(expected, 1, 30)
    if LINE_SAMPLE.is_file():  # the line's own 2024 crops (three live channels)
        frames["line sample"] = np.load(LINE_SAMPLE)
    return frames


def test_good_frames_get_the_in_process_codes_in_order(node, client, in_process, expected):
    for name, crops in good_frames(expected).items():
        over_dds = client.classify(crops, frame_id=name)
        assert list(over_dds) == list(in_process(crops)), name
    # and in the order sent: one frame reversed gets its codes reversed
    crops = mixed_frame(expected, 16)
    forward, backward = client.classify(crops), client.classify(crops[::-1].copy())
    assert list(backward) == list(forward[::-1])
    assert len(set(forward.tolist())) > 1  # the synthetic frame holds more than one route


def malformed_frames(expected) -> list[tuple[str, np.ndarray, int | None, int]]:
    """(name, raw float32 values, stated count or None, crops the answer must cover)."""
    good = crops_of(expected, 4)
    nan_patch = crops_of(expected, 16)
    nan_patch[3, :, 40:60, 40:60] = np.nan
    inf = good.copy()
    inf[0, 0, 0, 0] = np.inf
    oversized = np.zeros((MAX_CROPS + 1, 3, 128, 128), np.float32)
    return [
        ("1,000 floats", np.zeros(1000, np.float32), None, 1),
        ("100x100 crops", np.full((2, 3, 100, 100), 0.5, np.float32), 2, 2),
        ("one NaN patch", nan_patch, 16, 16),
        ("all NaN", np.full((4, 3, 128, 128), np.nan, np.float32), 4, 4),
        ("an inf", inf, 4, 4),
        ("values 0-255", good * 255, 4, 4),
        ("empty, 3 stated", np.zeros(0, np.float32), 3, 3),
        ("fewer values than stated", good, 5, 5),
        ("oversized", oversized, MAX_CROPS + 1, MAX_CROPS + 1),
    ]


def test_malformed_frames_get_maybe_and_the_node_goes_on(node, client, listener, expected):
    check = crops_of(expected, 16)
    want = client.classify(check)
    for name, values, stated, count in malformed_frames(expected):
        codes = client.call(values.reshape(-1), stated, frame_id=name)
        assert codes is not None, f"{name}: no answer"
        assert list(codes) == [MAYBE_CODE] * count, name
        assert node.proc.poll() is None, f"{name}: the node died:\n{node.text()}"
        assert list(client.classify(check)) == list(want), f"after {name}"
        record = listener.wait_for(
            lambda name=name: [r for r in listener.results if r["frame_id"] == name]
        )
        assert record and record[0]["error"], f"{name}: no reason published"
        assert record[0]["codes"] == [MAYBE_CODE] * count
    log = node.text()
    assert "Traceback" not in log
    assert "1,000 floats: 1 crops sent to review unscored: 1000 values" in log


def test_a_frame_without_cherries_gets_no_codes(node, client):
    assert list(client.call(np.zeros(0, np.float32), 0, "no cherries")) == []


def test_image_frames_keep_their_header(node, listener, in_process, expected):
    from sensor_msgs.msg import Image

    crops = crops_of(expected, 8)
    msg = Image(height=8 * 3 * 128, width=128, encoding="32FC1", is_bigendian=0, step=512)
    msg.data = crops.tobytes()
    msg.header.frame_id = "camera 42"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000, 5
    listener.wait_for(lambda: listener.images.get_subscription_count() > 0)
    listener.images.publish(msg)
    record = listener.wait_for(
        lambda: [r for r in listener.results if r["frame_id"] == "camera 42"]
    )
    assert record, "no result for the image frame"
    assert record[0]["stamp"] == {"sec": 1_700_000_000, "nanosec": 5}
    assert record[0]["codes"] == list(in_process(crops))
    assert record[0]["error"] == ""
    assert len(record[0]["p_pit"]) == 8 and all(0 <= p <= 1 for p in record[0]["p_pit"])
    codes = listener.wait_for(lambda: [c for label, c in listener.codes if label == "camera 42"])
    assert codes and codes[0] == record[0]["codes"]


def test_diagnostics_summarise_the_recent_frames(node, client, listener, expected):
    client.classify(crops_of(expected, 4))

    def summary():
        for arr in reversed(listener.diagnostics):
            for status in arr.status:
                values = {kv.key: kv.value for kv in status.values}
                if status.name == "pitguard: line stage" and int(values["frames"]) > 0:
                    return values
        return None

    values = listener.wait_for(summary)
    assert values is not None, "no summary on /diagnostics"
    assert {"maybe_rate", "guard_rate", "p50_ms", "p99_ms"} <= set(values)
    assert 0 <= float(values["maybe_rate"]) <= 1 and float(values["p99_ms"]) > 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_it_with_exit_0_and_no_traceback(made, ros_env, tmp_path, sig):
    proc = NodeProcess(node_command(made / "bundle", device="cpu"), ros_env, tmp_path / "n.log")
    proc.wait_ready()
    assert proc.stop(sig) == 0
    assert "Traceback" not in proc.text()


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"device": "cuda"}, "device cuda"),
        ({"threads": -1}, "threads -1"),
        ({"graph": "onnx-int8"}, "has no onnx-int8 graph"),
    ],
)
def test_what_cannot_start_stops_at_start_with_one_error(made, ros_env, tmp_path, params, named):
    proc = NodeProcess(node_command(made / "bundle", **params), ros_env, tmp_path / "n.log")
    code = proc.proc.wait(60)
    proc.stop()
    text = proc.text()
    assert code == 2, text
    errors = [line for line in text.splitlines() if "cannot start" in line]
    assert len(errors) == 1 and named in errors[0], text
    assert "Traceback" not in text and "ready in" not in text


def test_a_missing_bundle_names_the_folder(ros_env, tmp_path):
    proc = NodeProcess(node_command(tmp_path / "nowhere"), ros_env, tmp_path / "n.log")
    assert proc.proc.wait(60) == 2
    proc.stop()
    assert f"{tmp_path / 'nowhere'}: no bundle.json" in proc.text()


def test_the_ready_line_names_the_self_check_and_what_proves_the_bundle(node):
    ready = next(line for line in node.text().splitlines() if "ready in" in line)
    assert (
        "self-check: " in ready and "check crops on CPUExecutionProvider: 0 routes differ" in ready
    )
    assert "integrity: sha256 digests only" in ready and "guarantee: pits routed clean <=" in ready


def test_a_trusted_key_refuses_an_unsigned_bundle_and_starts_a_signed_one(made, ros_env, tmp_path):
    import shutil

    from pitguard.runtime.trust import keygen, sign_bundle

    _, public = keygen(tmp_path / "keys")
    unsigned = NodeProcess(
        node_command(made / "bundle", trust=public), ros_env, tmp_path / "unsigned.log"
    )
    assert unsigned.proc.wait(60) == 2
    unsigned.stop()
    assert "unsigned (no bundle.sig)" in unsigned.text()
    signed = Path(shutil.copytree(made / "bundle", tmp_path / "signed"))
    key_id = sign_bundle(signed, tmp_path / "keys" / "signing.key")
    proc = NodeProcess(node_command(signed, trust=public), ros_env, tmp_path / "signed.log")
    proc.wait_ready()
    assert proc.stop() == 0
    assert f"integrity: signed by key {key_id}" in proc.text()
