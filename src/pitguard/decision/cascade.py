"""A second look for the crops in doubt: they are scored again under test-time views, by the
run's own model or by another run's (a larger one, say).

The cascade routes a crop with two scores and one pair of thresholds ``t_low <= t_high``:

1. stage 1, the run's model (p1, its calibrated p(pit)): clean below ``t_low``, pit from
   ``t_high``; the crops between, its *band*, go on to
2. stage 2, the mean logits over mirrored and turned views of the crop (or the crop alone) of
   the same network or of another run's (``--second-look-model``; p2, with a temperature of its
   own): clean below ``t_low``, pit from ``t_high``, maybe between.

Both thresholds are certified exactly, each by one fixed-sequence scan over one score:

* ``t_high`` on the clean crops alone: the lowest threshold whose false-reject bound holds for
  ``max(p1, p2)``, which routes pit every crop the cascade could (so the bound is conservative);
* ``t_low`` on the pits alone, given ``t_high``: the highest threshold whose pit-miss bound holds
  for ``min(p1, p2 where p1 < t_high)``, below which exactly the crops the cascade routes clean
  lie, in either stage.

Each scan's score is fixed before its class's crops are looked at (the pit side depends on the
clean crops only, the clean side on the pits only), so each bound is the exact Clopper-Pearson
one (or conformal risk control's, under the expected guarantee). On a cross-fitted run both
stages are scored out of fold: each crop's views by the fold model that never trained on it
(another run's fold models, for a second stage from another run cross-fitted on the same crops).
``benchmarks/cascade_coverage.py`` measures how often the bound is broken on fresh crops.

Stage 1 alone, with the same thresholds, misses no pit the cascade does not and rejects no clean
crop the cascade could not: a runtime that skips the second look (an older pitguard, or a line
short of time) keeps both bounds and sends more crops to review.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pitguard.core.errors import PitguardError
from pitguard.decision.certify import (
    Thresholds,
    _allowed_failures,
    _bound,
    _candidates,
    _lowest_certified_t_high,
    _prepare,
    _refuse_too_few,
)
from pitguard.decision.review_cost import REFERENCE
from pitguard.evaluate.oof import read_oof
from pitguard.models.runfolder import RunModel, RunPaths, load_part, load_run, view_logits
from pitguard.models.second_stage import (
    check_second_model,
    crop_contents,
    crop_keys,
    refuse_seen,
)
from pitguard.models.views import SECOND_LOOKS
from pitguard.runtime.policy import DecisionPolicy, Route, route

_log = logging.getLogger(__name__)
SECOND_LOOK_VIEWS = SECOND_LOOKS  # mirrored, quarter-turned, or both: 2, 4, 8 passes
CASCADE_STATEMENT = (
    "cascade: the crops between the thresholds are scored again by {stage} and routed by the "
    "same thresholds; the bounds cover every crop the cascade routes, in either stage, each "
    "certified exactly on one class of the calibration crops; the first stage alone keeps both "
    "bounds"
)


def check_views(views: str, other_model: bool = False) -> str:
    """The second look's views; ``none`` (the crop alone) only for another run's model."""
    if views not in SECOND_LOOK_VIEWS and not (other_model and views == "none"):
        raise PitguardError(
            f"second look {views!r}: choose {', '.join(SECOND_LOOK_VIEWS)} (the test-time views "
            "the network scores a crop in doubt under)"
        )
    return views


def stage_words(views: str, model: dict | None) -> str:
    """The second stage in words: whose network, under which views."""
    who = f"another run's model ({model['model_name']})" if model else "the same network"
    return who if views == "none" else f"{who} under test-time views ({views})"


def cascade_routes(p1: np.ndarray, p2: np.ndarray, t_low: float, t_high: float) -> np.ndarray:
    """The cascade's routes: stage 1's outside its band, stage 2's (same thresholds) inside."""
    r1 = route(p1, t_low, t_high)
    return np.where(r1 == int(Route.MAYBE), route(p2, t_low, t_high), r1)


