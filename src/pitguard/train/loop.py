"""Training: one ``train()`` to read top to bottom (set-up, the epochs, the finish), small helpers.

Set-up (:mod:`pitguard.train.setup`) builds a :class:`~pitguard.train.setup.Setup` once; the
epochs move a :class:`Progress` on, which each checkpoint carries across a resume; the finish
writes the run's summary.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pitguard.config import Config
from pitguard.core.files import hold_lock, write_json
from pitguard.core.progress import eta_text, say_estimate
from pitguard.core.seeding import rng_state, seed_everything, set_rng_state
from pitguard.data.augment import preview, save_grid
from pitguard.evaluate.plots import plot_history
from pitguard.models.runfolder import (
    RunPaths,
    kept_val_accuracy,
    save_checkpoint,
    save_model,
    write_history,
)
from pitguard.train.budget import over_budget
from pitguard.train.distributed import Dist, from_env
from pitguard.train.epoch import check_finite_loss, kept_epoch_warning, train_one_epoch, validate
from pitguard.train.hard_pits import epoch_draw
from pitguard.train.setup import Setup, build, decide_plan, plan_answer, start_job
from pitguard.train.summary import TrainSummary

_log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where the epochs stand: what a checkpoint carries across a resume."""

    start_epoch: int = 1  # the first epoch this call trains
    step: int = 0
    best: float | None = None  # the kept epoch's select_metric value; None under "last"
    kept_epoch: int = 0
    bad_epochs: int = 0  # epochs since the kept one (early stopping)
    history: list[dict] = field(default_factory=list)
    elapsed_before: float = 0.0  # seconds trained before this call (a resumed run)
    stop_reason: str = "every planned epoch done"


def _better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "val_loss" else value > best


# ---------------------------------------------------------------- train


def train(
    cfg: Config | None,
    run: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    plan_only: bool = False,
    on_epoch: Callable[[int, dict], str | None] | None = None,
) -> dict:
    """Train ``cfg`` into the run folder; ``resume`` continues from its last checkpoint.

    ``stop_after`` ends this call after that many epochs in total (a planned interruption);
    ``clock`` measures the time budget (tests pass their own); ``plan_only`` returns the epoch
    plan of a budgeted config (``{"plan": ...}``) before any training; ``on_epoch(epoch, stats)``
    may return a reason to stop after that epoch (a sweep's pruning). Under ``torchrun`` the
    processes train data-parallel (:mod:`pitguard.train.distributed`) and only rank 0 writes.
    """
    dist = from_env()
    run = Path(run)
    created = dist.main and not run.exists()
    if dist.main:  # one job trains into a run folder at a time (a lock freed when it ends)
        run.mkdir(parents=True, exist_ok=True)
    try:
        with hold_lock(run / ".lock", f"{run} (a run folder)") if dist.main else nullcontext():
            return _train(cfg, run, dist, resume, stop_after, clock, plan_only, on_epoch)
    except BaseException:
        if created and not RunPaths(run).last_checkpoint.exists():  # no half-made run folder
            shutil.rmtree(run, ignore_errors=True)
        raise


def _train(
    cfg: Config | None,
    run: Path,
    dist: Dist,
    resume: bool,
    stop_after: int | None,
    clock: Callable[[], float],
    plan_only: bool,
    on_epoch: Callable[[int, dict], str | None] | None,
) -> dict:
    job = start_job(cfg, run, dist, resume, clock)
    plan, timed = decide_plan(job, plan_only)
    if plan_only:
        return plan_answer(job, plan, timed)
    s = build(job, plan)
    progress = _begin(s)
    _run_epochs(s, progress, stop_after, on_epoch)
    return _finish(s, progress)


