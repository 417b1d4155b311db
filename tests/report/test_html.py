import base64
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SECTION_IDS = ["table", "latency-accuracy", "run-a", "run-b"]


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
    assert Image.open(io.BytesIO(base64.b64decode(images[-1].split(",", 1)[1])))
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in page


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


def test_a_crossfitted_run_shows_its_label_review_and_plain_summary(crossfit_run, tmp_path):
    from pitguard.decision.calibrate import calibrate_run
    from pitguard.evaluate.run import evaluate_run
    from pitguard.models.runfolder import load_policy
    from pitguard.report import write_report
    from tests.conftest import copy_run

    run = copy_run(crossfit_run, tmp_path / "cf")
    record = calibrate_run(run, max_pit_miss=0.05, confidence=0.9)
    evaluate_run(run, n_boot=20, policy=load_policy(run), calibration=record)
    written = write_report([run], tmp_path / "report")
    page = Path(written["files"]["html"]).read_text()
    assert "label review:" in page and "contradict their label out of fold" in page
    assert "Of 10,000 crops like these" in page
    assert "(oof)" in page  # the calibration mode beside the bound


def test_the_report_tables_the_certified_review_rates_and_states_the_second_look(
    crossfit_run, tmp_path
):
    from pitguard.decision.calibrate import calibrate_run
    from pitguard.decision.certify import FALSE_REJECT_CAPS, PIT_MISS_BOUNDS
    from pitguard.report import write_report
    from tests.conftest import copy_run

    run = copy_run(crossfit_run, tmp_path / "cf")
    record = calibrate_run(
        run, max_pit_miss=0.05, confidence=0.9, max_false_reject=0.2, second_look="hflip"
    )
    page = Path(write_report([run], tmp_path / "report")["files"]["html"]).read_text()
    table = re.search(r'<table class="operating">.*?</table>', page).group(0)
    assert "on the run's out-of-fold scores" in table and "90% confidence" in table
    assert table.count("<tr>") == 1 + len(PIT_MISS_BOUNDS)
    assert table.count("<td>") == len(PIT_MISS_BOUNDS) * len(FALSE_REJECT_CAPS)
    five = [r for r in record["operating_table"] if r["max_pit_miss"] == 0.05]
    for row in five:  # each certified cell carries its review rate
        if row["maybe_rate"] is not None:
            assert f"{100 * row['maybe_rate']:.1f}%" in table
    look = record["second_look"]
    assert (
        f"the same network, hflip views, on the {100 * look['share']:.1f}% of calibration crops"
        in page
    )