def certify_cascade(
    p1: np.ndarray,
    p2: np.ndarray,
    is_pit: np.ndarray,
    max_pit_miss: float,
    confidence: float,
    max_false_reject: float | None,
    guarantee: str = "exact",
) -> tuple[Thresholds, Thresholds]:
    """The cascade's thresholds, certified as the module says, with what they certify for the
    cascade and for stage 1 alone."""
    if max_false_reject is None:
        raise PitguardError(
            "a second look needs --max-false-reject: its upper threshold is certified on the "
            "clean crops alone (for example --max-false-reject 0.05)"
        )
    a, y = _prepare(p1, is_pit)
    b, _ = _prepare(p2, is_pit)
    n_pits, n_clean = int(y.sum()), int((~y).sum())
    _refuse_too_few(guarantee, n_pits, max_pit_miss, confidence, "t_low")
    cands, _, clean_below = _candidates(np.maximum(a, b), y)
    t_high = float(
        cands[
            _lowest_certified_t_high(clean_below, n_clean, max_false_reject, confidence, guarantee)
        ]
    )
    low = np.minimum(a, np.where(a < np.float32(t_high), b, np.float32(1.0)))
    cands, pits_below, _ = _candidates(low, y)
    k_max = _allowed_failures(n_pits, max_pit_miss, confidence, guarantee)
    t_low = min(float(cands[int(np.searchsorted(pits_below, k_max, side="right")) - 1]), t_high)
    fr_certified = int((~y & (np.maximum(a, b) >= np.float32(t_high))).sum())

    def stated(routes: np.ndarray) -> Thresholds:
        misses = int((y & (routes == int(Route.CLEAN))).sum())
        return Thresholds(
            t_low=t_low,
            t_high=t_high,
            pit_miss_bound=_bound(misses, n_pits, confidence, guarantee),
            false_reject_bound=_bound(fr_certified, n_clean, confidence, guarantee),
            n_pits=n_pits,
            n_clean=n_clean,
            calib_pit_misses=misses,
            calib_maybe_rate=float((routes == int(Route.MAYBE)).mean()),
        )

    return stated(cascade_routes(a, b, t_low, t_high)), stated(route(a, t_low, t_high))


def second_look_record(
    views: str,
    p1: np.ndarray,
    logits2: np.ndarray,
    labels: np.ndarray,
    policy1: DecisionPolicy,
    bound: dict,
    temperature: float,
    model: dict | None = None,
) -> tuple[DecisionPolicy, Thresholds, dict]:
    """Stage 1's policy and what it certifies alone, and ``policy.json``'s ``second_look``: the
    cascade certified on these calibration scores (stage 1's p(pit) ``p1`` and stage 2's logits
    ``logits2`` of every crop, whose fitted temperature is ``temperature``; ``policy1`` holds
    stage 1's; ``model``: the run stage 2's network comes from, None for stage 1's own)."""
    is_pit = labels == policy1.pit_index
    pit, maybe = policy1.pit_index, policy1.maybe_index
    with torch.no_grad():
        p2 = DecisionPolicy(temperature, pit_index=pit, maybe_index=maybe)(
            torch.from_numpy(logits2).float()
        )[0].numpy()
    args = (bound["max_pit_miss"], bound["confidence"], bound.get("max_false_reject"))
    cascade, alone = certify_cascade(p1, p2, is_pit, *args, bound.get("kind", "exact"))
    t1 = float(policy1.to_dict()["temperature"])
    first = DecisionPolicy(t1, cascade.t_low, cascade.t_high, pit, maybe)
    routes = cascade_routes(p1, p2, cascade.t_low, cascade.t_high)
    band = route(p1, cascade.t_low, cascade.t_high) == int(Route.MAYBE)
    record = {
        "views": views,
        "policy": DecisionPolicy(temperature, cascade.t_low, cascade.t_high, pit, maybe).to_dict(),
        "thresholds": asdict(cascade),
        "share": float(band.mean()),
        "n_second": int(band.sum()),
        "calib_routes": {r.label: int((routes == r).sum()) for r in Route},
        "review_cost": cascade_review_cost(p1, p2, is_pit),
        "statement": CASCADE_STATEMENT.format(stage=stage_words(views, model)),
    }
    if model:
        record["model"] = model
    return first, alone, record


