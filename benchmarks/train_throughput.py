"""Training images/s: pitguard's loop against ImageFolder + PIL transforms + DataLoader.

    .venv/bin/python benchmarks/train_throughput.py [--recipe cpu-fast] [--images 2560]

Both sides train the recipe's model (PitguardNet: channel selection, centre crop, backbone) with
its batch size and optimizer, on the same crops and with the recipe's augmentations as torchvision
has them (flips, rotation/translate/scale, brightness and contrast, Gaussian blur; motion blur is
left out of both because torchvision has none). The baseline cuts the recipe's centre square
before augmenting, as pitguard does; it augments all three channels where pitguard augments the
ones the model reads. Measured in one run on this machine:

- pitguard: ``pitguard.train.loop.train_one_epoch``, the loop ``pitguard train`` runs (uint8 crops in
  memory, batched kornia augmentation, bf16 autocast and channels-last where the device has them,
  EMA as the recipe sets it);
- baseline: torchvision ImageFolder + PIL transforms + DataLoader, and the plain float32 step a
  notebook runs; the fastest of 0, 1 and 2 worker processes counts;
- baseline loader + pitguard's step: the same loader feeding pitguard's step precision and memory
  layout, which separates what the data path gives from what the step precision gives;
- baseline loader alone (no model): the most any step could get out of that loader.

Writes JSON and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from pitguard.config import load_config
from pitguard.data.augment import build_augment
from pitguard.data.layout import find_dataset
from pitguard.data.load import load_crops
from pitguard.models.nets import build_model, live_channels, make_contract
from pitguard.train.epoch import Stepper, train_one_epoch, use_bf16
from pitguard.train.optim import make_optimizer, make_scheduler

SHARED = Path(__file__).resolve().parents[2] / "shared/data/cherry_classification/train"


def baseline_loader(data: Path, cfg, batch_size: int, workers: int):
    from torchvision import datasets
    from torchvision import transforms as T

    a = cfg.augment
    crop = [T.CenterCrop(cfg.model.crop)] if cfg.model.crop else []
    tf = T.Compose(
        [
            *crop,
            T.RandomHorizontalFlip(a.hflip),
            T.RandomVerticalFlip(a.vflip),
            T.RandomAffine(
                a.rotate, translate=(a.translate, a.translate), scale=(a.scale_min, a.scale_max)
            ),
            T.ColorJitter(brightness=a.brightness, contrast=a.contrast),
            T.RandomApply([T.GaussianBlur(5, sigma=(0.1, a.blur_sigma))], p=a.blur_p),
            T.ToTensor(),
        ]
    )
    ds = datasets.ImageFolder(str(data), transform=tf)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )


def loader_batches(loader, n_images: int):
    seen = 0
    while True:
        for x, y in loader:
            if seen >= n_images:
                return
            seen += len(y)
            yield x, y


def baseline_rate(net, batches, optimizer, bf16: bool, channels_last: bool) -> float:
    """images/s of a plain step (the recipe's model, loss and optimizer) over ``batches``."""
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    seen = 0
    start = time.perf_counter()
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="cpu-fast")
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--images", type=int, default=2560, help="images timed per row")
    parser.add_argument(
        "--workers",
        default="0,1,2",
        help="DataLoader worker counts tried for the baseline; the fastest counts (default 0,1,2)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="recipe overrides, e.g. train.channels_last=false",
    )
    parser.add_argument("--json", default="runs/bench_train_throughput.json")
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"no data at {data}", file=sys.stderr)
        return 2
    cfg = load_config(args.recipe, sets=args.set)
    cfg = replace(cfg, augment=replace(cfg.augment, motion_blur_p=0.0))
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    device = torch.device("cpu")
    crops = load_crops(find_dataset(data))
    if args.images > len(crops):
        print(f"--images {args.images} exceeds the {len(crops)} crops in {data}", file=sys.stderr)
        return 2
    channels = live_channels(crops.images, cfg.model.channels) if cfg.model.live_channels else None
    contract = make_contract(cfg.model, cfg.data.size, channels=channels)
    bs = cfg.train.batch_size
    bf16 = use_bf16(cfg, device)

    def fresh():
        net = build_model(cfg.model.name, 2, contract, cfg.model.drop_rate)
        return net, make_optimizer(cfg, net)

    # pitguard: the training loop itself, on the recipe's settings
    from timm.utils import ModelEmaV3

    def pitguard_rate(n_images: int) -> float:
        net, opt = fresh()
        if cfg.train.channels_last:
            net.to(memory_format=torch.channels_last)
        ema = ModelEmaV3(net, decay=cfg.train.ema_decay) if cfg.train.ema_decay else None
        sched = make_scheduler(cfg, opt, max(1, n_images // bs))
        order = torch.randperm(len(crops))
        batches = [order[i : i + bs] for i in range(0, n_images - bs + 1, bs)]
        stepper = Stepper(
            net,
            ema,
            build_augment(cfg.augment),
            nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing),
            opt,
            sched,
            cfg,
            device,
        )
        _, stats = train_one_epoch(stepper, batches, crops.images, crops.labels, 0, "pitguard")
        return stats["images_per_s"]

    pitguard_rate(8 * bs)  # warm up (oneDNN builds its kernels on the first steps)
    ours = pitguard_rate(args.images)

    def loader_rate(loader, bf16_step: bool, channels_last: bool) -> float:
        net, opt = fresh()
        baseline_rate(net, loader_batches(loader, 8 * bs), opt, bf16_step, channels_last)  # warm up
        return baseline_rate(
            net, loader_batches(loader, args.images), opt, bf16_step, channels_last
        )

    by_workers = {}
    for workers in (int(w) for w in args.workers.split(",")):
        by_workers[workers] = loader_rate(baseline_loader(data, cfg, bs, workers), False, False)
    best_workers = max(by_workers, key=by_workers.__getitem__)
    base = by_workers[best_workers]
    loader = baseline_loader(data, cfg, bs, best_workers)
    base_step = loader_rate(loader, bf16, cfg.train.channels_last)
    start = time.perf_counter()
    seen = sum(len(y) for _, y in loader_batches(loader, args.images))
    loader_only = seen / (time.perf_counter() - start)

    record = {
        "recipe": args.recipe,
        "overrides": args.set,
        "model": cfg.model.name,
        "input": contract.to_dict(),
        "batch_size": bs,
        "images_timed": args.images,
        "threads": torch.get_num_threads(),
        "baseline_workers": best_workers,
        "baseline_images_per_s_by_workers": by_workers,
        "cpu": platform.processor() or platform.machine(),
        "pitguard_precision": "bf16 autocast" if bf16 else "fp32",
        "pitguard_images_per_s": ours,
        "baseline_images_per_s": base,
        "baseline_loader_pitguard_step_images_per_s": base_step,
        "baseline_loader_only_images_per_s": loader_only,
        "speedup": ours / base,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    step = f"{'bf16' if bf16 else 'fp32'}{', channels-last' if cfg.train.channels_last else ''}"
    rows = [
        (f"pitguard loop (in-memory uint8, kornia, {step})", ours),
        (f"ImageFolder + PIL + DataLoader ({best_workers} workers), fp32 step", base),
        (f"ImageFolder + PIL + DataLoader, {step} step", base_step),
        ("ImageFolder + PIL + DataLoader, no model", loader_only),
    ]
    print(f"{'loop':<58}{'images/s':>10}{'vs baseline':>13}")
    for name, rate in rows:
        print(f"{name:<58}{rate:>10.1f}{rate / base:>12.2f}x")
    print(
        f"speedup {record['speedup']:.2f}x  ({args.recipe}: {cfg.model.name}, batch {bs}, "
        f"{torch.get_num_threads()} threads); baseline by workers: "
        + ", ".join(f"{w}: {r:.0f}" for w, r in by_workers.items())
        + f" images/s; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