def _begin(s: Setup) -> Progress:
    """A resumed run's progress, restored with its weights and random streams; a fresh run's,
    after rank 0 has drawn the augment grid."""
    cfg, ckpt, dist, st = s.cfg, s.ckpt, s.dist, s.stepper
    if ckpt is None:
        if dist.main:
            seen = preview(cfg.augment, s.net.cpu(), s.train_part.images[:64], s.contract.channels)
            save_grid(seen, s.paths.augment_grid)
            s.tracker.images("augment/grid", seen[:16])
            s.net.to(s.device)
            seed_everything(cfg.train.seed)  # the grid's draws do not shift training's stream
        else:
            seed_everything(dist.seed(cfg.train.seed))
        return Progress()
    s.net.load_state_dict(ckpt["model"])
    st.optimizer.load_state_dict(ckpt["optimizer"])
    st.scheduler.load_state_dict(ckpt["scheduler"])
    if st.ema is not None:
        st.ema.module.load_state_dict(ckpt["ema"])
    set_rng_state(ckpt.get("rng_ranks", [ckpt["rng"]])[dist.rank], s.shuffle)
    _log.info(f"resuming {s.run} after epoch {ckpt['epoch']}")
    return Progress(
        start_epoch=ckpt["epoch"] + 1,
        step=ckpt["step"],
        # keeping the last epoch, no value was chosen on (checkpoints from before held the epoch)
        best=None if cfg.train.select_metric == "last" else ckpt["best"],
        kept_epoch=ckpt["best_epoch"],
        bad_epochs=ckpt["bad_epochs"],
        history=ckpt["history"],
        elapsed_before=ckpt["elapsed_s"],
    )


# ---------------------------------------------------------------- the epochs


def _run_epochs(
    s: Setup,
    p: Progress,
    stop_after: int | None,
    on_epoch: Callable[[int, dict], str | None] | None,
) -> None:
    """Train, keep, report and checkpoint epoch by epoch, to the plan's end or a stop."""
    started = s.clock()
    for epoch in range(p.start_epoch, s.epochs + 1):
        stats = _train_epoch(s, p, epoch, started)
        improved = _keep(s, p, epoch, stats)
        _report(s, p, epoch, stats, improved, started)
        _save_checkpoints(s, p, epoch, stats, improved)
        reason = _stop_reason(s, p, epoch, stats, stop_after, on_epoch)
        if reason:
            p.stop_reason = reason
            return


def _train_epoch(s: Setup, p: Progress, epoch: int, started: float) -> dict:
    """One epoch's steps and validation, checked finite, added to the history as its row."""
    cfg, dist, size = s.cfg, s.dist, s.cfg.train.batch_size
    order = epoch_draw(s, epoch)
    batches = [  # global batches; each rank steps on its share
        dist.shard(order[i : i + size]) for i in range(0, s.steps_per_epoch * size, size)
    ]
    desc = f"epoch {epoch}/{s.epochs}"
    p.step, stats = train_one_epoch(s.stepper, batches, s.images, s.labels, p.step, desc)
    stats = dist.mean_stats(stats)
    if len(s.val_part):
        val = s.val_part
        stats.update(
            validate(
                s.stepper.kept, val.images, val.labels, s.device, cfg.train.eval_batch_size, dist
            )
        )
    check_finite_loss(stats, epoch, cfg)  # every rank sees the same means: all stop together
    stats = {
        "epoch": epoch,
        **stats,
        "lr": s.stepper.optimizer.param_groups[-1]["lr"],
        "elapsed_s": p.elapsed_before + s.clock() - started,
    }
    p.history.append(stats)
    s.tracker.epoch(epoch, stats)
    return stats


def _keep(s: Setup, p: Progress, epoch: int, stats: dict) -> bool:
    """Whether this epoch is now the kept one (always, under select_metric last); rank 0 saves
    its model."""
    metric = s.cfg.train.select_metric
    last = metric == "last"
    value: float | None = None
    if not last:
        value = stats[metric]
        if not _better(metric, stats[metric], p.best):
            p.bad_epochs += 1
            return False
    p.best, p.kept_epoch, p.bad_epochs = value, epoch, 0
    if s.dist.main:
        selected_on = {
            metric: float(epoch) if last else value,
            "part": None if last else "val",
            "n": 0 if last else len(s.val_part),
        }
        save_model(s.run, s.stepper.kept, {**s.meta, "epoch": epoch, "selected_on": selected_on})
    return True


def _report(s: Setup, p: Progress, epoch: int, stats: dict, improved: bool, started: float) -> None:
    """The epoch's line (after a fresh run's first epoch, how long the rest will take); rank 0
    writes the history."""
    val = (
        f"val_loss {stats['val_loss']:.4f}  val_acc {stats['val_accuracy']:.3f}  "
        if "val_loss" in stats
        else ""
    )
    per_epoch = (s.clock() - started) / (epoch - p.start_epoch + 1)
    _log.info(
        f"epoch {epoch:>3}/{s.epochs}  loss {stats['train_loss']:.4f}  "
        f"acc {stats['train_accuracy']:.3f}  {val}{stats['images_per_s']:.0f} img/s  "
        f"eta {eta_text(per_epoch * (s.epochs - epoch))}{'  *' if improved else ''}",
    )
    if s.dist.main:
        write_history(s.run, p.history)
    if epoch == p.start_epoch and s.plan is None and s.epochs > epoch and s.dist.main:
        say_estimate(stats["elapsed_s"] - p.elapsed_before, s.epochs - epoch, s.device)


