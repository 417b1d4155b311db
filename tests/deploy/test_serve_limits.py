"""The server sheds load instead of falling over: bounded in-flight work answered 503 with
Retry-After, a bearer token when asked, no /docs unless asked, disconnected clients' work
skipped, small requests not held up behind large ones, and metrics that say why."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from pitguard.deploy.batching import MicroBatcher
from pitguard.deploy.predict import Prediction, Predictor
from pitguard.deploy.serve import create_app
from pitguard.deploy.server_metrics import Metrics


@pytest.fixture(scope="module")
def png(trained_run) -> bytes:
    return next((trained_run.parent / "crops").rglob("*.png")).read_bytes()


def _files(png: bytes, n: int = 1):
    return [("files", (f"c{i}.png", png, "image/png")) for i in range(n)]


def _slow(monkeypatch, seconds: float, calls: list) -> None:
    real = Predictor.predict_uint8

    def slow(self, crops):
        calls.append(len(crops))
        time.sleep(seconds)
        return real(self, crops)

    monkeypatch.setattr(Predictor, "predict_uint8", slow)


def test_work_beyond_the_in_flight_limit_gets_503_with_retry_after(bundle, png, monkeypatch):
    _slow(monkeypatch, 0.3, [])
    app = create_app(bundle, max_in_flight=1, max_wait_ms=0)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answers = await asyncio.gather(
                *(client.post("/v1/classify", files=_files(png)) for _ in range(3))
            )
            text = (await client.get("/metrics")).text
        return answers, text

    answers, text = asyncio.run(go())
    assert sorted(a.status_code for a in answers) == [200, 503, 503]
    busy = [a for a in answers if a.status_code == 503]
    assert all(a.headers["retry-after"] == "1" and "busy" in a.json()["error"] for a in busy)
    assert 'pitguard_errors_total{reason="busy"} 2' in text and "pitguard_in_flight 0" in text


def test_a_token_guards_classify_and_metrics_but_not_health(bundle, png):
    token = "s3cret-token-of-some-length"
    with TestClient(create_app(bundle, token=token)) as client:
        no = client.post("/v1/classify", files=_files(png))
        assert no.status_code == 401 and no.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/v1/classify", files=_files(png), headers=wrong).status_code == 401
        good = {"Authorization": f"Bearer {token}"}
        assert client.post("/v1/classify", files=_files(png), headers=good).status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=good).status_code == 200
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("docs", [False, True])
def test_docs_are_served_only_when_asked(bundle, docs):
    with TestClient(create_app(bundle, docs=docs)) as client:
        expected = 200 if docs else 404
        assert client.get("/docs").status_code == expected
        assert client.get("/openapi.json").status_code == expected


def test_a_client_that_went_away_gets_no_model_work(bundle, png, monkeypatch):
    calls: list[int] = []
    _slow(monkeypatch, 0.0, calls)
    app = create_app(bundle, max_wait_ms=50)
    request = httpx.Request("POST", "http://t/v1/classify", files=_files(png))
    body = request.read()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/classify",
        "raw_path": b"/v1/classify",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    sent: list[dict] = []
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive():
        return next(messages, {"type": "http.disconnect"})

    async def send(message):
        sent.append(message)

    async def go():
        await app(scope, receive, send)
        await asyncio.sleep(0.2)  # the collector would have run the batch by now

    asyncio.run(go())
    assert calls == []
    assert sent[0]["status"] == 499
    assert 'pitguard_errors_total{reason="client_gone"} 1' in app.state.metrics.render()


class _Recorder:
    """A predictor that records each model call's crops."""

    def __init__(self):
        self.calls: list[np.ndarray] = []

    def predict_uint8(self, crops):
        self.calls.append(crops[:, 0, 0, 0].copy())
        time.sleep(0.05)
        n = len(crops)
        return Prediction(["clean"] * n, np.zeros(n, np.float32), ["clean"] * n, [""] * n)


