import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pitguard.bench import bench
from pitguard.calibrate import calibrate_run, load_policy
from pitguard.cli import main
from pitguard.errors import PitguardError
from pitguard.evaluate import evaluate_run
from pitguard.export import export_run
from pitguard.report import _pick_latency, section_id, write_report
from tests.conftest import train_tiny

SECTION_IDS = ["table", "latency-accuracy", "run-a", "run-b"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two tiny runs on one split: a calibrated, evaluated and benched; b evaluated only."""
    root = tmp_path_factory.mktemp("report")
    for name, seed in (("a", 0), ("b", 1)):
        train_tiny(root, f"runs/{name}", count=600, sets=["train.epochs=2", f"train.seed={seed}"])
    a, b = root / "runs" / "a", root / "runs" / "b"
    calibrate_run(a, max_pit_miss=0.05, confidence=0.9)
    evaluate_run(a, policy=load_policy(a), n_boot=200)
    evaluate_run(b, n_boot=200)
    export_run(a, root / "bundles" / "a")
    result = bench(
        [str(root / "bundles" / "a")],
        batch_sizes=(1, 32),
        backends=("eager",),
        threads=1,
        warmup=1,
        min_runs=3,
        min_seconds=0.05,
    )
    (a / "bench.json").write_text(json.dumps(result, indent=2))
    return root / "runs"


@pytest.fixture(scope="module")
def report(runs) -> tuple[dict, Path]:
    out = runs.parent / "report"
    return write_report([runs], out), out


def _metrics(run: Path) -> dict:
    (path,) = run.glob("eval/*/metrics.json")
    return json.loads(path.read_text())


def test_numbers_equal_the_runs_own_files(runs, report):
    _, out = report
    records = {r["run"]: r for r in json.loads((out / "experiments.json").read_text())["runs"]}
    assert set(records) == {"a", "b"}
    for name in ("a", "b"):
        rec, metrics = records[name], _metrics(runs / name)
        for key in (
            "accuracy",
            "accuracy_ci",
            "macro_f1",
            "macro_f1_ci",
            "pit_recall",
            "pit_recall_ci",
            "data",
            "n",
        ):
            assert rec["test"][key] == metrics[key], (name, key)
        assert rec["test"]["part"] == "test" and metrics["data"].endswith("[test]")
        assert rec["architecture"] == "pitguard_tiny" and rec["recipe"] == "cpu-fast"
        assert rec["size_bytes"] == (runs / name / "model.safetensors").stat().st_size
        assert rec["parameters"] > 1000
        assert rec["figures"]["confusion_matrix"]["data"] == metrics["data"]

    policy = json.loads((runs / "a" / "policy.json").read_text())
    measured = _metrics(runs / "a")["policy"]
    a = records["a"]
    assert a["calibration"]["guarantee"]["max_pit_miss"] == policy["guarantee"]["max_pit_miss"]
    assert a["calibration"]["guarantee"]["confidence"] == policy["guarantee"]["confidence"]
    for key in ("pit_miss_rate", "pit_miss_ci", "pit_miss_upper", "maybe_rate", "maybe_ci"):
        assert a["policy_test"][key] == measured[key], key

    bench_result = json.loads((runs / "a" / "bench.json").read_text())
    (row,) = [
        r for r in bench_result["results"] if r["backend"] == "eager" and r["batch_size"] == 32
    ]
    assert a["latency_cpu"]["ms_per_crop"] == row["ms_per_crop"]
    assert a["latency_cpu"]["backend"] == "eager" and "no onnx" in a["latency_cpu"]["choice"]

    b = records["b"]
    assert b["calibration"] is None and b["policy_test"] is None and b["latency_cpu"] is None
    assert any("pitguard calibrate" in n for n in b["notes"])
    assert any("pitguard bench" in n for n in b["notes"])


def test_baseline_comparison_is_paired(report):
    result, _ = report
    records = {r["run"]: r for r in result["runs"]}
    assert result["baseline"] == "a"
    assert records["a"]["vs_baseline"]["verdict"] == "baseline"
    vs = records["b"]["vs_baseline"]
    assert vs["paired"] is True and vs["baseline"] == "a"
    assert vs["verdict"] in ("within noise", "difference beyond noise")
    assert 0.0 <= vs["mcnemar_p"] <= 1.0 and vs["n"] == records["b"]["test"]["n"]


def test_markdown_has_one_row_per_run(report):
    _, out = report
    text = (out / "experiments.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| run | recipe | arch | params | size | accuracy [95% CI]")
    body = rows[1:]
    assert [r.split(" | ")[0] for r in body] == ["| a", "| b"]
    assert "n/a" in body[1]  # b: no calibration, no bench
    assert "baseline" in body[0] and re.search(r"noise", body[1])


def test_html_is_self_contained(report):
    _, out = report
    page = (out / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page, flags=re.IGNORECASE)
    assert refs
    assert not [r for r in refs if r.lower().startswith(("http://", "https://", "//"))]
    assert "<script" not in page.lower()
    images = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", page)
    # a: curves, confusion, ROC/PR, reliability, operating curve, crops; b: four; one scatter.
    assert len(images) == 6 + 4 + 1
    for src in images:
        assert src.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(__import__("base64").b64decode(images[-1].split(",", 1)[1])))
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in page


def test_missing_pieces_are_na_with_hints(runs, tmp_path):
    bare = tmp_path / "bare" / "c"
    bare.mkdir(parents=True)
    for name in ("model.json", "model.safetensors", "config.json"):
        shutil.copy(runs / "b" / name, bare / name)
    result = write_report([runs / "a", tmp_path / "bare"], tmp_path / "out")
    c = result["runs"][1]
    assert c["run"] == "c" and c["test"] is None and c["calibration"] is None
    assert c["vs_baseline"]["verdict"] == "not paired (different splits)"
    assert any(f"pitguard eval {bare}" in n for n in c["notes"])
    row = result["table"].splitlines()[3]
    assert row.startswith("| c |") and row.count("n/a") >= 8
    page = (tmp_path / "out" / "report.html").read_text()
    assert f'id="{section_id("c")}"' in page and "run pitguard eval" in page


def test_bad_path_names_the_path_and_the_fix(tmp_path, capsys):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(PitguardError, match=r"nothing_here: not a run folder and holds none"):
        write_report([empty], tmp_path / "out")
    with pytest.raises(PitguardError, match=r"missing: no such folder; give a run folder"):
        write_report([tmp_path / "missing"], tmp_path / "out")
    assert main(["report", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "pitguard train" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_prints_table_and_honours_baseline(runs, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(runs), "--out", str(out), "--baseline", "b"]) == 0
    printed = capsys.readouterr().out
    assert "| run | recipe |" in printed and str(out / "report.html") in printed
    data = json.loads((out / "experiments.json").read_text())
    assert data["baseline"] == "b"
    assert data["runs"][1]["vs_baseline"]["verdict"] == "baseline"


def test_latency_prefers_onnx_at_batch_32():
    def rec(backend, batch, ms):
        return {"target": "bundles/x", "backend": backend, "batch_size": batch, "ms_per_crop": ms}

    results = [rec("eager", 32, 1.0), rec("onnx", 1, 0.5), rec("onnx", 32, 0.25)]
    pick = _pick_latency({"results": results, "threads": 4, "hardware": {"cpu": "x"}})
    assert (pick["backend"], pick["batch_size"], pick["ms_per_crop"]) == ("onnx", 32, 0.25)
    pick = _pick_latency({"results": results[:2], "hardware": {}})
    assert (pick["backend"], pick["batch_size"]) == ("eager", 32)
    cuda_only = [{**rec("eager", 32, 0.1), "device": "cuda"}]
    assert _pick_latency({"results": cuda_only}) is None


@pytest.mark.slow
def test_report_renders_in_headless_chromium(request):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install playwright)"
    )
    # The runs are built only once the browser is known to be there.
    _, out = request.getfixturevalue("report")
    errors: list[str] = []
    external: list[str] = []

    def block(route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            external.append(url)
            route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", block)
            page.goto((out / "report.html").resolve().as_uri(), wait_until="load")
            for sid in SECTION_IDS:
                assert page.locator(f"#{sid}").count() == 1, sid
            loaded = page.evaluate(
                "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
            )
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert external == []
    assert loaded
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
    assert pixels.shape[0] > 900 and pixels.std() > 10
    packed = pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    assert len(np.unique(packed)) > 50  # distinct colours: text, plots and crops were drawn
