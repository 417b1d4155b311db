"""Cross-fitting: K fold models score every crop outside the test part out of fold, then one
final model trains on all of them.

A cross-fitted run folder holds the final model where a plain run holds its model (so eval,
export and serve use it unchanged), and beside it:

* ``split.csv``: every crop, split ``train`` (the pool, with its fold 1..K) or ``test``;
* ``folds/fold-k/``: an ordinary run trained on the other folds, its val part the fold itself;
* ``oof.csv``: every pooled crop's logits from the one fold model that never saw it;
* ``crossfit.json``: K, the epoch plan all K + 1 models follow, and per-fold results.

Several processes may share the work (``--workers``, or ``pitguard train --resume RUN`` started
again elsewhere on the same folder): each model's run folder is locked while it trains, a
process skips a model another one holds, and waits for it at the end (training it itself if
that process died).

Every model keeps its last epoch (``train.select_metric: last``), so no out-of-fold score comes
from a model chosen on it, and all follow one epoch count: a time budget is timed once, on fold
1, and every model then trains the epochs it planned, on any machine load.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pitguard.config import Config, config_from_dict
from pitguard.core.devices import usable_cores
from pitguard.core.errors import PitguardError
from pitguard.core.files import Busy, hold_lock, read_json, write_json
from pitguard.data.layout import find_dataset, parse_class_mapping
from pitguard.data.load import DecodeOptions
from pitguard.data.manifest import ManifestRow, read_manifest, write_manifest
from pitguard.data.split import assign_splits, parse_fractions, split_dataset
from pitguard.evaluate import metrics
from pitguard.evaluate.oof import OofScores, write_oof
from pitguard.models.runfolder import RunPaths, load_part, load_run, run_logits
from pitguard.train.loop import train

_log = logging.getLogger(__name__)

POOL, TEST = "train", "test"


def split_rows(cfg: Config, manifest: Path) -> list[ManifestRow]:
    """The data's crops with their parts: a split-folder dir or manifest as given, a class-folder
    dir split as a plain run would split it (same seed, same test part; written to MANIFEST)."""
    if not cfg.data.path:
        raise PitguardError("data.path is not set; pass --data DIR")
    index = find_dataset(cfg.data.path, parse_class_mapping(cfg.data.classes))
    if any(it.split for it in index.items):
        return index.manifest_rows()
    opts = DecodeOptions(size=cfg.data.size, modes=cfg.data.modes, sizes=cfg.data.sizes)
    split_dataset(index, manifest, parse_fractions(cfg.data.fractions), cfg.data.split_seed, opts)
    return read_manifest(manifest)


def deal_folds(rows: list[ManifestRow], k: int, seed: int) -> list[str]:
    """Fold "1".."K" for each row: stratified by label, each duplicate group in one fold."""
    classes = sorted({r.label for r in rows})
    labels = np.array([classes.index(r.label) for r in rows])
    members: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.group:
            members.setdefault(r.group, []).append(i)
    groups = [g for g in members.values() if len(g) > 1]
    return assign_splits(labels, groups, {str(f): 1 / k for f in range(1, k + 1)}, seed)


def pool_rows(cfg: Config, manifest: Path, k: int) -> list[ManifestRow]:
    """The data's crops with folds: the test part kept, everything else pooled and dealt into K
    stratified folds with duplicate groups whole. A class-folder dir is first split as a plain
    run would split it (same seed, same test part), so the two can be compared crop for crop."""
    rows = split_rows(cfg, manifest)
    pool = [r for r in rows if r.split != TEST]
    counts = np.unique([r.label for r in pool], return_counts=True)[1]
    smallest = int(counts.min()) if len(pool) else 0
    if smallest < k:
        raise PitguardError(
            f"{cfg.data.path}: {len(pool)} crops outside the test part, {smallest} in the smallest "
            f"class: too few for {k} folds; give more crops or a smaller --folds"
        )
    names = deal_folds(pool, k, cfg.data.split_seed)
    folded = iter(names)
    return [
        ManifestRow(r.path, r.label, TEST, r.group)
        if r.split == TEST
        else ManifestRow(r.path, r.label, POOL, r.group, next(folded))
        for r in rows
    ]


def fixed_run(cfg: Config, data_path: Path, epochs: int) -> Config:
    """``cfg`` on other data, for a fixed epoch count, keeping the last epoch. A fold model's
    val part is its held-out fold, never trained on (``train.fit_val`` off)."""
    d = cfg.to_dict()
    d["data"]["path"] = str(data_path)
    d["train"].update(
        epochs=epochs, max_minutes=0.0, select_metric="last", patience=0, fit_val=False
    )
    return config_from_dict(d)


def fold_split(rows: list[ManifestRow], fold: str, out: Path) -> Path:
    """Fold ``fold``'s run: the other folds train, the fold itself is its val part."""
    out.mkdir(parents=True, exist_ok=True)
    return write_manifest(
        out / "split.csv",
        (ManifestRow(r.path, r.label, "val" if r.fold == fold else r.split, r.group) for r in rows),
    )


