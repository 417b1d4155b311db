"""The runs every report test reads: a copy of the session's calibrated run, and one more run
trained on the same split, so the two pair up for the baseline comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import copy_run


@pytest.fixture(scope="session")
def runs(calibrated_run, trained_run, tmp_path_factory) -> Path:
    """runs/a: calibrated, evaluated with its policy, exported and benched; runs/b: evaluated."""

    root = tmp_path_factory.mktemp("report")
    _make_runs(root, calibrated_run, trained_run)
    return root / "runs"


def _make_runs(root: Path, calibrated_run: Path, trained_run: Path) -> None:
    from pitguard.config import load_config
    from pitguard.deploy.bench import bench
    from pitguard.deploy.export import export_run
    from pitguard.evaluate.run import evaluate_run
    from pitguard.models.runfolder import load_policy
    from pitguard.train.loop import train

    a = copy_run(calibrated_run, root / "runs" / "a")
    evaluate_run(a, policy=load_policy(a), n_boot=200)
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

    sets = ["model.name=pitguard_tiny", "train.epochs=1", "train.threads=1", "train.max_minutes=0"]
    cfg = load_config("small-fast", sets=sets, extra={"data.path": str(trained_run / "split.csv")})
    b = root / "runs" / "b"
    train(cfg, b)
    evaluate_run(b, n_boot=200)


@pytest.fixture(scope="session")
def report(runs) -> tuple[dict, Path]:
    from pitguard.report import write_report

    out = runs.parent / "report"
    return write_report([runs], out), out
