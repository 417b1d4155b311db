"""A bundle proves itself where it runs: its check crops scored again and compared with what
each graph gave at export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pitguard.core.errors import PitguardError
from pitguard.runtime import Classifier
from pitguard.runtime.bundle import open_bundle
from pitguard.runtime.self_check import CHECKS_FILE, self_check


class Kernels:
    """The session as another machine's kernels might run it: ``change`` edits its outputs."""

    def __init__(self, session, change):
        self.session, self.change = session, change
        self.seen = 0  # crops scored before this call: check crop i is row i - seen

    def get_inputs(self):
        return self.session.get_inputs()

    def get_providers(self):
        return self.session.get_providers()

    def run(self, names, feeds):
        logits, p, r = self.session.run(names, feeds)
        out = self.change(logits, np.array(p), np.array(r), self.seen)
        self.seen += len(p)
        return out


def test_each_graph_passes_its_check_here(made):
    meta = json.loads((made / "bundle" / "bundle.json").read_text())
    assert meta["files"]["checks"] == CHECKS_FILE and meta["checks"]["n"] > 0
    for graph in ("onnx", "onnx-fp16"):
        clf = Classifier(made / "bundle", graph=graph, device="cpu", verify=True)
        assert clf.check is not None and clf.check.n == meta["checks"]["n"]
        assert clf.check.route_mismatches == 0 and clf.check.new_pits_clean == 0


def _check(made, graph: str, key: str, change):
    clf = Classifier(made / "bundle", graph=graph, device="cpu")
    return self_check(made / "bundle", clf.meta, key, Kernels(clf.session, change), graph)


def _thresholds(made, key: str) -> tuple[float, float]:
    from pitguard.runtime.bundle import stated_policy

    policy = stated_policy(open_bundle(made / "bundle"), key)
    return float(policy["t_low"]), float(policy["t_high"])


def moved(index: int, to_p: float, thresholds: tuple[float, float]):
    """Another machine's kernels scoring check crop ``index`` as ``to_p``: its route follows
    from the graph's own thresholds, as the graph computes it."""
    t_low, t_high = thresholds

    def change(logits, p, r, seen):
        if seen <= index < seen + len(r):
            p[index - seen] = to_p
            r[index - seen] = 0 if to_p < t_low else (2 if to_p >= t_high else 1)
        return logits, p, r

    return change


def test_a_float32_graph_whose_routes_move_here_is_refused(made):
    with np.load(made / "bundle" / CHECKS_FILE) as npz:
        clean = int(np.flatnonzero(npz["onnx.route"] == 0)[0])
    with pytest.raises(PitguardError, match="does not compute here what it computed at export"):
        _check(made, "onnx", "onnx", moved(clean, 0.999999, _thresholds(made, "onnx")))


def test_a_float32_graph_whose_scores_drift_is_refused(made):
    t_low, t_high = _thresholds(made, "onnx")

    def drift(logits, p, r, seen):
        p = p + np.float32(1e-3)
        r = np.where(p < t_low, 0, np.where(p >= t_high, 2, 1))
        return logits, p, r

    with pytest.raises(PitguardError, match="does not compute here what it computed at export"):
        _check(made, "onnx", "onnx", drift)


def test_a_low_precision_graph_may_move_a_few_routes_but_no_pit_to_clean(made):
    with np.load(made / "bundle" / CHECKS_FILE) as npz:
        n = len(npz["crops"])
        routes = npz["onnx_fp16.route"]
        pit = int(np.flatnonzero(npz["is_pit"] & (routes != 0))[0])
        clean = int(np.flatnonzero(~npz["is_pit"] & (routes == 0))[0])
    assert n >= 50  # so one moved route is within the 2% a low-precision graph may move
    t_low, t_high = _thresholds(made, "onnx_fp16")
    middle = float(np.float16((t_low + t_high) / 2))
    passed = _check(made, "onnx-fp16", "onnx_fp16", moved(clean, middle, (t_low, t_high)))
    assert passed.route_mismatches == 1 and passed.new_pits_clean == 0
    with pytest.raises(PitguardError, match="1 check pits newly routed clean"):
        _check(made, "onnx-fp16", "onnx_fp16", moved(pit, 0.0, (t_low, t_high)))


def test_a_graph_whose_routes_do_not_follow_its_stated_thresholds_is_refused(made):
    def route_alone_moved(logits, p, r, seen):
        if seen == 0:
            r[0] = (r[0] + 1) % 3  # p(pit) as before, its route not what the thresholds give
        return logits, p, r

    with pytest.raises(PitguardError, match="the thresholds inside the graph were changed"):
        _check(made, "onnx", "onnx", route_alone_moved)


def test_a_bundle_without_check_crops_says_it_cannot_prove_itself(made, tmp_path, caplog):
    copy = Path(shutil.copytree(made / "bundle", tmp_path / "b"))
    meta = json.loads((copy / "bundle.json").read_text())
    meta["files"].pop("checks")
    assert self_check(copy, meta, "onnx", None, "onnx") is None
    assert "holds no check crops" in caplog.text
    assert open_bundle(made / "bundle")["checks"]["graphs"] == ["onnx", "onnx_fp16"]