def _train_or_finish(cfg: Config, run: Path, clock: Callable[[], float]) -> dict:
    """Train ``run`` (resuming it when it holds a checkpoint); a finished run is read back."""
    paths = RunPaths(run)
    done = read_json(paths.summary)
    if done is not None and paths.weights.is_file():
        return done
    if paths.last_checkpoint.exists():
        return train(None, run, resume=True, clock=clock)
    return train(cfg, run, clock=clock)


def _start_helpers(run: Path, workers: int) -> list[subprocess.Popen]:
    """workers - 1 processes resuming this cross-fitted run; the cores (or GPUs) shared."""
    if workers <= 1:
        return []
    threads = max(1, usable_cores() // workers)
    torch.set_num_threads(threads)
    gpus = torch.cuda.device_count()
    helpers = []
    for w in range(1, workers):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if gpus >= workers:
            env["CUDA_VISIBLE_DEVICES"] = str(w)
        command = [sys.executable, "-m", "pitguard", "train", "--resume", str(run)]
        helpers.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
    _log.info("%d helper process(es) share the models (%d threads each)", workers - 1, threads)
    return helpers


def crossfit(
    cfg: Config | None,
    run: str | Path,
    folds: int = 5,
    resume: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    workers: int = 1,
) -> dict:
    """Train K fold models and the final model into ``run``; write oof.csv and crossfit.json.
    ``workers`` > 1 starts that many - 1 helper processes on the same folder."""
    run = Path(run)
    paths = RunPaths(run)
    record = read_json(paths.crossfit)
    if resume:
        if record is None:
            raise PitguardError(
                f"{run}: holds no cross-fitted run (no {paths.crossfit.name}); "
                "resume a plain run without --folds"
            )
        cfg = config_from_dict(record["config"])
    elif cfg is None:
        raise PitguardError("crossfit needs a config, or resume=True to continue")
    else:
        record = _new_record(cfg, run, folds, record, clock)
    started = clock()
    models = _models(cfg, run, record)
    summaries = _train_models(models, run, workers, int(record["epochs"]), clock)
    _score(record, run, summaries)
    record["seconds_this_call"] = clock() - started
    write_json(paths.crossfit, record)
    return {**record, "summary": summaries[run]}


def _new_record(
    cfg: Config, run: Path, folds: int, record: dict | None, clock: Callable[[], float]
) -> dict:
    """A new cross-fit's record (crossfit.json), written with its folds dealt into split.csv: K,
    the epochs every model trains (a time budget is timed once, on fold 1) and the config."""
    paths = RunPaths(run)
    if folds < 2:
        raise PitguardError(f"--folds {folds}: cross-fitting needs 2 or more folds (5 is usual)")
    if record is not None or paths.last_checkpoint.exists():
        raise PitguardError(
            f"{run}: already holds a run; use --resume to continue it or choose a new --out"
        )
    run.mkdir(parents=True, exist_ok=True)
    rows = pool_rows(cfg, paths.split, folds)
    write_manifest(paths.split, rows)
    first = fold_split(rows, "1", paths.fold(1))
    plan = None
    if cfg.train.max_minutes:  # the budget is timed once, on fold 1; its plan binds every model
        timed = cfg.to_dict()
        timed["data"]["path"] = str(first)
        plan = train(config_from_dict(timed), paths.fold(1), plan_only=True, clock=clock)["plan"]
    record = {
        "folds": folds,
        "epochs": plan["epochs"] if plan else cfg.train.epochs,
        "plan": plan,
        "config": cfg.to_dict(),
        "counts": _counts(rows),
    }
    write_json(paths.crossfit, record)
    return record


def _models(cfg: Config, run: Path, record: dict) -> list[tuple[str, Path, Config]]:
    """What to train, in order: each fold model (its split written when missing), then the final
    model, each with its run folder and its config for the record's epochs."""
    paths = RunPaths(run)
    k, epochs = int(record["folds"]), int(record["epochs"])
    rows = read_manifest(paths.split)
    models: list[tuple[str, Path, Config]] = []
    for f in range(1, k + 1):
        split = paths.fold(f) / "split.csv"
        if not split.exists():
            fold_split(rows, str(f), paths.fold(f))
        what = f"fold {f}/{k}: on the other {k - 1} folds"
        models.append((what, paths.fold(f), fixed_run(cfg, split, epochs)))
    models.append((f"final model: on all {k} folds", run, fixed_run(cfg, paths.split, epochs)))
    return models


def _train_models(
    models: list[tuple[str, Path, Config]],
    run: Path,
    workers: int,
    epochs: int,
    clock: Callable[[], float],
) -> dict[Path, dict]:
    """Every model's summary: trained here, or by another process (waited for, and trained here
    after all when that process died)."""
    helpers = _start_helpers(run, workers)
    summaries: dict[Path, dict] = {}
    for what, model_run, model_cfg in models:
        _log.info("%s (%s epochs)", what, epochs)
        try:
            summaries[model_run] = _train_or_finish(model_cfg, model_run, clock)
        except Busy:
            _log.info("%s: another process trains it; going on", what)
    for _what, model_run, model_cfg in models:  # wait for the others' models
        if model_run not in summaries:
            with hold_lock(model_run / ".lock", f"{model_run} (a run folder)", wait=True):
                pass
            summaries[model_run] = _train_or_finish(model_cfg, model_run, clock)
    for helper in helpers:
        helper.wait()
    return summaries


def _score(record: dict, run: Path, summaries: dict[Path, dict]) -> None:
    """The out-of-fold scores written (oof.csv) and added to the record with each fold's."""
    paths, k = RunPaths(run), int(record["folds"])
    per_fold = [
        {
            "fold": f,
            "n_train": summaries[paths.fold(f)]["n_train"],
            "n_oof": summaries[paths.fold(f)]["n_val"],
            "train_seconds": summaries[paths.fold(f)]["train_seconds"],
        }
        for f in range(1, k + 1)
    ]
    final = summaries[run]
    scores = _score_out_of_fold(run, k)
    write_oof(run, scores)
    probs = torch.softmax(torch.from_numpy(scores.logits), dim=1).numpy()
    report = metrics.classification_report(scores.labels, probs, list(scores.classes))
    for entry in per_fold:
        held = scores.folds == entry["fold"]
        entry["accuracy"] = float((probs[held].argmax(1) == scores.labels[held]).mean())
    record.update(
        per_fold=per_fold,
        final={"n_train": final["n_train"], "train_seconds": final["train_seconds"]},
        oof={
            key: report[key]
            for key in ("n", "accuracy", "accuracy_ci", "roc_auc", "roc_auc_ci", "per_class")
            if key in report
        },
    )


def _score_out_of_fold(run: Path, k: int) -> OofScores:
    """Each fold model's logits on its own held-out fold, gathered in one table."""
    paths: list[str] = []
    labels, fold_ids, logits = [], [], []
    classes: tuple[str, ...] | None = None
    for f in range(1, k + 1):
        model = load_run(RunPaths(run).fold(f))
        if classes is None:
            classes = model.classes
        ev = load_part(model, RunPaths(model.run).split, "val")
        logits.append(run_logits(model, ev.crops).double().numpy())
        root = Path(ev.source).parent.resolve()
        paths += [os.path.relpath((root / p).resolve(), run.resolve()) for p in ev.crops.paths]
        labels.append(ev.labels)
        fold_ids.append(np.full(len(ev.labels), f))
    assert classes is not None
    return OofScores(
        paths, np.concatenate(labels), np.concatenate(fold_ids), np.concatenate(logits), classes
    )


def _counts(rows: list[ManifestRow]) -> dict[str, dict[str, int]]:
    """Crops per fold (and the test part) and class."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        part = f"fold {r.fold}" if r.fold else str(r.split)
        per = out.setdefault(part, {})
        per[r.label] = per.get(r.label, 0) + 1
    return dict(sorted(out.items()))