def _save_checkpoints(s: Setup, p: Progress, epoch: int, stats: dict, improved: bool) -> None:
    """Everything --resume needs, in last.pt (and best.pt for a kept epoch), written by rank 0."""
    cfg, st = s.cfg, s.stepper
    rng_ranks = s.dist.gather(rng_state(s.shuffle))  # every rank's streams, for --resume
    state = {
        "config": cfg.to_dict(),
        "model_name": cfg.model.name,
        "model_kwargs": s.kwargs,
        "input": s.contract.to_dict(),
        "classes": list(s.crops.classes),
        "epoch": epoch,
        "step": p.step,
        "model": s.net.state_dict(),
        "optimizer": st.optimizer.state_dict(),
        "scheduler": st.scheduler.state_dict(),
        "ema": st.ema.module.state_dict() if st.ema is not None else None,
        "rng": rng_ranks[0],
        "rng_ranks": rng_ranks,
        "world_size": s.dist.world,
        "best": p.best,
        "best_epoch": p.kept_epoch,
        "bad_epochs": p.bad_epochs,
        "history": p.history,
        "elapsed_s": stats["elapsed_s"],
        "plan": s.plan.to_dict() if s.plan else None,
    }
    if s.dist.main:
        save_checkpoint(s.paths.last_checkpoint, state)
        if improved:
            save_checkpoint(s.paths.best_checkpoint, state)


def _stop_reason(
    s: Setup,
    p: Progress,
    epoch: int,
    stats: dict,
    stop_after: int | None,
    on_epoch: Callable[[int, dict], str | None] | None,
) -> str | None:
    """Why the run stops after this epoch, or None to go on."""
    cfg = s.cfg.train
    asked = on_epoch(epoch, stats) if on_epoch else None
    if asked:
        return asked
    if cfg.patience and p.bad_epochs >= cfg.patience:
        return f"early stop: no better {cfg.select_metric} for {p.bad_epochs} epochs"
    # A planned run finishes its plan even when the machine slowed down after the timing
    # (a cut schedule would ship a model the recipe does not describe); only checkpoints
    # from before plans stop at the budget.
    if s.plan is None and cfg.max_minutes and stats["elapsed_s"] > cfg.max_minutes * 60:
        return f"time budget of {cfg.max_minutes} min reached"
    if stop_after is not None and epoch >= stop_after:
        return f"stopped after epoch {epoch} (resume with --resume)"
    return None


# ---------------------------------------------------------------- the finish


def _finish(s: Setup, p: Progress) -> dict:
    """The run's summary, with its curves written by rank 0; no rank leaves before them."""
    cfg, dist, history = s.cfg, s.dist, p.history
    if len(s.val_part) and history and dist.main:
        val = s.val_part
        s.tracker.confusion(s.stepper.kept, val.images, val.labels, s.crops.classes, s.device)
    s.tracker.close()
    summary = TrainSummary(
        run=str(s.run),
        recipe=cfg.recipe,
        model=cfg.model.name,
        n_train=len(s.train_part),
        n_val=len(s.val_part),
        epochs_run=len(history),
        epochs_planned=s.epochs,
        teacher=cfg.train.teacher,
        plan=s.plan.to_dict() if s.plan else None,
        over_budget_s=over_budget(cfg.train.max_minutes, history),
        best_epoch=p.kept_epoch,  # the kept epoch's name before kept_epoch, for older readers
        kept_epoch=p.kept_epoch,
        selected_on=cfg.train.select_metric,
        best_value=p.best,  # the kept epoch's select_metric value; None when kept last
        val_accuracy=kept_val_accuracy(history, p.kept_epoch),
        warning=kept_epoch_warning(history, p.kept_epoch, _log.info),
        stop_reason=p.stop_reason,
        train_seconds=history[-1]["elapsed_s"] if history else 0.0,
        device=str(s.device),
        precision=s.precision,
        threads=torch.get_num_threads(),
        world_size=dist.world,
        rank_seeds=[dist.seed(cfg.train.seed) - dist.rank + r for r in range(dist.world)],
    )
    if dist.main:
        plot_history(history, s.paths.curves)
        write_json(s.paths.summary, summary.to_dict())
    dist.barrier()  # no rank leaves before rank 0 has written the run
    return summary.to_dict()
