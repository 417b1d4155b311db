"""Training set-up: the run opened, the process started, data, network, plan and stepper built.

``train`` reads :func:`start_job`, :func:`decide_plan` and :func:`build` in that order; what they
build is a :class:`Setup` the epochs and the finish read.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from timm.utils import ModelEmaV3
from torch import nn

from pitguard import __version__
from pitguard.config import Config, config_from_dict
from pitguard.core.devices import pick_device
from pitguard.core.errors import PitguardError
from pitguard.core.files import clear_stale_temps, write_json
from pitguard.core.log import quiet
from pitguard.core.progress import describe_counts
from pitguard.core.seeding import seed_everything
from pitguard.data.augment import build_augment
from pitguard.data.load import Crops
from pitguard.data.prepare import prepare_data
from pitguard.models.nets import InputContract, PitguardNet
from pitguard.models.runfolder import RunPaths, load_checkpoint, model_meta
from pitguard.models.weights import training_net, weight_file
from pitguard.train.budget import EpochPlan, plan_for_budget
from pitguard.train.distill import load_teacher
from pitguard.train.distributed import Dist, check_resume, check_sync_bn
from pitguard.train.epoch import Stepper, use_bf16
from pitguard.train.losses import make_loss
from pitguard.train.optim import make_optimizer, make_scheduler
from pitguard.train.tracking import NullTracker, Tracker, require_mlflow

_log = logging.getLogger(__name__)


@dataclass
class Job:
    """What set-up built before the epoch plan: the run, the processes, the data, the network."""

    cfg: Config
    run: Path
    paths: RunPaths
    dist: Dist
    ckpt: dict | None  # the checkpoint a resumed run continues from
    device: torch.device
    bf16: bool  # bf16 autocast for the training step, decided once
    shuffle: torch.Generator  # one batch order for every rank
    clock: Callable[[], float]
    crops: Crops
    data_info: dict
    train_part: Crops
    val_part: Crops
    images: torch.Tensor  # the train crops and labels, on the GPU when training there
    labels: torch.Tensor
    steps_per_epoch: int
    loss_fn: nn.Module
    teacher: nn.Module | None
    net: PitguardNet
    contract: InputContract
    kwargs: dict  # the network's timm kwargs

    @property
    def precision(self) -> str:
        return "bf16 autocast" if self.bf16 else "fp32"

    def make_stepper(self, model: PitguardNet, epochs: int, probe: bool = False) -> Stepper:
        """A stepper for ``model`` over ``epochs``: the timing probe steps alone, the real steps
        average gradients across the ranks."""
        cfg, device = self.cfg, self.device
        optimizer = make_optimizer(cfg, model)
        scheduler = make_scheduler(cfg, optimizer, self.steps_per_epoch, epochs)
        decay = cfg.train.ema_decay
        ema = ModelEmaV3(model, decay=decay, use_warmup=True) if decay else None
        augment = build_augment(cfg.augment).to(device)
        st = Stepper(
            model, ema, augment, self.loss_fn, optimizer, scheduler, cfg, device, self.teacher,
            show=self.dist.main, bf16=self.bf16,
        )  # fmt: skip
        if not probe:
            st.forward = self.dist.wrap(cast(nn.Module, st.forward), device)
        return st


@dataclass
class Setup(Job):
    """What the epochs run on: the job, its plan, the real stepper, the tracker, the meta."""

    plan: EpochPlan | None  # the time budget's plan; None: the recipe's epochs
    epochs: int
    stepper: Stepper
    tracker: Tracker
    meta: dict  # what model.json says of the model beside the kept epoch


def start_job(
    cfg: Config | None, run: Path, dist: Dist, resume: bool, clock: Callable[[], float]
) -> Job:
    """Open the run folder, start this process, load the data and build the network."""
    paths = RunPaths(run)
    cfg, ckpt = _open_run(cfg, run, paths, dist, resume)
    device = _start_process(cfg, run, dist, ckpt)
    shuffle = torch.Generator().manual_seed(cfg.train.seed)  # one permutation for every rank
    crops, data_info = _load_data(cfg, paths, dist)
    train_part, val_part = crops.split("train"), crops.split("val")
    n_classes = len(crops.classes)
    net, contract, kwargs = training_net(
        cfg, n_classes, train_part.images, fresh=ckpt is None, sync_bn=dist.active, say=_log.info
    )
    net.to(device)
    if cfg.train.channels_last:
        net.to(memory_format=torch.channels_last)
    on_gpu = device.type == "cuda"
    images = train_part.images.to(device) if on_gpu else train_part.images
    labels = train_part.labels.to(device) if on_gpu else train_part.labels
    steps_per_epoch = max(1, len(train_part) // cfg.train.batch_size)
    loss_fn = make_loss(cfg.train, train_part.labels, n_classes, crops.classes.index("pit"))
    loss_fn.to(device)  # the class weights, a buffer
    teacher = load_teacher(cfg, crops.classes, device) if cfg.train.teacher else None
    return Job(
        cfg, run, paths, dist, ckpt, device, use_bf16(cfg, device), shuffle, clock, crops,
        data_info, train_part, val_part, images, labels, steps_per_epoch, loss_fn, teacher, net,
        contract, kwargs,
    )  # fmt: skip


def _open_run(
    cfg: Config | None, run: Path, paths: RunPaths, dist: Dist, resume: bool
) -> tuple[Config, dict | None]:
    """The config to train (a resumed run's own) and the checkpoint to resume from, checked
    against the folder and the processes; rank 0 writes the config."""
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
    return cfg, ckpt


def _start_process(cfg: Config, run: Path, dist: Dist, ckpt: dict | None) -> torch.device:
    """This process's device, threads and place in the job, its random streams seeded."""
    torch.set_flush_denormal(True)  # denormal floats slow CPU math ~10x
    device = dist.device(pick_device(cfg.train.device, "train.device"))
    check_sync_bn(cfg.train.sync_bn, device)
    if cfg.train.threads or (dist.active and device.type == "cpu"):
        torch.set_num_threads(cfg.train.threads or dist.threads())
    dist.start(device)
    if dist.active and len(set(dist.gather(ckpt["epoch"] if ckpt else 0))) > 1:
        raise PitguardError(f"{run}: the processes read different checkpoints; resume again")
    seed_everything(dist.seed(cfg.train.seed))  # augmentation and dropout: a seed per rank
    return device


def _load_data(cfg: Config, paths: RunPaths, dist: Dist) -> tuple[Crops, dict]:
    """The crops, split; rank 0 splits and decodes first and writes data.json."""
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
    if not dist.main:
        quiet()  # one voice per job: rank 0's
    _log.info("data: " + describe_counts(data_info["counts"]))
    return crops, data_info


def decide_plan(job: Job, plan_only: bool) -> tuple[EpochPlan | None, EpochPlan | None]:
    """The epoch plan the run follows, and the timing its estimate rests on (None when the run
    needs none). A resumed run follows the plan its checkpoint holds (none in checkpoints from
    before plans); a fresh budgeted run is timed here, once; ``plan_only`` is timed in any case."""
    cfg, ckpt = job.cfg, job.ckpt
    plan = EpochPlan(**ckpt["plan"]) if ckpt is not None and ckpt.get("plan") else None
    budgeted = ckpt is None and bool(cfg.train.max_minutes)
    timed = plan
    if plan is None and (budgeted or plan_only):
        probe = job.make_stepper(copy.deepcopy(job.net), cfg.train.epochs, probe=True)
        timed = plan_for_budget(
            cfg, probe, job.images, job.labels, job.val_part, job.steps_per_epoch, job.shuffle,
            job.clock, job.dist,
        )  # fmt: skip
        if budgeted:
            plan = timed
            _log.info(
                f"time budget {cfg.train.max_minutes} min: {timed.epochs} of {cfg.train.epochs} "
                f"epochs at {timed.seconds_per_epoch:.1f} s each on this machine"
            )
    return plan, timed


def planned_epochs(cfg: Config, plan: EpochPlan | None) -> int:
    """The epochs the run trains: its plan's, or the recipe's when it has no plan."""
    return plan.epochs if plan else cfg.train.epochs


def plan_answer(job: Job, plan: EpochPlan | None, timed: EpochPlan | None) -> dict:
    """What ``train(plan_only=True)`` returns: the plan, the epochs and how long they take."""
    assert timed is not None  # decide_plan times every plan_only call
    runs = planned_epochs(job.cfg, plan)
    return {
        "plan": plan.to_dict() if plan else None,
        "epochs": runs,
        "seconds_per_epoch": timed.seconds_per_epoch,
        "estimate_s": runs * timed.seconds_per_epoch,
        "device": str(job.device),
        "precision": job.precision,
    }


def build(job: Job, plan: EpochPlan | None) -> Setup:
    """The real stepper over the planned epochs, the tracker (rank 0's) and the model's meta."""
    cfg = job.cfg
    epochs = planned_epochs(cfg, plan)
    stepper = job.make_stepper(job.net, epochs)
    tracker = Tracker(job.run, cfg.to_dict()) if job.dist.main else NullTracker()
    stepper.on_step = tracker.step
    extra = {
        "data": {k: job.data_info[k] for k in ("fingerprint", "counts", "root")},
        "pitguard_version": __version__,
    }
    meta = model_meta(cfg.model.name, job.kwargs, job.contract, job.crops.classes, cfg, extra)
    return Setup(**vars(job), plan=plan, epochs=epochs, stepper=stepper, tracker=tracker, meta=meta)
