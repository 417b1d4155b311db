"""Training: one ``train()`` to read top to bottom, small helpers for the epoch and validation."""

from __future__ import annotations

import copy
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import cast

import torch
from timm.utils import ModelEmaV3
from torch import nn

from pitguard import __version__
from pitguard.config import Config, config_from_dict
from pitguard.core.devices import pick_device
from pitguard.core.errors import PitguardError
from pitguard.core.files import clear_stale_temps, hold_lock, write_json
from pitguard.core.log import quiet
from pitguard.core.progress import describe_counts, eta_text, say_estimate
from pitguard.core.seeding import rng_state, seed_everything, set_rng_state
from pitguard.data.augment import build_augment, preview, save_grid
from pitguard.data.prepare import prepare_data
from pitguard.evaluate.plots import plot_history
from pitguard.models.nets import PitguardNet
from pitguard.models.runfolder import (
    RunPaths,
    kept_val_accuracy,
    load_checkpoint,
    model_meta,
    save_checkpoint,
    save_model,
    write_history,
)
from pitguard.models.weights import training_net, weight_file
from pitguard.train.budget import EpochPlan, over_budget
from pitguard.train.distributed import check_resume, check_sync_bn, from_env
from pitguard.train.epoch import (
    Stepper,
    check_finite_loss,
    kept_epoch_warning,
    load_teacher,
    plan_for_budget,
    train_one_epoch,
    use_bf16,
    validate,
)
from pitguard.train.losses import make_loss
from pitguard.train.optim import epoch_order, make_optimizer, make_scheduler
from pitguard.train.tracking import NullTracker, Tracker, require_mlflow

_log = logging.getLogger(__name__)


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