def test_small_requests_are_not_held_up_behind_a_large_one():
    recorder = _Recorder()
    batcher = MicroBatcher(recorder, max_batch=4, max_wait_s=0.0, metrics=Metrics())  # type: ignore[arg-type]
    big = np.ones((16, 3, 2, 2), np.uint8)
    small = np.full((2, 3, 2, 2), 2, np.uint8)

    async def go():
        first = asyncio.ensure_future(batcher.classify(big))
        await asyncio.sleep(0.01)  # the large request is queued first
        second = asyncio.ensure_future(batcher.classify(small))
        await asyncio.gather(first, second)
        await batcher.stop()

    asyncio.run(go())
    order = [int(c[0]) for c in recorder.calls]
    assert sorted(len(c) for c in recorder.calls) == [2, 4, 4, 4, 4]
    assert order.index(2) <= 1  # second model call at the latest, not after all of the large one


class _PerCrop:
    """A model that takes a fixed time per crop."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def predict_uint8(self, crops):
        time.sleep(self.seconds * len(crops))
        n = len(crops)
        return Prediction(["clean"] * n, np.zeros(n, np.float32), ["clean"] * n, [""] * n)


def test_the_expected_wait_counts_the_running_call_and_queued_first_pieces():
    batcher = MicroBatcher(_PerCrop(0.05), max_batch=4, max_wait_s=0.0, metrics=Metrics())  # type: ignore[arg-type]

    def crops(n: int) -> np.ndarray:
        return np.ones((n, 3, 2, 2), np.uint8)

    async def go():
        untimed = batcher.expected_wait()
        await batcher.classify(crops(4))  # the first call (warm-up) is not counted
        await batcher.classify(crops(4))  # this one times the model
        per_crop = batcher.seconds_per_crop
        big = asyncio.ensure_future(batcher.classify(crops(12)))
        await asyncio.sleep(0.02)  # its first 4 crops run (0.2 s); its later pieces wait
        behind_big = batcher.expected_wait()
        small = asyncio.ensure_future(batcher.classify(crops(2)))
        await asyncio.sleep(0.02)  # queued as a first piece, ahead of the big one's later ones
        behind_both = batcher.expected_wait()
        await asyncio.gather(big, small)
        idle = batcher.expected_wait()
        await batcher.stop()
        return untimed, per_crop, behind_big, behind_both, idle

    untimed, per_crop, behind_big, behind_both, idle = asyncio.run(go())
    assert untimed == 0.0 and idle == 0.0
    assert per_crop is not None and per_crop >= 0.05
    assert behind_big == pytest.approx(4 * per_crop)  # the running call, not the 8 queued later
    assert behind_both == pytest.approx(6 * per_crop)


def test_a_request_that_would_wait_too_long_gets_503(bundle, png):
    app = create_app(bundle, max_queue_ms=10)
    with TestClient(app) as client:
        assert client.post("/v1/classify", files=_files(png)).status_code == 200
        app.state.batcher.expected_wait = lambda: 0.5
        busy = client.post("/v1/classify", files=_files(png))
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "500 ms of model work queued, over the 10 ms limit" in busy.json()["error"]
        assert 'pitguard_errors_total{reason="busy"} 1' in client.get("/metrics").text
        del app.state.batcher.expected_wait  # the real estimate again
        assert client.post("/v1/classify", files=_files(png)).status_code == 200


def test_the_defaults_keep_cpu_model_calls_and_in_flight_work_small(bundle):
    from pitguard.core.devices import usable_cores

    app = create_app(bundle)
    if app.state.predictor.device == "cuda":
        assert (app.state.batcher.max_batch, app.state.max_in_flight) == (64, 32)
    else:
        assert app.state.batcher.max_batch == 4
        assert app.state.max_in_flight == 2 * usable_cores()
    explicit = create_app(bundle, max_batch=64, max_in_flight=32)
    assert (explicit.state.batcher.max_batch, explicit.state.max_in_flight) == (64, 32)


def test_the_server_flags_are_in_help(capsys):
    from pitguard.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    flags = (
        "--max-in-flight",
        "--max-connections",
        "--max-crops",
        "--max-request-mb",
        "--header-timeout",
        "--max-queue-ms",
    )
    for flag in (*flags, "--token-file", "--docs"):
        assert flag in out
    assert "exposes" in out and "TLS" in out


def test_a_short_token_is_refused(bundle, tmp_path: Path, capsys):
    from pitguard.cli import main

    (tmp_path / "token").write_text("short\n")
    assert main(["serve", str(bundle), "--token-file", str(tmp_path / "token")]) == 2
    assert "16 or more" in capsys.readouterr().err


def test_a_nonpositive_header_timeout_is_refused(bundle, capsys):
    from pitguard.cli import main

    assert main(["serve", str(bundle), "--header-timeout", "0"]) == 2
    assert "--header-timeout 0.0: give a positive number of seconds" in capsys.readouterr().err


@pytest.mark.slow
def test_a_connection_that_sends_its_headers_too_slowly_is_closed(bundle, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from tests.deploy.test_serve import _free_port, _wait_healthy

    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "pitguard.cli", "serve", str(bundle), "--port", str(port)]
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [*cmd, "--header-timeout", "1"], stdout=fh, stderr=subprocess.STDOUT, env=os.environ
        )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        opened = time.monotonic()
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        prompt = socket.create_connection(("127.0.0.1", port), timeout=10)
        prompt.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = prompt.recv(4096)
        while not answer.endswith(b"}"):  # the JSON body may come in a second packet
            answer += prompt.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        assert slow.recv(1024) == b""  # closed by the server, with no answer
        assert 0.9 < time.monotonic() - opened < 6
        # a kept-alive connection's next request gets the same deadline
        prompt.sendall(b"GET /healthz HTTP/1.1\r\n")
        start = time.monotonic()
        assert prompt.recv(1024) == b"" and time.monotonic() - start < 5
        slow.close()
        prompt.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _start_server(bundle, tmp_path, *flags):
    import os
    import subprocess
    import sys

    from tests.deploy.test_serve import _free_port, _wait_healthy

    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "pitguard.cli", "serve", str(bundle), "--port", str(port)]
    with log.open("w") as fh:
        proc = subprocess.Popen([*cmd, *flags], stdout=fh, stderr=subprocess.STDOUT, env=os.environ)
    _wait_healthy(f"http://127.0.0.1:{port}", proc, log)
    return proc, port, log


def _stalled_upload(port: int, sent: bytes = b""):
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        b"Content-Length: 100000\r\n\r\n" + sent
    )
    return sock


@pytest.mark.slow
def test_stalled_and_trickling_uploads_hold_no_model_slot(bundle, png, tmp_path):
    """Eight uploads that send their headers and then nothing (or a byte now and then) leave
    the good clients answered, and are themselves ended with 408 once too slow."""
    proc, port, log = _start_server(
        bundle, tmp_path, "--max-in-flight", "4", "--body-timeout", "3", "--min-body-rate", "1"
    )
    try:
        stalled = [_stalled_upload(port) for _ in range(6)]
        trickling = [_stalled_upload(port, b"\x93") for _ in range(2)]
        time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/v1/classify"
        with httpx.Client(timeout=10) as client:
            answers = [client.post(url, files=_files(png)).status_code for _ in range(8)]
        assert answers == [200] * 8
        for sock in trickling:
            sock.sendall(b"N")  # a byte, far below the rate
        started = time.monotonic()
        for sock in stalled + trickling:
            answer = sock.recv(4096)
            while answer and not answer.endswith(b"}"):  # the JSON may come in a second packet
                more = sock.recv(4096)
                if not more:
                    break
                answer += more
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"request body too slow" in answer
            sock.close()
        assert time.monotonic() - started < 10
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'pitguard_errors_total{reason="too_slow"} 8' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_a_client_gone_mid_upload_is_logged_as_gone_not_a_failure(bundle, tmp_path):
    proc, port, log = _start_server(bundle, tmp_path)
    try:
        sock = _stalled_upload(port, b"\x93NUMPY")
        time.sleep(0.3)
        sock.close()
        deadline = time.monotonic() + 10
        metrics = ""
        while time.monotonic() < deadline and 'reason="client_gone"' not in metrics:
            time.sleep(0.2)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'pitguard_errors_total{reason="client_gone"} 1' in metrics
        assert 'reason="internal"' not in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text and "went away after" in text
