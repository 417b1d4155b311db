"""Hyper-parameter sweeps: an Optuna study whose trials are ordinary run folders.

``pitguard sweep`` samples settings with TPE, trains each trial as a run in OUT/trials, reports
the val metric after every epoch and lets Optuna's median rule prune a trial that trails the
others; the test part is never looked at. With ``choose_on="review"`` a trial is scored instead,
once trained, by the share of its val crops a certified 1% pit-miss bound sends to review
(what the line pays for; nothing is pruned, since the rate is only known at the end). Several processes (``--workers``) or machines share a
study through its storage: a SQLite file on one machine, a PostgreSQL URL across machines. A
study is counted in trials: a worker starts a trial only while the study holds fewer than
``--trials`` trials that are running, finished or pruned (a failed trial is run again); on a
SQLite storage the count and the new trial are taken under one file lock, so no trial is lost or
run twice. The best trial's settings are written as a recipe file.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import yaml

from pitguard.config import Config, load_config
from pitguard.core.errors import Diverged, PitguardError
from pitguard.core.files import atomic_write_text, hold_lock, process_alive, write_json
from pitguard.recipes import flatten
from pitguard.train.loop import train

_log = logging.getLogger(__name__)

# What a sweep varies when no --space is given: the settings that moved val accuracy most in
# the recipes' own tuning. Bounds are absolute, so they suit every recipe.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "train.lr": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
    "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "train.label_smoothing": {"type": "float", "low": 0.0, "high": 0.1},
    "augment.brightness": {"type": "float", "low": 0.0, "high": 0.3},
}
KINDS = ("float", "int", "categorical")
BEST_RECIPE = "best-recipe.yaml"
CHOOSE_ON = ("val", "review")  # the recipe's val metric, or the val review rate
REVIEW_METRIC = "val_review_rate"
RESULT = "sweep.json"


def read_space(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The search space of a YAML file (``section.key: {type, low, high[, log, step]}`` or
    ``{type: categorical, choices: [...]}``), every problem reported at once; the default
    space without a file."""
    if path is None:
        return DEFAULT_SPACE
    path = Path(path)
    if not path.is_file():
        raise PitguardError(f"--space {path}: no such file; give a YAML search space")
    try:
        space = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PitguardError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(space, dict) or not space:
        raise PitguardError(f"{path}: expected a mapping of section.key: {{type, low, high}}")
    problems = []
    for key, spec in space.items():
        where = f"{path}: {key}"
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            problems.append(f"{where}: give type: {' | '.join(KINDS)}")
        elif spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                problems.append(f"{where}: a categorical setting needs choices: [a, b, ...]")
        elif not all(isinstance(spec.get(b), int | float) for b in ("low", "high")):
            problems.append(f"{where}: a {spec['type']} setting needs numeric low and high")
        elif spec["low"] >= spec["high"]:
            problems.append(f"{where}: low ({spec['low']}) must be below high ({spec['high']})")
        elif spec.get("log") and spec["low"] <= 0:
            problems.append(f"{where}: log: true needs low > 0")
    if problems:
        raise PitguardError("\n".join(problems))
    return space


