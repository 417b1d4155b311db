"""The inference wing's import boundary: serving a bundle loads no training, calibration or CLI code."""

from __future__ import annotations

import json
import subprocess
import sys

# Run in a fresh interpreter: in the test session, other tests have already imported everything.
# The bundle is loaded with ONNX Runtime, the backend `serve` picks for a bundle with a graph; only
# the eager backend needs pitguard.models.nets (imported lazily in pitguard.deploy.bundle).
PROBE = """
import json, sys
import numpy as np
from pitguard.deploy.predict import Predictor
from pitguard.deploy.serve import create_app

bundle = sys.argv[1]
predictor = Predictor(bundle)
assert predictor.backend == "onnx", predictor.backend
predictor.predict_uint8(np.zeros((2, 3, predictor.size, predictor.size), np.uint8))
create_app(bundle)
print(json.dumps(sorted(sys.modules)))
"""

FORBIDDEN = (
    "pitguard.train.loop",
    "pitguard.data.augment",
    "pitguard.train.optim",
    "pitguard.decision.calibrate",
    "pitguard.decision.certify",
    "pitguard.evaluate.run",
    "pitguard.evaluate.metrics",
    "pitguard.models.runfolder",
    "pitguard.config",
    "pitguard.models.nets",
    "pitguard.data.split",
    "pitguard.data.audit",
    "pitguard.data.synth",
    "pitguard.data.prepare",
    "pitguard.studies",
    "pitguard.report",
    "pitguard.cli",
    "timm",
    "kornia",
)  # each with everything under it

# What stays, and why: pitguard.runtime.policy holds the route names and the decision the bundle carries;
# pitguard.data.layout names the image suffixes predict_files accepts (with pitguard.data.manifest,
# which imports only errors and files). pitguard.data.load, the one image decoder, is shared with
# training but imported only where paths are decoded, since it reads pitguard.config.


def _loaded(bundle) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(bundle)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_serving_a_bundle_imports_no_training_code(bundle):
    loaded = _loaded(bundle)
    assert "pitguard.deploy.serve" in loaded and "onnxruntime" in loaded  # the probe really ran
    bad = sorted(
        name
        for name in loaded
        if any(name == top or name.startswith(top + ".") for top in FORBIDDEN)
    )
    assert not bad, f"the deploy path imported {', '.join(bad)}"
