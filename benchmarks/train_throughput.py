"""Training images/s: pitguard's in-memory loop against ImageFolder + PIL transforms + DataLoader.

    .venv/bin/python benchmarks/train_throughput.py [--recipe cpu-fast] [--images 1024]

Both sides train the recipe's model with its batch size, optimizer step included, on the same
crops and with the same augmentations (flips, rotation/translate/scale, brightness and contrast
jitter, Gaussian blur; motion blur is left out of both because torchvision has none), measured in
one run on this machine. Writes JSON and prints a short table.
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

from pitguard.augment import build_augment
from pitguard.config import load_config
from pitguard.data.layout import find_dataset
from pitguard.data.load import load_crops
from pitguard.models import build_model, make_contract

SHARED = Path(__file__).resolve().parents[2] / "shared/data/cherry_classification/train"


def timed_steps(net, batches, loss_fn, optimizer) -> float:
    seen = 0
    start = time.perf_counter()
    for x, y in batches:
        loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def pitguard_batches(crops, augment, batch_size: int, n_images: int):
    order = torch.randperm(len(crops))[:n_images]
    for i in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[i : i + batch_size]
        x = crops.images[idx].float().div_(255)
        with torch.no_grad():
            x = augment(x)
        yield x, crops.labels[idx]


def baseline_loader(data: Path, cfg, batch_size: int, workers: int):
    from torchvision import datasets
    from torchvision import transforms as T

    a = cfg.augment
    tf = T.Compose(
        [
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
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="cpu-fast")
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--images", type=int, default=1024, help="images timed per side")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--json", default="runs/bench_train_throughput.json")
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"no data at {data}", file=sys.stderr)
        return 2
    cfg = load_config(args.recipe)
    cfg = replace(cfg, augment=replace(cfg.augment, motion_blur_p=0.0))
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    crops = load_crops(find_dataset(data))
    contract = make_contract(cfg.model, cfg.data.size)
    bs = cfg.train.batch_size

    def fresh():
        net = build_model(cfg.model.name, 2, contract).train()
        return net, torch.optim.AdamW(net.parameters(), lr=cfg.train.lr)

    loss_fn = nn.CrossEntropyLoss()
    net, opt = fresh()
    timed_steps(
        net, pitguard_batches(crops, build_augment(cfg.augment).train(), bs, 2 * bs), loss_fn, opt
    )  # warm up
    ours = timed_steps(
        net,
        pitguard_batches(crops, build_augment(cfg.augment).train(), bs, args.images),
        loss_fn,
        opt,
    )

    net, opt = fresh()
    loader = baseline_loader(data, cfg, bs, args.workers)

    def limited():
        seen = 0
        while True:
            for x, y in loader:
                if seen >= args.images:
                    return
                seen += len(y)
                yield x, y

    timed_steps(
        net, (b for b, _ in zip(limited(), range(2), strict=False)), loss_fn, opt
    )  # warm up
    base = timed_steps(net, limited(), loss_fn, opt)

    record = {
        "recipe": args.recipe,
        "model": cfg.model.name,
        "batch_size": bs,
        "images_timed": args.images,
        "threads": torch.get_num_threads(),
        "baseline_workers": args.workers,
        "cpu": platform.processor() or platform.machine(),
        "pitguard_images_per_s": ours,
        "baseline_images_per_s": base,
        "speedup": ours / base,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'loop':<44}{'images/s':>10}")
    print(f"{'pitguard (uint8 in memory, batched kornia)':<44}{ours:>10.1f}")
    print(f"{'ImageFolder + PIL transforms + DataLoader':<44}{base:>10.1f}")
    print(
        f"speedup {record['speedup']:.2f}x  ({args.recipe}: {cfg.model.name}, batch {bs}); wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