def _suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            out[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            step = int(spec.get("step", 1))
            out[key] = trial.suggest_int(
                key, int(spec["low"]), int(spec["high"]), step=step, log=bool(spec.get("log"))
            )
        else:
            out[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log"))
            )
    return out


def _storage(url: str):
    """An Optuna storage; a SQLite file's folder is created."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as exc:  # a bad URL, a missing driver, a server that is down
        raise PitguardError(
            f"--storage {url}: cannot open it ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "use sqlite:///PATH on one machine or postgresql://USER@HOST/DB across machines"
        ) from None


def _engine_kwargs(url: str) -> dict:
    # SQLite: wait for another worker's write instead of failing at once
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def _lock(url: str):
    """The file lock that makes count-then-start atomic on a SQLite storage."""
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///") :]).absolute()
        db.parent.mkdir(parents=True, exist_ok=True)
        return hold_lock(db.with_name(db.name + ".lock"), "the sweep's trial count", wait=True)
    return nullcontext()


def _counted(study) -> int:
    from optuna.trial import TrialState

    states = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)
    return len(study.get_trials(deepcopy=False, states=states))


def _fail_orphans(study) -> None:
    """Trials left running by a worker of this machine that no longer exists: failed, so the
    study runs them again."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        if name == host and pid.isdigit() and not process_alive(int(pid)):
            study.tell(t.number, state=TrialState.FAIL)


def sweep(
    base: Config,
    out: str | Path,
    trials: int,
    storage: str,
    study_name: str,
    space: dict[str, dict[str, Any]],
    sets: list[str],
    recipe: str | None,
    config_file: str | None,
    seed: int | None = None,
    choose_on: str = "val",
) -> dict:
    """Run trials of ``study_name`` until the study holds ``trials``; the study's record.
    ``choose_on`` is ``val`` (the recipe's val metric) or ``review`` (the val review rate)."""
    import optuna

    if choose_on not in CHOOSE_ON:
        raise PitguardError(f"choose_on {choose_on!r}: choose {' or '.join(CHOOSE_ON)}")
    out = Path(out)
    metric = _metric(base)  # refuses a recipe that trains on its val part
    metric = metric if choose_on == "val" else REVIEW_METRIC
    minimize = metric in ("val_loss", REVIEW_METRIC)
    direction: Literal["minimize", "maximize"] = "minimize" if minimize else "maximize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _lock(storage):  # one worker creates the tables and the study; the others load them
        study = optuna.create_study(
            study_name=study_name,
            storage=_storage(storage),
            load_if_exists=True,
            direction=direction,
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
        )
    if study.direction.name.lower() != direction:
        raise PitguardError(
            f"study {study_name!r} in {storage} was made to {study.direction.name.lower()}; this "
            f"config's {metric} needs {direction}: choose another --study name"
        )
    ran = 0
    while True:
        with _lock(storage):
            _fail_orphans(study)
            if _counted(study) >= trials:
                break
            trial = study.ask()
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        ran += 1
        _run_trial(study, trial, out, metric, space, sets, recipe, config_file, base)
    return _record(study, out, metric, base, trials, ran)


def _metric(cfg: Config) -> str:
    """The val metric a sweep optimises: the recipe's selection metric, val accuracy if last."""
    if cfg.train.fit_val:
        raise PitguardError(
            "the recipe trains on its val part (train.fit_val) and a sweep chooses on val; "
            "add --set train.fit_val=false"
        )
    if cfg.train.select_metric == "last":
        return "val_accuracy"
    return cfg.train.select_metric


def _run_trial(study, trial, out, metric, space, sets, recipe, config_file, base) -> None:
    from optuna.trial import TrialState

    params = _suggest(trial, space)
    run = out / "trials" / f"trial-{trial.number:04d}"
    trial.set_user_attr("run", str(run))
    chosen = [f"{k}={v}" for k, v in params.items()]
    _log.info("trial %d: %s -> %s", trial.number, ", ".join(chosen), run)
    pruned: list[int] = []

    def report(epoch: int, stats: dict) -> str | None:
        if metric not in stats:  # the review rate is known only once the trial is trained
            return None
        trial.report(float(stats[metric]), epoch)
        if trial.should_prune():
            pruned.append(epoch)
            return f"pruned by the sweep after epoch {epoch} (median rule on {metric})"
        return None

    try:
        cfg = load_config(recipe, config_file, [*sets, *chosen], {"data.path": base.data.path})
        summary = train(cfg, run, on_epoch=report)
    except Diverged as exc:  # a bad region of the space, not a broken sweep: recorded, and on
        trial.set_user_attr("diverged", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        _log.info("trial %d: diverged, recorded as pruned (%s)", trial.number, exc)
        return
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        _log.info("trial %d: pruned after epoch %s", trial.number, pruned[0])
        return
    if metric == REVIEW_METRIC:
        try:
            value, guarantee = val_review_rate(run)
        except PitguardError:
            study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr("guarantee", guarantee)
    else:
        # a recipe that keeps its last epoch chose nothing on val: its value is that accuracy
        kept_last = base.train.select_metric == "last"
        value = summary["val_accuracy"] if kept_last else summary["best_value"]
    if value is None or not math.isfinite(float(value)):
        study.tell(trial, state=TrialState.FAIL)
        raise PitguardError(f"{run}: no {metric} to report; the sweep needs a val part")
    study.tell(trial, float(value))
    _log.info("trial %d: %s %.4f", trial.number, metric, float(value))


def val_review_rate(run: Path) -> tuple[float, str]:
    """The share of ``run``'s val crops sent to review at the reference point (1% pit-miss bound
    at 95%, false rejects <= 5%), and the guarantee it was certified with: exact where the val
    part has the pits for it, else expected (conformal risk control), as every trial of a study
    shares one val part. Temperature is left out: it moves the thresholds, not the routes."""
    from pitguard.decision.review_cost import reference_guarantee, review_rate
    from pitguard.models.runfolder import load_part, load_run, run_logits
    from pitguard.runtime.policy import DecisionPolicy, maybe_index

    model = load_run(run)
    ev = load_part(model, None, "val")
    policy = DecisionPolicy(pit_index=model.pit_index, maybe_index=maybe_index(model.classes))
    p_pit = policy(run_logits(model, ev.crops))[0].numpy()
    is_pit = ev.labels == model.pit_index
    guarantee = reference_guarantee(int(is_pit.sum()))
    return review_rate(p_pit, is_pit, guarantee), guarantee


def _record(study, out: Path, metric: str, base: Config, target: int, ran: int) -> dict:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    record: dict[str, Any] = {
        "study": study.study_name,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "target_trials": target,
        "trials_run_here": ran,
        "states": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        "trials": [
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": t.params,
                "run": t.user_attrs.get("run"),
                **({"guarantee": t.user_attrs["guarantee"]} if "guarantee" in t.user_attrs else {}),
            }
            for t in trials
        ],
        "best": None,
    }
    if done:
        best = study.best_trial
        record["best"] = {"number": best.number, "value": best.value, "params": best.params}
        record["best"]["recipe"] = str(out / BEST_RECIPE)
        _write_recipe(out / BEST_RECIPE, best, metric, base, study.study_name)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULT, record)
    return record


def _write_recipe(path: Path, best, metric: str, base: Config, study_name: str) -> None:
    """The best trial's whole config, as the differences from pitguard's defaults."""
    from pitguard.config import config_from_dict
    from pitguard.core.files import read_json

    saved = read_json(Path(best.user_attrs["run"]) / "config.json")
    cfg = config_from_dict(saved) if saved else base
    mine, default = flatten(cfg.to_dict()), flatten(Config().to_dict())
    changed = {k: v for k, v in mine.items() if v != default.get(k) and k not in ("data.path",)}
    changed.pop("recipe", None)
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changed.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
    head = (
        f"# best trial {best.number} of sweep {study_name!r}: {metric} {best.value:.4f} "
        f"(from recipe {cfg.recipe or 'none'})\n"
        f"# pitguard train --recipe {path} --data DIR --out RUN\n"
    )
    atomic_write_text(path, head + yaml.safe_dump(nested, sort_keys=True))
