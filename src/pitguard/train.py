"""Training: one ``train()`` to read top to bottom, small helpers for the epoch and validation."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from pitguard import __version__
from pitguard.augment import build_augment, save_grid
from pitguard.config import Config, config_from_dict
from pitguard.data.prepare import prepare_data
from pitguard.devices import cpu_has_native_bf16, pick_device
from pitguard.errors import PitguardError
from pitguard.files import write_json
from pitguard.models import (
    PitguardNet,
    build_model,
    classifier_params,
    infer_logits,
    load_pretrained,
    make_contract,
)
from pitguard.optim import class_weights, epoch_order, make_optimizer, make_scheduler
from pitguard.plots import plot_history
from pitguard.runfolder import (
    RunPaths,
    load_checkpoint,
    model_meta,
    save_checkpoint,
    save_model,
    write_history,
)

# ---------------------------------------------------------------- reproducibility


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(shuffle: torch.Generator) -> dict:
    np_state: Any = np.random.get_state()  # the legacy tuple form
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": shuffle.get_state(),
    }


def set_rng_state(state: dict, shuffle: torch.Generator) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy(), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle.set_state(state["shuffle"])


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast for the training step: on CUDA, and on CPUs with native bf16."""
    if not cfg.train.amp:
        return False
    return device.type == "cuda" or cpu_has_native_bf16()


# ---------------------------------------------------------------- epoch and validation


@dataclass
class Stepper:
    """What one optimisation step needs, built once by ``train`` and handed to each epoch."""

    net: PitguardNet
    ema: ModelEmaV3 | None
    augment: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: Config
    device: torch.device


def train_one_epoch(
    st: Stepper, batches, images: torch.Tensor, labels: torch.Tensor, step: int, desc: str
) -> tuple[int, dict]:
    net, ema, augment, cfg, device = st.net, st.ema, st.augment, st.cfg, st.device
    net.train()
    if cfg.model.freeze_backbone:
        net.backbone.eval()
        cast(Any, net.backbone).get_classifier().train()
    augment.train()
    use_amp = use_bf16(cfg, device)
    seen = correct = 0
    loss_sum = 0.0
    start = time.perf_counter()
    bar = tqdm(batches, desc=desc, leave=False, mininterval=1.0, disable=None)
    for idx in bar:
        x = images[idx].to(device, non_blocking=True).float().div_(255)
        y = labels[idx].to(device, non_blocking=True)
        with torch.no_grad():
            x = augment(net.select(x))  # channel selection and pooling first: fewer pixels to warp
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = net.backbone(net.normalize(x))
            loss = st.loss_fn(logits.float(), y)
        st.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        st.optimizer.step()
        step += 1
        st.scheduler.step_update(step)
        if ema is not None:
            ema.update(net, step=step)
        seen += len(y)
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        rate = seen / (time.perf_counter() - start)
        bar.set_postfix(
            loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}"
        )
    elapsed = time.perf_counter() - start
    return step, {
        "train_loss": loss_sum / seen,
        "train_accuracy": correct / seen,
        "images_per_s": seen / elapsed,
    }


def validate(net: nn.Module, images, labels, device, batch_size: int) -> dict:
    logits = infer_logits(net, images, device, batch_size)
    y = labels.numpy()
    loss = float(nn.functional.cross_entropy(logits, labels))
    pred = logits.argmax(1).numpy()
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return {
        "val_loss": loss,
        "val_accuracy": float((pred == y).mean()),
        "val_balanced_accuracy": float(np.mean(recalls)),
    }


def _better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "val_loss" else value > best


def _as_rgb(x: torch.Tensor, channels: tuple[int, ...]) -> torch.Tensor:
    """Selected channels back in their RGB places, for a picture a person can read."""
    out = torch.zeros(x.shape[0], 3, *x.shape[2:], dtype=x.dtype)
    out[:, list(channels)] = x
    return out


# ---------------------------------------------------------------- train