def _train(cfg, run: Path, dist, resume, stop_after, clock, plan_only, on_epoch) -> dict:
    paths = RunPaths(run)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(paths.last_checkpoint)
        check_resume(dist, ckpt.get("world_size"), run)
        cfg = config_from_dict(ckpt["config"])
    elif cfg is None:
        raise PitguardError("train needs a config, or resume=True to continue a run")
    elif paths.last_checkpoint.exists():
        raise PitguardError(
            f"{run}: already holds a run; use --resume to continue it or choose a new --out"
        )
    if dist.world > cfg.train.batch_size:
        raise PitguardError(
            f"train.batch_size={cfg.train.batch_size} is the global batch; {dist.world} processes "
            "need at least one crop each: raise it or start fewer processes"
        )
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        for folder in (run, paths.checkpoints):  # what a killed save left behind
            clear_stale_temps(folder)
        write_json(paths.config, cfg.to_dict())

    torch.set_flush_denormal(True)  # denormal floats slow CPU math ~10x
    device = dist.device(pick_device(cfg.train.device, "train.device"))
    check_sync_bn(cfg.train.sync_bn, device)
    if cfg.train.threads or (dist.active and device.type == "cpu"):
        torch.set_num_threads(cfg.train.threads or dist.threads())
    dist.start(device)
    if dist.active and len(set(dist.gather(ckpt["epoch"] if ckpt else 0))) > 1:
        raise PitguardError(f"{run}: the processes read different checkpoints; resume again")
    seed_everything(dist.seed(cfg.train.seed))  # augmentation and dropout: a seed per rank
    shuffle = torch.Generator().manual_seed(cfg.train.seed)  # one permutation for every rank

    if cfg.model.weights == "imagenet":
        weight_file(cfg.model.name)  # a missing weight package stops the run before any work
    if cfg.train.tracking == "mlflow":
        require_mlflow()
    if not dist.main:
        dist.barrier()  # rank 0 writes the split and fills the decoded-crop cache first
    crops, data_info = prepare_data(cfg, paths.split)
    if dist.main:
        dist.barrier()
        write_json(paths.data, data_info)
    train_part, val_part = crops.split("train"), crops.split("val")
    n_classes = len(crops.classes)
    if not dist.main:
        quiet()  # one voice per job: rank 0's
    say = _log.info
    say("data: " + describe_counts(data_info["counts"]))

    net, contract, kwargs = training_net(
        cfg, n_classes, train_part.images, fresh=ckpt is None, sync_bn=dist.active, say=say
    )
    net.to(device)
    if cfg.train.channels_last:
        net.to(memory_format=torch.channels_last)

    images = train_part.images.to(device) if device.type == "cuda" else train_part.images
    labels = train_part.labels.to(device) if device.type == "cuda" else train_part.labels
    steps_per_epoch = max(1, len(train_part) // cfg.train.batch_size)
    loss_fn = make_loss(cfg.train, train_part.labels, n_classes, crops.classes.index("pit"))
    loss_fn.to(device)  # the class weights, a buffer

    def make_stepper(model: PitguardNet, epochs: int, probe: bool = False) -> Stepper:
        optimizer = make_optimizer(cfg, model)
        scheduler = make_scheduler(cfg, optimizer, steps_per_epoch, epochs)
        ema = (
            ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=True)
            if cfg.train.ema_decay
            else None
        )
        augment = build_augment(cfg.augment).to(device)
        st = Stepper(model, ema, augment, loss_fn, optimizer, scheduler, cfg, device, teacher)
        st.show = dist.main
        if not probe:  # the timing probe steps alone; the real steps average gradients
            st.forward = dist.wrap(cast(nn.Module, st.forward), device)
        return st

    teacher = load_teacher(cfg, crops.classes, device) if cfg.train.teacher else None

    def probe() -> Stepper:
        return make_stepper(copy.deepcopy(net), cfg.train.epochs, probe=True)

    plan = None
    if ckpt is not None:  # the plan it was trained to (none in checkpoints from before plans)
        plan = EpochPlan(**ckpt["plan"]) if ckpt.get("plan") else None
    elif cfg.train.max_minutes:
        plan = plan_for_budget(
            cfg, probe(), images, labels, val_part, steps_per_epoch, shuffle, clock, dist
        )
        say(
            f"time budget {cfg.train.max_minutes} min: {plan.epochs} of {cfg.train.epochs} epochs "
            f"at {plan.seconds_per_epoch:.1f} s each on this machine",
        )
    if plan_only:
        timed = plan or plan_for_budget(
            cfg, probe(), images, labels, val_part, steps_per_epoch, shuffle, clock, dist
        )
        runs = plan.epochs if plan else cfg.train.epochs
        return {
            "plan": plan.to_dict() if plan else None,
            "epochs": runs,
            "seconds_per_epoch": timed.seconds_per_epoch,
            "estimate_s": runs * timed.seconds_per_epoch,
            "device": str(device),
            "precision": "bf16 autocast" if use_bf16(cfg, device) else "fp32",
        }
    epochs = plan.epochs if plan else cfg.train.epochs
    stepper = make_stepper(net, epochs)
    optimizer, scheduler, ema = stepper.optimizer, stepper.scheduler, stepper.ema
    tracker = Tracker(run, cfg.to_dict()) if dist.main else NullTracker()
    stepper.on_step = tracker.step

    start_epoch, step, best, best_epoch, bad_epochs, history = 1, 0, None, 0, 0, []
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt.get("rng_ranks", [ckpt["rng"]])[dist.rank], shuffle)
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        best, best_epoch, bad_epochs, history = (
            ckpt[key] for key in ("best", "best_epoch", "bad_epochs", "history")
        )
        say(f"resuming {run} after epoch {ckpt['epoch']}")
    elif dist.main:
        seen = preview(cfg.augment, net.cpu(), train_part.images[:64], contract.channels)
        save_grid(seen, paths.augment_grid)
        tracker.images("augment/grid", seen[:16])
        net.to(device)
        seed_everything(cfg.train.seed)  # the grid's draws do not shift training's random stream
    else:
        seed_everything(dist.seed(cfg.train.seed))

    meta = model_meta(
        cfg.model.name,
        kwargs,
        contract,
        crops.classes,
        cfg,
        {
            "data": {k: data_info[k] for k in ("fingerprint", "counts", "root")},
            "pitguard_version": __version__,
        },
    )
    started = clock()
    elapsed_before = ckpt["elapsed_s"] if ckpt else 0.0
    stop_reason = "every planned epoch done"
    for epoch in range(start_epoch, epochs + 1):
        order = epoch_order(train_part.labels, cfg.train.balance, shuffle)
        batches = [  # global batches; each rank steps on its share
            dist.shard(order[i : i + cfg.train.batch_size])
            for i in range(0, steps_per_epoch * cfg.train.batch_size, cfg.train.batch_size)
        ]
        step, stats = train_one_epoch(
            stepper, batches, images, labels, step, f"epoch {epoch}/{epochs}"
        )
        stats = dist.mean_stats(stats)
        selected = ema.module if ema is not None else net
        if len(val_part):
            stats.update(
                validate(
                    selected,
                    val_part.images,
                    val_part.labels,
                    device,
                    cfg.train.eval_batch_size,
                    dist,
                )
            )
        check_finite_loss(stats, epoch, cfg)  # every rank sees the same means: all stop together
        stats = {
            "epoch": epoch,
            **stats,
            "lr": optimizer.param_groups[-1]["lr"],
            "elapsed_s": elapsed_before + clock() - started,
        }
        history.append(stats)
        tracker.epoch(epoch, stats)
        if cfg.train.select_metric == "last":
            metric, improved = float(epoch), True
        else:
            metric = stats[cfg.train.select_metric]
            improved = _better(cfg.train.select_metric, metric, best)
        if improved:
            best, best_epoch, bad_epochs = metric, epoch, 0
        if improved and dist.main:
            save_model(
                run,
                selected,
                {
                    **meta,
                    "epoch": epoch,
                    "selected_on": {
                        cfg.train.select_metric: metric,
                        "part": None if cfg.train.select_metric == "last" else "val",
                        "n": 0 if cfg.train.select_metric == "last" else len(val_part),
                    },
                },
            )
        if not improved:
            bad_epochs += 1
        val = (
            f"val_loss {stats['val_loss']:.4f}  val_acc {stats['val_accuracy']:.3f}  "
            if "val_loss" in stats
            else ""
        )
        per_epoch = (clock() - started) / (epoch - start_epoch + 1)
        say(
            f"epoch {epoch:>3}/{epochs}  loss {stats['train_loss']:.4f}  "
            f"acc {stats['train_accuracy']:.3f}  {val}{stats['images_per_s']:.0f} img/s  "
            f"eta {eta_text(per_epoch * (epochs - epoch))}{'  *' if improved else ''}",
        )
        if dist.main:
            write_history(run, history)
        if epoch == start_epoch and plan is None and epochs > epoch and dist.main:
            say_estimate(stats["elapsed_s"] - elapsed_before, epochs - epoch, device)
        rng_ranks = dist.gather(rng_state(shuffle))  # every rank's streams, for --resume
        state = {
            "config": cfg.to_dict(),
            "model_name": cfg.model.name,
            "model_kwargs": kwargs,
            "input": contract.to_dict(),
            "classes": list(crops.classes),
            "epoch": epoch,
            "step": step,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
            "world_size": dist.world,
            "best": best,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "history": history,
            "elapsed_s": stats["elapsed_s"],
            "plan": plan.to_dict() if plan else None,
        }
        if dist.main:
            save_checkpoint(paths.last_checkpoint, state)
            if improved:
                save_checkpoint(paths.best_checkpoint, state)
        asked = on_epoch(epoch, stats) if on_epoch else None
        if asked:
            stop_reason = asked
            break
        if cfg.train.patience and bad_epochs >= cfg.train.patience:
            stop_reason = f"early stop: no better {cfg.train.select_metric} for {bad_epochs} epochs"
            break
        # A planned run finishes its plan even when the machine slowed down after the timing
        # (a cut schedule would ship a model the recipe does not describe); only checkpoints
        # from before plans stop at the budget.
        if (
            plan is None
            and cfg.train.max_minutes
            and stats["elapsed_s"] > cfg.train.max_minutes * 60
        ):
            stop_reason = f"time budget of {cfg.train.max_minutes} min reached"
            break
        if stop_after is not None and epoch >= stop_after:
            stop_reason = f"stopped after epoch {epoch} (resume with --resume)"
            break
    if len(val_part) and history and dist.main:
        final = ema.module if ema is not None else net
        tracker.confusion(final, val_part.images, val_part.labels, crops.classes, device)
    tracker.close()
    summary = {
        "run": str(run),
        "recipe": cfg.recipe,
        "model": cfg.model.name,
        "n_train": len(train_part),
        "n_val": len(val_part),
        "epochs_run": len(history),
        "epochs_planned": epochs,
        "teacher": cfg.train.teacher,
        "plan": plan.to_dict() if plan else None,
        "over_budget_s": over_budget(cfg.train.max_minutes, history),
        "best_epoch": best_epoch,
        "selected_on": cfg.train.select_metric,
        "best_value": best,
        "val_accuracy": kept_val_accuracy(history, best_epoch),
        "warning": kept_epoch_warning(history, best_epoch, say),
        "stop_reason": stop_reason,
        "train_seconds": history[-1]["elapsed_s"] if history else 0.0,
        "device": str(device),
        "precision": "bf16 autocast" if use_bf16(cfg, device) else "fp32",
        "threads": torch.get_num_threads(),
        "world_size": dist.world,
        "rank_seeds": [dist.seed(cfg.train.seed) - dist.rank + r for r in range(dist.world)],
    }
    if dist.main:
        plot_history(history, paths.curves)
        write_json(paths.summary, summary)
    dist.barrier()  # no rank leaves before rank 0 has written the run
    return summary
