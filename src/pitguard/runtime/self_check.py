"""A bundle proves itself where it runs: the outputs its graphs gave a few hundred check crops
at export (``checks.npz``), scored again on this machine and compared.

ONNX Runtime's kernels differ between CPUs (AVX2, VNNI, AMX) and GPUs, most of all for INT8 and
FP16, so a graph certified where it was exported is not proved where it is loaded. The float32
graph must route every check crop as it did at export (a crop whose export p(pit) lies within
``P_TOLERANCE`` of a threshold may go either way) with p(pit) within ``P_TOLERANCE``, and every
graph must route by the thresholds ``bundle.json`` states (a threshold edited inside a graph
shows there, whatever digests were rewritten); an INT8 or
FP16 graph, whose certificate allows its own scores, may route at most ``LOW_PRECISION_SHARE``
of the check crops otherwise and none of the check pits clean that it did not route clean there.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pitguard.core.errors import PitguardError
from pitguard.runtime.bundle import INPUT_NAME, stated_policy
from pitguard.runtime.routes import Route

log = logging.getLogger(__name__)

CHECKS_FILE = "checks.npz"
CHECKS_KEY = "checks"  # bundle.json files key
P_TOLERANCE = 1e-4  # as the export's parity gate
LOW_PRECISION_SHARE = 0.02  # of the check crops an INT8 or FP16 graph may route otherwise


@dataclass(frozen=True)
class SelfCheck:
    graph: str
    provider: str
    n: int
    route_mismatches: int
    borderline: int  # mismatches of crops within P_TOLERANCE of a threshold at export
    new_pits_clean: int
    max_prob_diff: float
    ms: float

    def line(self) -> str:
        return (
            f"{self.n} check crops on {self.provider}: {self.route_mismatches} routes differ "
            f"({self.borderline} at a threshold), max p(pit) diff {self.max_prob_diff:.1e}, "
            f"{self.ms:.0f} ms"
        )


def self_check(bundle: Path, meta: dict, file_key: str, session, graph: str) -> SelfCheck | None:
    """Score the check crops with ``session`` (the loaded ``graph``) and compare; refuses a
    graph that does not compute here what it computed at export. None, with a warning, for a
    bundle exported before bundles carried check crops."""
    name = (meta.get("files") or {}).get(CHECKS_KEY)
    if not name:
        log.warning(
            "%s: holds no check crops (%s; exported by an older pitguard), so it cannot prove "
            "itself on this machine; export it again",
            bundle,
            CHECKS_FILE,
        )
        return None
    with np.load(bundle / name, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if f"{file_key}.p_pit" not in arrays:
        raise PitguardError(f"{bundle / name}: holds no expected outputs for {graph}")
    crops, is_pit = arrays["crops"], arrays["is_pit"].astype(bool)
    want_p, want_r = arrays[f"{file_key}.p_pit"], arrays[f"{file_key}.route"]
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    start = time.perf_counter()
    got_p, got_r = [], []
    for i in range(0, len(crops), 64):
        x = (crops[i : i + 64].astype(np.float32) / np.float32(255)).astype(dtype)
        _, p, r = session.run(None, {INPUT_NAME: x})
        got_p.append(np.asarray(p, dtype=np.float32))
        got_r.append(np.asarray(r))
    p, r = np.concatenate(got_p), np.concatenate(got_r)
    ms = (time.perf_counter() - start) * 1000
    policy = stated_policy(meta, file_key)
    near = np.zeros(len(p), dtype=bool)
    for t in (policy.get("t_low"), policy.get("t_high")):
        if t is not None:
            near |= np.abs(want_p - np.float32(t)) <= P_TOLERANCE
    differ = r != want_r
    _same_rule(bundle, graph, p, r, policy, dtype)
    result = SelfCheck(
        graph=graph,
        provider=session.get_providers()[0],
        n=len(p),
        route_mismatches=int(differ.sum()),
        borderline=int((differ & near).sum()),
        new_pits_clean=int((is_pit & (r == int(Route.CLEAN)) & (want_r != int(Route.CLEAN))).sum()),
        max_prob_diff=float(np.abs(p - want_p).max()) if len(p) else 0.0,
        ms=ms,
    )
    _judge(bundle, result)
    return result


def _same_rule(bundle: Path, graph: str, p: np.ndarray, r: np.ndarray, policy: dict, dtype) -> None:
    """The graph routes by the thresholds bundle.json states, compared in the graph's own
    precision: a threshold edited inside the graph (its initializer) shows as routes its own
    p(pit) does not give under them."""
    t_low, t_high = policy.get("t_low"), policy.get("t_high")
    if t_low is None or t_high is None:
        return
    q = p.astype(dtype)
    rule = (
        int(Route.MAYBE)
        + (q >= dtype(t_high)).astype(np.int64)
        - (q < dtype(t_low)).astype(np.int64)
    )
    wrong = int((rule != r).sum())
    if wrong:
        raise PitguardError(
            f"{bundle}: {graph} routes {wrong} of {len(r)} check crops otherwise than its stated "
            f"thresholds (t_low {t_low:.6g}, t_high {t_high:.6g}) route their p(pit): the "
            "thresholds inside the graph were changed; export the bundle again"
        )


def _judge(bundle: Path, c: SelfCheck) -> None:
    if c.graph == "onnx":
        bad = c.route_mismatches > c.borderline or c.max_prob_diff > P_TOLERANCE
        allowed = f"no route outside a threshold's {P_TOLERANCE:g}, p(pit) within {P_TOLERANCE:g}"
    else:
        limit = math.floor(LOW_PRECISION_SHARE * c.n)
        bad = c.route_mismatches > limit or c.new_pits_clean > 0
        allowed = f"at most {limit} routes, no pit newly routed clean"
    if bad:
        raise PitguardError(
            f"{bundle}: {c.graph} does not compute here what it computed at export: {c.line()}, "
            f"{c.new_pits_clean} check pits newly routed clean (allowed: {allowed}); this "
            "machine's kernels differ: run the float32 graph, or export the bundle again here"
        )