def train(
    cfg: Config | None, run: str | Path, resume: bool = False, stop_after: int | None = None
) -> dict:
    """Train ``cfg`` into the run folder; ``resume`` continues from its last checkpoint.

    ``stop_after`` ends this call after that many epochs in total (a planned interruption).
    """
    run = Path(run)
    paths = RunPaths(run)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(paths.last_checkpoint)
        cfg = config_from_dict(ckpt["config"])
    elif cfg is None:
        raise PitguardError("train needs a config, or resume=True to continue a run")
    elif paths.last_checkpoint.exists():
        raise PitguardError(
            f"{run}: already holds a run; use --resume to continue it or choose a new --out"
        )
    run.mkdir(parents=True, exist_ok=True)
    write_json(paths.config, cfg.to_dict())

    torch.set_flush_denormal(True)  # denormal floats slow CPU math ~10x
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device, "train.device")
    seed_everything(cfg.train.seed)
    shuffle = torch.Generator().manual_seed(cfg.train.seed)

    crops, data_info = prepare_data(cfg, paths.split)
    write_json(paths.data, data_info)
    train_part, val_part = crops.split("train"), crops.split("val")
    n_classes = len(crops.classes)
    print(f"data: {data_info['counts']}  classes: {', '.join(crops.classes)}", flush=True)

    data_mean = data_std = None
    if cfg.model.normalize == "data":
        x = train_part.images.float().div(255)[:, list(cfg.model.channels)]
        data_mean = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
        data_std = tuple(float(v) for v in x.std(dim=(0, 2, 3)).clamp_min(1e-3))
    contract = make_contract(cfg.model, cfg.data.size, data_mean, data_std)
    kwargs = {
        "num_classes": n_classes,
        "drop_rate": cfg.model.drop_rate,
        "drop_path_rate": cfg.model.drop_path_rate,
    }
    net = build_model(
        cfg.model.name, n_classes, contract, cfg.model.drop_rate, cfg.model.drop_path_rate
    )
    if cfg.model.pretrained_path and ckpt is None:
        info = load_pretrained(net.backbone, cfg.model.pretrained_path, len(contract.channels))
        print(
            f"pretrained: {info['loaded']} tensors loaded, {len(info['skipped'])} skipped",
            flush=True,
        )
    if cfg.model.freeze_backbone:
        head = {id(p) for p in classifier_params(net.backbone)}
        for p in net.backbone.parameters():
            p.requires_grad_(id(p) in head)
    net.to(device)
    if cfg.train.channels_last:
        net.to(memory_format=torch.channels_last)

    images = train_part.images.to(device) if device.type == "cuda" else train_part.images
    labels = train_part.labels.to(device) if device.type == "cuda" else train_part.labels
    steps_per_epoch = max(1, len(train_part) // cfg.train.batch_size)
    optimizer = make_optimizer(cfg, net)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch)
    ema = (
        ModelEmaV3(net, decay=cfg.train.ema_decay, use_warmup=True) if cfg.train.ema_decay else None
    )
    weight = (
        class_weights(train_part.labels, n_classes).to(device)
        if cfg.train.balance == "loss"
        else None
    )
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.train.label_smoothing)
    augment = build_augment(cfg.augment).to(device)
    stepper = Stepper(net, ema, augment, loss_fn, optimizer, scheduler, cfg, device)

    start_epoch, step, best, best_epoch, bad_epochs, history = 1, 0, None, 0, 0, []
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"], shuffle)
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        best, best_epoch, bad_epochs, history = (
            ckpt["best"],
            ckpt["best_epoch"],
            ckpt["bad_epochs"],
            ckpt["history"],
        )
        print(f"resuming {run} after epoch {ckpt['epoch']}", flush=True)
    else:
        with torch.no_grad():
            seen = build_augment(cfg.augment).train()(
                net.cpu().select(train_part.images[:64].float().div(255))
            )
        save_grid(_as_rgb(seen, contract.channels), paths.augment_grid)
        net.to(device)
        seed_everything(cfg.train.seed)  # the grid's draws do not shift training's random stream

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
    started = time.perf_counter()
    elapsed_before = ckpt["elapsed_s"] if ckpt else 0.0
    stop_reason = "epochs"
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        order = epoch_order(train_part.labels, cfg.train.balance, shuffle)
        batches = [
            order[i : i + cfg.train.batch_size]
            for i in range(0, steps_per_epoch * cfg.train.batch_size, cfg.train.batch_size)
        ]
        step, stats = train_one_epoch(
            stepper, batches, images, labels, step, f"epoch {epoch}/{cfg.train.epochs}"
        )
        selected = ema.module if ema is not None else net
        stats.update(
            validate(selected, val_part.images, val_part.labels, device, cfg.train.eval_batch_size)
        )
        stats = {
            "epoch": epoch,
            **stats,
            "lr": optimizer.param_groups[-1]["lr"],
            "elapsed_s": elapsed_before + time.perf_counter() - started,
        }
        history.append(stats)
        metric = stats[cfg.train.select_metric]
        improved = _better(cfg.train.select_metric, metric, best)
        if improved:
            best, best_epoch, bad_epochs = metric, epoch, 0
            save_model(
                run,
                selected,
                {
                    **meta,
                    "epoch": epoch,
                    "selected_on": {
                        cfg.train.select_metric: metric,
                        "part": "val",
                        "n": len(val_part),
                    },
                },
            )
        else:
            bad_epochs += 1
        print(
            f"epoch {epoch:>3}  loss {stats['train_loss']:.4f}  acc {stats['train_accuracy']:.3f}  "
            f"val_loss {stats['val_loss']:.4f}  val_acc {stats['val_accuracy']:.3f}  "
            f"{stats['images_per_s']:.0f} img/s{'  *' if improved else ''}",
            flush=True,
        )
        write_history(run, history)
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
            "rng": rng_state(shuffle),
            "best": best,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "history": history,
            "elapsed_s": stats["elapsed_s"],
        }
        save_checkpoint(paths.last_checkpoint, state)
        if improved:
            save_checkpoint(paths.best_checkpoint, state)
        if cfg.train.patience and bad_epochs >= cfg.train.patience:
            stop_reason = f"early stop: no better {cfg.train.select_metric} for {bad_epochs} epochs"
            break
        if cfg.train.max_minutes and stats["elapsed_s"] > cfg.train.max_minutes * 60:
            stop_reason = f"time budget of {cfg.train.max_minutes} min reached"
            break
        if stop_after is not None and epoch >= stop_after:
            stop_reason = f"stopped after epoch {epoch} (resume with --resume)"
            break
    plot_history(history, paths.curves)
    summary = {
        "run": str(run),
        "recipe": cfg.recipe,
        "model": cfg.model.name,
        "n_train": len(train_part),
        "n_val": len(val_part),
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "selected_on": cfg.train.select_metric,
        "best_value": best,
        "stop_reason": stop_reason,
        "train_seconds": history[-1]["elapsed_s"] if history else 0.0,
        "device": str(device),
        "precision": "bf16 autocast" if use_bf16(cfg, device) else "fp32",
        "threads": torch.get_num_threads(),
    }
    write_json(paths.summary, summary)
    return summary
