"""The HTTP service: answers, error messages, metrics, and the real server under concurrent load."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pitguard.deploy.predict import Predictor
from pitguard.deploy.serve import create_app
from pitguard.runtime.policy import ROUTES

# `bundle` (tests/conftest.py) is the session's calibrated pitguard_tiny exported with ONNX and
# INT8; its crops are the 600 synthetic ones `trained_run` was trained on.


@pytest.fixture(scope="module")
def pngs(trained_run) -> list[Path]:
    return sorted((trained_run.parent / "crops").rglob("*.png"))


@pytest.fixture(scope="module")
def predictor(bundle) -> Predictor:
    return Predictor(bundle)


@pytest.fixture(scope="module")
def client(bundle):
    with TestClient(create_app(bundle, max_batch=4)) as c:
        yield c


def png_files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def nhwc(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


NPY = {"content-type": "application/x-npy"}


def assert_matches(body: dict, expected, names: list[str | None]) -> None:
    assert body["n"] == len(expected) == len(body["results"])
    assert [r["index"] for r in body["results"]] == list(range(len(expected)))
    assert [r["name"] for r in body["results"]] == names
    assert [r["route"] for r in body["results"]] == expected.routes
    assert [r["label"] for r in body["results"]] == expected.labels
    got = np.array([r["p_pit"] for r in body["results"]])
    np.testing.assert_allclose(got, expected.p_pit, rtol=0, atol=1e-6)


def parse_metrics(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values


# --------------------------------------------------------------------------- in-process


def test_png_batch_matches_the_predictor(client, pngs, predictor):
    chosen = pngs[:3] + pngs[-3:]  # both classes; 6 crops > max_batch 4, so served in 2 chunks
    r = client.post("/v1/classify", files=png_files(chosen))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "pitguard_tiny"
    assert_matches(body, predictor.predict(chosen), [p.name for p in chosen])


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "multipart"])
def test_npy_upload_in_both_layouts(client, pngs, predictor, layout):
    arr = nhwc(pngs[10:13])
    expected = predictor.predict_uint8(arr.transpose(0, 3, 1, 2).copy())
    if layout == "multipart":
        r = client.post("/v1/classify", files=[("files", ("crops.npy", npy_bytes(arr), "x"))])
    else:
        sent = arr if layout == "nhwc" else arr.transpose(0, 3, 1, 2).copy()
        r = client.post("/v1/classify", content=npy_bytes(sent), headers=NPY)
    assert r.status_code == 200, r.text
    assert_matches(r.json(), expected, [None] * 3)


def test_a_request_larger_than_max_batch_is_served_whole_in_chunks(client, pngs, predictor):
    arr = nhwc(pngs[:10])
    before = parse_metrics(client.get("/metrics").text)["pitguard_batches_total"]
    r = client.post(
        "/v1/classify", content=npy_bytes(arr), headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 200, r.text
    assert_matches(r.json(), predictor.predict_uint8(arr.transpose(0, 3, 1, 2).copy()), [None] * 10)
    after = parse_metrics(client.get("/metrics").text)["pitguard_batches_total"]
    assert after - before == 3  # 4 + 4 + 2 with max_batch=4


GOOD = np.zeros((128, 128, 3), np.uint8)
GOOD[40:90, 30:100] = (150, 20, 40)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(GOOD).save(buf, format="JPEG")
    return buf.getvalue()


PNG_PART = ("files", ("good.png", png_bytes(GOOD), "image/png"))


def test_a_jpeg_crop_is_read_as_predict_reads_it(client, bundle):
    answer = client.post("/v1/classify", files=[("files", ("photo.jpg", _jpeg(), "image/jpeg"))])
    assert answer.status_code == 200
    assert answer.json()["results"][0]["route"] in ("clean", "maybe", "pit")


def _multipart_without_files() -> dict:
    body = b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--xyz--\r\n'
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=xyz"}}


MALFORMED = {
    "text file": (
        {"files": [PNG_PART, ("files", ("notes.txt", b"hello there", "text/plain"))]},
        400,
        "file 'notes.txt': cannot decode: not an image file",
    ),
    "truncated png": (
        {"files": [("files", ("cut.png", png_bytes(GOOD)[:200], "image/png"))]},
        400,
        "file 'cut.png': cannot decode",
    ),
    "wrong size png": (
        {"files": [("files", ("small.png", png_bytes(GOOD[:64, :64]), "image/png"))]},
        400,
        "file 'small.png': size 64x64, expected 128x128",
    ),
    "gray png": (
        {"files": [("files", ("gray.png", png_bytes(GOOD, "L"), "image/png"))]},
        400,
        "file 'gray.png': mode L, expected RGB",
    ),
    "empty png": (
        {"files": [("files", ("void.png", b"", "image/png"))]},
        400,
        "file 'void.png': empty file (0 bytes)",
    ),
    "wrong field name": (
        {"files": [("image", ("good.png", png_bytes(GOOD), "image/png"))]},
        400,
        "name the field 'files'",
    ),
    "no files": (_multipart_without_files(), 400, "no files in the form"),
    "no boundary": (
        {"content": b"abc", "headers": {"content-type": "multipart/form-data"}},
        400,
        "malformed multipart body",
    ),
    "png and npy mixed": (
        {"files": [PNG_PART, ("files", ("x.npy", npy_bytes(GOOD[None]), "x"))]},
        400,
        "send either PNG files or a single .npy file",
    ),
    "empty body": ({"content": b"", "headers": NPY}, 400, "empty request body"),
    "not npy": ({"content": b"\x89PNG not numpy", "headers": NPY}, 400, "not a readable .npy"),
    "pickled npy": (
        {"content": npy_bytes(np.array([{"a": 1}], dtype=object), True), "headers": NPY},
        400,
        "holds Python objects (pickled)",
    ),
    "float npy": (
        {"content": npy_bytes(GOOD[None].astype(np.float32)), "headers": NPY},
        400,
        "dtype float32, expected uint8",
    ),
    "npy wrong size": (
        {"content": npy_bytes(np.zeros((2, 64, 64, 3), np.uint8)), "headers": NPY},
        400,
        "expected 128x128 crops, got 64x64",
    ),
    "npy two channels": (
        {"content": npy_bytes(np.zeros((2, 128, 128, 2), np.uint8)), "headers": NPY},
        400,
        "expected 3 channels",
    ),
    "npy 2-d": (
        {"content": npy_bytes(np.zeros((128, 128), np.uint8)), "headers": NPY},
        400,
        "has shape (128, 128), expected (N, H, W, 3) or (N, 3, H, W)",
    ),
    "npy no crops": (
        {"content": npy_bytes(np.zeros((0, 128, 128, 3), np.uint8)), "headers": NPY},
        400,
        "holds no crops",
    ),
    "truncated npy": (
        {"content": npy_bytes(GOOD[None])[:-100], "headers": NPY},
        400,
        "is truncated or padded",
    ),
    "text content type": (
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported Content-Type 'text/plain'",
    ),
    "no content type": ({"content": b"hello"}, 415, "missing Content-Type"),
    "form urlencoded": ({"data": {"a": "b"}}, 415, "application/x-www-form-urlencoded"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_a_clear_error_and_the_server_keeps_serving(client, case):
    kwargs, status, message = MALFORMED[case]
    r = client.post("/v1/classify", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    ok = client.post("/v1/classify", files=[PNG_PART])
    assert ok.status_code == 200 and ok.json()["n"] == 1


def test_bounds_on_bytes_and_crops_give_413(bundle):
    app = create_app(bundle, max_request_bytes=100_000, max_crops=3)
    with TestClient(app) as c:
        big = npy_bytes(np.zeros((3, 128, 128, 3), np.uint8))  # 147 KB, 3 crops is allowed
        r = c.post("/v1/classify", content=big, headers=NPY)
        assert r.status_code == 413
        assert "the limit is 100000" in r.json()["error"]

        # Without Content-Length (chunked), the bytes are counted as they arrive.
        r = c.post("/v1/classify", content=iter([big[:60_000], big[60_000:]]), headers=NPY)
        assert r.status_code == 413
        assert "over" in r.json()["error"] and "the limit is 100000" in r.json()["error"]

        r = c.post("/v1/classify", files=[PNG_PART] * 4)
        assert r.status_code == 413
        assert "the limit is 3" in r.json()["error"]

        tiny = npy_bytes(np.zeros((4, 8, 8, 3), np.uint8))
        r = c.post("/v1/classify", content=tiny, headers=NPY)
        assert r.status_code == 413
        assert "4 crops in one request, the limit is 3" in r.json()["error"]

        assert c.post("/v1/classify", files=[PNG_PART] * 3).status_code == 200


def test_unknown_path_is_a_json_error(client):
    r = client.get("/v2/classify")
    assert r.status_code == 404 and "error" in r.json()


def test_healthz(client, predictor):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["model"] == "pitguard_tiny"
    assert body["backend"] == "onnx"
    assert body["classes"] == list(predictor.classes)


def test_metrics_count_requests_crops_routes_and_batches(client):
    def scrape() -> dict[str, float]:
        r = client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE pitguard_request_latency_seconds histogram" in r.text
        return parse_metrics(r.text)

    before = scrape()
    assert client.post("/v1/classify", files=[PNG_PART] * 3).status_code == 200
    assert client.post("/v1/classify", content=b"x", headers=NPY).status_code == 400
    after = scrape()

    def delta(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert delta('pitguard_requests_total{status="200"}') == 1
    assert delta('pitguard_requests_total{status="400"}') == 1
    assert delta("pitguard_crops_total") == 3
    assert sum(delta(f'pitguard_routes_total{{route="{r}"}}') for r in ROUTES) == 3
    assert delta("pitguard_batches_total") == 1
    assert delta("pitguard_request_latency_seconds_count") == 2
    assert delta("pitguard_request_latency_seconds_sum") > 0
    buckets = [
        v for k, v in after.items() if k.startswith("pitguard_request_latency_seconds_bucket")
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert (
        after['pitguard_request_latency_seconds_bucket{le="+Inf"}']
        == after["pitguard_request_latency_seconds_count"]
    )


def test_cli_serve_verb_defaults():
    from pitguard.cli import build_parser

    args = build_parser().parse_args(["serve", "bundles/x"])
    assert (args.bundle, args.host, args.port, args.max_batch) == (
        "bundles/x",
        "127.0.0.1",
        8000,
        None,  # by device: 64 on a GPU, 4 on a CPU
    )
    assert (args.max_wait_ms, args.backend, args.threads) == (5.0, "auto", 0)
    assert args.max_queue_ms == 100.0


# --------------------------------------------------------------------------- real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not healthy after {limit_s} s:\n{log.read_text()}")


@pytest.mark.slow
def test_real_server_under_concurrent_load(bundle, pngs, predictor, tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Every request is to be taken: room for all 8 clients at once, whatever the core count,
    # and no bound on queued model work, which a slow or busy machine would otherwise meet
    # (both refusals have their own tests in test_serve_limits.py).
    cmd = [sys.executable, "-m", "pitguard.cli", "serve", str(bundle), "--port", str(port)]
    cmd += ["--max-in-flight", "8", "--max-queue-ms", "60000"]

    pool = pngs[::50]  # 12 of the 600 crops, 6 of each class
    pool_png = [p.read_bytes() for p in pool]
    pool_arr = nhwc(pool)
    rng = np.random.default_rng(0)
    threads, per_thread = 8, 25
    plans = []  # (thread, request, crop indices, kind)
    for t in range(threads):
        for i in range(per_thread):
            idx = rng.choice(len(pool), size=int(rng.integers(1, 5)), replace=False)
            plans.append((t, i, [int(j) for j in idx], ("png", "nhwc", "nchw")[(t + i) % 3]))
    expected = {
        (t, i): predictor.predict_uint8(pool_arr[idx].transpose(0, 3, 1, 2).copy())
        for t, i, idx, _ in plans
    }

    def send(http: httpx.Client, t: int, i: int, idx: list[int], kind: str) -> httpx.Response:
        if kind == "png":
            # Names unique per request: a response given to the wrong request would show.
            files = [
                ("files", (f"t{t}-r{i}-c{k}.png", pool_png[j], "image/png"))
                for k, j in enumerate(idx)
            ]
            return http.post(f"{base}/v1/classify", files=files)
        arr = pool_arr[idx]
        arr = arr if kind == "nhwc" else arr.transpose(0, 3, 1, 2).copy()
        return http.post(f"{base}/v1/classify", content=npy_bytes(arr), headers=NPY)

    def client_thread(t: int) -> list[tuple[tuple, int, dict]]:
        out = []
        with httpx.Client(timeout=30) as http:
            for plan in plans[t * per_thread : (t + 1) * per_thread]:
                r = send(http, *plan)
                out.append((plan, r.status_code, r.json()))
        return out

    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(base, proc, log)
        start = time.monotonic()
        with ThreadPoolExecutor(threads) as ex:
            answers = [a for chunk in ex.map(client_thread, range(threads)) for a in chunk]
        elapsed = time.monotonic() - start

        assert len(answers) == threads * per_thread
        for (t, i, idx, kind), status, body in answers:
            assert status == 200, body
            names = [f"t{t}-r{i}-c{k}.png" for k in range(len(idx))] if kind == "png" else None
            assert_matches(body, expected[(t, i)], names or [None] * len(idx))

        metrics = parse_metrics(httpx.get(f"{base}/metrics", timeout=5).text)
        assert metrics['pitguard_requests_total{status="200"}'] >= len(plans)
        assert metrics["pitguard_crops_total"] == sum(len(p[2]) for p in plans)
        batches = metrics["pitguard_batches_total"]
        assert 0 < batches < len(plans), f"no micro-batching: {batches} batches"

        bad = httpx.post(
            f"{base}/v1/classify",
            files=[("files", ("oops.png", b"not a png at all", "image/png"))],
            timeout=5,
        )
        assert bad.status_code == 400 and "oops.png" in bad.json()["error"]
        health = httpx.get(f"{base}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        print(
            f"{len(plans)} requests in {elapsed:.2f} s, {int(batches)} batches, "
            f"{metrics['pitguard_crops_total']:.0f} crops"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert re.search(r"Uvicorn running on http://127\.0\.0\.1:\d+", log.read_text())
