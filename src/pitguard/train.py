"""Training: one ``train()`` to read top to bottom, small helpers for the epoch and validation."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm.optim
import torch
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from pitguard import __version__
from pitguard.augment import build_augment, save_grid
from pitguard.config import Config, config_from_dict
from pitguard.data.layout import DatasetIndex, find_dataset, parse_class_mapping
from pitguard.data.load import Crops, DecodeOptions, load_crops
from pitguard.data.split import parse_fractions, split_dataset
from pitguard.errors import PitguardError
from pitguard.models import (
    PitguardNet,
    build_model,
    classifier_params,
    infer_logits,
    load_pretrained,
    make_contract,
)
from pitguard.runs import (
    load_checkpoint,
    model_meta,
    save_checkpoint,
    save_model,
    write_json,
)

REQUIRED_PARTS = ("train", "val")


# ---------------------------------------------------------------- data


def prepare_data(cfg: Config, run: Path) -> tuple[Crops, dict]:
    """Load the crops with a train/val/calib/test split; a class-folder dir is split here (seeded,
    duplicate-aware) and the manifest kept in the run folder."""
    if not cfg.data.path:
        raise PitguardError(
            "data.path is not set; pass --data DIR (or set data.path in the config)"
        )
    opts = DecodeOptions(size=cfg.data.size, modes=cfg.data.modes, sizes=cfg.data.sizes)
    mapping = parse_class_mapping(cfg.data.classes)
    index = find_dataset(cfg.data.path, mapping)
    manifest = run / "split.csv"
    if not any(it.split for it in index.items):
        if not manifest.exists():
            split_dataset(
                index, manifest, parse_fractions(cfg.data.fractions), cfg.data.split_seed, opts
            )
        index = find_dataset(manifest, {c: c for c in ("clean", "maybe", "pit")})
    if not manifest.exists():
        write_manifest(index, manifest)  # the run keeps the exact split it was trained on
    crops = load_crops(index, opts)
    present = set(crops.splits)
    missing = [p for p in REQUIRED_PARTS if p not in present]
    if missing:
        raise PitguardError(
            f"{cfg.data.path}: the split has no {', '.join(missing)} part; found "
            f"{', '.join(sorted(str(p) for p in present))}. Give a class-folder dir (pitguard splits it) "
            "or a manifest/split folders with train and val"
        )
    info = _data_info(index, crops, opts)
    return crops, info


def write_manifest(index: DatasetIndex, path: Path) -> None:
    """The index as a manifest beside the run, paths relative to it."""
    base = path.parent.resolve()
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "group"])
        for it in index.items:
            rel = os.path.relpath(Path(it.path).resolve(), base)
            writer.writerow([rel, index.classes[it.label], it.split or "", it.group or ""])


def _data_info(index: DatasetIndex, crops: Crops, opts: DecodeOptions) -> dict:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(crops.images.numpy().tobytes())
    digest.update(crops.labels.numpy().tobytes())
    digest.update(
        "\n".join(f"{p},{s}" for p, s in zip(crops.paths, crops.splits, strict=True)).encode()
    )
    counts: dict[str, dict[str, int]] = {}
    for lab, split in zip(crops.labels.tolist(), crops.splits, strict=True):
        per = counts.setdefault(str(split), dict.fromkeys(crops.classes, 0))
        per[crops.classes[lab]] += 1
    return {
        "root": str(index.root),
        "layout": index.layout,
        "classes": list(crops.classes),
        "fingerprint": digest.hexdigest(),
        "counts": counts,
        "problems": [p.__dict__ for p in crops.problems],
        "decode": opts.__dict__,
    }


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


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PitguardError("train.device=cuda but no CUDA device is available; use auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX): autocast then pays off.

    Elsewhere bf16 is emulated and slower than fp32, so training stays in fp32. Read once per
    process: every epoch asks.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast for the training step: on CUDA, and on CPUs with native bf16."""
    if not cfg.train.amp:
        return False
    return device.type == "cuda" or cpu_has_native_bf16()


# ---------------------------------------------------------------- optimisation


