"""Writes a bundle and the scores the full install gives it, for the runtime's own tests in an
environment without torch (`make test-runtime`).

    .venv/bin/python tests/runtime/make_bundle.py OUT

OUT/bundle is ``pitguard_tiny`` trained briefly on synthetic crops, calibrated and exported with
ONNX and FP16 graphs; OUT/expected.npz holds synthetic crops (uint8, (N, 3, 128, 128)) and
the bundle's eager PyTorch routes and p_pit for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(out: Path) -> None:
    import pitguard
    from pitguard.decision.calibrate import calibrate_run
    from pitguard.deploy.export import export_run
    from tests.conftest import (
        SESSION_CONFIDENCE,
        SESSION_DIFFICULTY,
        SESSION_MAX_PIT_MISS,
        SESSION_RUN_SETS,
        random_crop,
        train_tiny,
    )

    run = train_tiny(
        out / "work", count=600, seed=5, sets=SESSION_RUN_SETS, difficulty=SESSION_DIFFICULTY
    )
    calibrate_run(run, max_pit_miss=SESSION_MAX_PIT_MISS, confidence=SESSION_CONFIDENCE)
    export_run(run, out / "bundle", onnx=True, fp16=True)
    crops = np.stack([random_crop(s) for s in range(40)]).transpose(0, 3, 1, 2).copy()
    eager = pitguard.load(out / "bundle", backend="eager").predict_uint8(crops)
    np.savez(out / "expected.npz", crops=crops, p_pit=eager.p_pit, routes=np.array(eager.routes))


def made_or_given(tmp_path_factory) -> Path:
    """The folder PITGUARD_RUNTIME_BUNDLE names (`make test-runtime`), else one made now."""
    import os

    if "PITGUARD_RUNTIME_BUNDLE" in os.environ:
        return Path(os.environ["PITGUARD_RUNTIME_BUNDLE"])
    out = tmp_path_factory.mktemp("runtime")
    main(out)
    return out


def expected_of(made: Path) -> dict[str, np.ndarray]:
    with np.load(made / "expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(Path(sys.argv[1]))
