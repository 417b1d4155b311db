"""The runtime's tests run twice: in the full install (the bundle made by the session fixture)
and, by `make test-runtime`, in an environment with the base install alone, where
PITGUARD_RUNTIME_BUNDLE names a folder written by tests/runtime/make_bundle.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.runtime.make_bundle import expected_of, made_or_given

RUNTIME_ONLY = "PITGUARD_RUNTIME_BUNDLE" in os.environ
# The guard's and the policy's tests build their inputs with torch and the synthetic data maker.
collect_ignore = ["test_guard.py", "test_policy.py"] if RUNTIME_ONLY else []


@pytest.fixture(scope="session")
def made(request, tmp_path_factory) -> Path:
    """A folder with ``bundle/`` and ``expected.npz`` (see make_bundle.py)."""
    return made_or_given(tmp_path_factory)


@pytest.fixture(scope="session")
def expected(made) -> dict[str, np.ndarray]:
    return expected_of(made)