def cascade_review_cost(
    p1: np.ndarray, p2: np.ndarray, is_pit: np.ndarray, n_boot: int = 200, seed: int = 0
) -> dict:
    """The cascade's review rate at the reference point (1% at 95%, false rejects <= 5%), with
    a percentile interval over resamples of the crops, each certified again."""
    ref = REFERENCE
    args = (ref["max_pit_miss"], ref["confidence"], ref["max_false_reject"])

    def rate(i: np.ndarray) -> float | None:
        try:
            return certify_cascade(p1[i], p2[i], is_pit[i], *args)[0].calib_maybe_rate
        except PitguardError:
            return None

    everything = np.arange(len(p1))
    point = rate(everything)
    rng = np.random.default_rng(seed)
    boot = (
        [rate(rng.integers(0, len(p1), len(p1))) for _ in range(n_boot)]
        if point is not None
        else []
    )
    rates = [1.0 if r is None else r for r in boot]  # a resample that certifies nothing reviews all
    ci = [float(v) for v in np.percentile(rates, [2.5, 97.5])] if rates else None
    return {
        "n": len(p1),
        "n_pits": int(np.asarray(is_pit).sum()),
        "review_rate": point,
        "review_rate_ci": ci,
        "reference": dict(ref),
    }


def oof_view_logits(
    run: Path, oof_paths: list[str], views: str, source: Path | None = None
) -> np.ndarray:
    """Each out-of-fold crop's mean logits over ``views``, from the fold model that never
    trained on it, in the order of ``oof_paths`` (``run``'s ``oof.csv``'s); the fold models are
    ``source``'s (another run cross-fitted on the same crops) when given, else ``run``'s."""
    source = source or run
    redo = "train the folds again" if source == run else f"cross-fit {source} on {run}'s split"
    where = {os.path.realpath(run / p): i for i, p in enumerate(oof_paths)}
    out: np.ndarray | None = None
    k = 1
    while RunPaths(source).fold(k).is_dir():
        model = load_run(RunPaths(source).fold(k))
        ev = load_part(model, RunPaths(model.run).split, "val")
        z = view_logits(model.net, ev.crops.images, views).double().numpy()
        for key, path, row in zip(crop_keys(ev), ev.crops.paths, z, strict=True):
            if key not in where:
                raise PitguardError(
                    f"{RunPaths(source).fold(k)}: scores {path}, which {run}'s oof.csv lacks; "
                    f"{redo}"
                )
            if out is None:
                out = np.full((len(oof_paths), len(row)), np.nan)
            out[where[key]] = row
        k += 1
    if out is None or np.isnan(out).any():
        raise PitguardError(
            f"{source}: its fold models do not score every crop of {run}'s oof.csv; {redo}"
        )
    return out


def second_look_request(
    run: RunModel, asked: str | None, model: str | Path | None, max_false_reject: float | None
) -> tuple[str, RunModel | None] | None:
    """The cascade's second stage as (views, the run whose model scores, None for the run's
    own): the views asked (``none``: no second look, unless a model is given), else the
    recipe's ``model.second_look``, which needs a false-reject cap (without one, the run is
    calibrated in one stage and the log says why). A bad request stops before any scoring."""
    run2 = None
    if model is not None:
        run2 = load_run(model)
        check_second_model(run, run2)
    recipe = run.config.model.second_look if run.config else "none"
    views = asked or ("none" if run2 is not None else recipe)
    if views == "none" and run2 is None:
        return None
    check_views(views, run2 is not None)
    if max_false_reject is None:
        if asked is None and run2 is None:
            _log.info(
                "one stage: the recipe's second look (%s) needs --max-false-reject, which "
                "certifies its upper threshold on the clean crops",
                views,
            )
            return None
        raise PitguardError(
            "--second-look needs --max-false-reject: the cascade's upper threshold is "
            "certified on the clean crops alone (for example --max-false-reject 0.05)"
        )
    return views, run2


def second_look_logits(
    run: RunModel, mode: str, data, part, views: str, run2: RunModel | None
) -> np.ndarray:
    """Stage 2's logits of the calibration crops, in the order stage 1 scored them: the model's
    (``run2``'s, else the run's) under ``views`` (holdout), or each fold model's on its own
    fold (oof)."""
    if mode == "oof":
        if run2 is not None and not RunPaths(run2.run).fold(1).is_dir():
            raise PitguardError(
                f"{run2.run}: no fold models, so it cannot score the out-of-fold crops; "
                f"cross-fit it on {RunPaths(run.run).split} with --folds"
            )
        source = run2.run if run2 is not None else None
        return oof_view_logits(run.run, read_oof(run.run).paths, views, source)
    ev = load_part(run, data, part or ("calib" if data is None else None))
    if run2 is not None:
        refuse_seen(run2, crop_contents(ev), "calibration crops")
    net = run2.net if run2 is not None else run.net
    return view_logits(net, ev.crops.images, views).double().numpy()