def make_optimizer(cfg: Config, net: PitguardNet):
    """Parameter groups: backbone and head (differential learning rates), no decay on norms/biases."""
    head = {id(p) for p in classifier_params(net.backbone)}
    groups = []
    for is_head in (False, True):
        if cfg.model.freeze_backbone and not is_head:
            continue
        lr = cfg.train.lr * (1.0 if is_head else cfg.train.backbone_lr_scale)
        params = [
            p for p in net.backbone.parameters() if p.requires_grad and (id(p) in head) == is_head
        ]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups += [
            {"params": decay, "lr": lr, "weight_decay": cfg.train.weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
    groups = [g for g in groups if g["params"]]
    kwargs: dict[str, Any] = (
        {"momentum": cfg.train.momentum} if cfg.train.optimizer == "sgd" else {}
    )
    return timm.optim.create_optimizer_v2(
        groups, opt=cfg.train.optimizer, lr=cfg.train.lr, **kwargs
    )


def make_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    t = cfg.train
    total = t.epochs * steps_per_epoch
    if t.schedule == "cosine":
        return CosineLRScheduler(
            optimizer,
            t_initial=total,
            lr_min=t.lr * 1e-3,
            warmup_t=int(t.warmup_epochs * steps_per_epoch),
            warmup_lr_init=t.lr * 1e-2,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    if t.schedule == "step":
        return StepLRScheduler(
            optimizer,
            decay_t=t.step_epochs * steps_per_epoch,
            decay_rate=t.step_gamma,
            t_in_epochs=False,
        )
    return StepLRScheduler(optimizer, decay_t=total + 1, decay_rate=1.0, t_in_epochs=False)


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=n_classes).float().clamp_min(1)
    return counts.sum() / (n_classes * counts)


# ---------------------------------------------------------------- epoch and validation


def epoch_order(labels: torch.Tensor, balance: str, generator: torch.Generator) -> torch.Tensor:
    n = len(labels)
    if balance == "sampler":
        weights = class_weights(labels, int(labels.max()) + 1)[labels]
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    return torch.randperm(n, generator=generator)


def train_one_epoch(
    net,
    ema,
    batches,
    images,
    labels,
    augment,
    loss_fn,
    optimizer,
    scheduler,
    step,
    cfg,
    device,
    desc,
):
    net.train()
    if cfg.model.freeze_backbone:
        net.backbone.eval()
        net.backbone.get_classifier().train()
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
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        scheduler.step_update(step)
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


def write_history(run: Path, history: list[dict]) -> None:
    """Rewritten whole every epoch: a resumed run never appends to an older run's rows."""
    (run / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    if history:
        with (run / "history.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)


def plot_history(run: Path, history: list[dict]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    epochs = [h["epoch"] for h in history]
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(epochs, [h["train_accuracy"] for h in history], label="train")
    ax2.plot(epochs, [h["val_accuracy"] for h in history], label="val")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(run / "curves.png", dpi=100)


# ---------------------------------------------------------------- train


def train(
    cfg: Config | None, run: str | Path, resume: bool = False, stop_after: int | None = None
) -> dict:
    """Train ``cfg`` into the run folder; ``resume`` continues from its last checkpoint.

    ``stop_after`` ends this call after that many epochs in total (a planned interruption).
    """
    run = Path(run)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
        cfg = config_from_dict(ckpt["config"])
    elif cfg is None:
        raise PitguardError("train needs a config, or resume=True to continue a run")
    elif (run / "checkpoints" / "last.pt").exists():
        raise PitguardError(
            f"{run}: already holds a run; use --resume to continue it or choose a new --out"
        )
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "config.json", cfg.to_dict())

    torch.set_flush_denormal(True)  # denormal floats slow CPU math ~10x
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    shuffle = torch.Generator().manual_seed(cfg.train.seed)

    crops, data_info = prepare_data(cfg, run)
    write_json(run / "data.json", data_info)
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
        save_grid(_as_rgb(seen, contract.channels), run / "augment_grid.png")
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
            net,
            ema,
            batches,
            images,
            labels,
            augment,
            loss_fn,
            optimizer,
            scheduler,
            step,
            cfg,
            device,
            f"epoch {epoch}/{cfg.train.epochs}",
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
        save_checkpoint(run / "checkpoints" / "last.pt", state)
        if improved:
            save_checkpoint(run / "checkpoints" / "best.pt", state)
        if cfg.train.patience and bad_epochs >= cfg.train.patience:
            stop_reason = f"early stop: no better {cfg.train.select_metric} for {bad_epochs} epochs"
            break
        if cfg.train.max_minutes and stats["elapsed_s"] > cfg.train.max_minutes * 60:
            stop_reason = f"time budget of {cfg.train.max_minutes} min reached"
            break
        if stop_after is not None and epoch >= stop_after:
            stop_reason = f"stopped after epoch {epoch} (resume with --resume)"
            break
    plot_history(run, history)
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
    write_json(run / "train_summary.json", summary)
    return summary
