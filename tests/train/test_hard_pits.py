"""Oversampling the hardest pits: which crops are drawn more often, from when, and a resumed run
that draws as an uninterrupted one."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch
from torch import nn

from pitguard.config import TrainConfig, load_config
from pitguard.models.runfolder import load_checkpoint
from pitguard.train.distributed import Dist
from pitguard.train.hard_pits import epoch_draw, hard_pit_weights
from pitguard.train.loop import train

PIT = 1


class Brightness(nn.Module):
    """Scores p(pit) by a crop's mean brightness: the darkest pits are the hardest."""

    def forward_one(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(m), 20 * (m - 0.5)], 1)


def _setup(hard_pits: float, weight: float = 4.0, balance: str = "none", warmup: float = 1.0):
    labels = torch.tensor([0, 1] * 20)
    levels = torch.arange(40, dtype=torch.uint8) * 6  # crop i has brightness 6 i
    images = levels.view(-1, 1, 1, 1).expand(-1, 3, 8, 8).contiguous()
    t = dataclasses.replace(
        TrainConfig(),
        hard_pits=hard_pits,
        hard_pit_weight=weight,
        balance=balance,
        warmup_epochs=warmup,
        eval_batch_size=7,
    )
    return SimpleNamespace(
        cfg=SimpleNamespace(train=t),
        train_part=SimpleNamespace(labels=labels),
        crops=SimpleNamespace(classes=("clean", "pit")),
        stepper=SimpleNamespace(kept=Brightness()),
        dist=Dist(),
        device=torch.device("cpu"),
        images=images,
        shuffle=torch.Generator().manual_seed(0),
    )


def test_the_lowest_scored_pits_get_the_weight_and_nothing_else_does():
    s = _setup(hard_pits=0.2, weight=5.0)
    w = hard_pit_weights(s, PIT)
    # pits are the odd crops; the 4 darkest (20% of 20) are crops 1, 3, 5, 7
    assert torch.nonzero(w == 5.0).flatten().tolist() == [1, 3, 5, 7]
    assert (w[w != 5.0] == 1.0).all() and len(w) == 40


def test_warmup_keeps_the_plain_order_and_later_epochs_draw_the_hard_pits_more_often():
    s = _setup(hard_pits=0.2, weight=20.0, warmup=1)
    first = epoch_draw(s, 1)
    assert sorted(first.tolist()) == list(range(40))  # a permutation: each crop once
    draws = torch.cat([epoch_draw(s, e) for e in range(2, 12)])
    counts = torch.bincount(draws, minlength=40).double()
    # 4 crops of weight 20 against 36 of weight 1: 80/116 of the draws, against 10% unweighted
    hard = counts[[1, 3, 5, 7]].sum() / counts.sum()
    assert 0.6 < hard < 0.78
    off = _setup(hard_pits=0.0)
    assert sorted(epoch_draw(off, 5).tolist()) == list(range(40))


def test_a_run_oversampling_hard_pits_resumed_reaches_the_same_weights(synth_dir, tmp_path):
    sets = ["model.name=pitguard_tiny", "train.epochs=3", "train.threads=1", "train.max_minutes=0"]
    sets += ["train.hard_pits=0.25", "train.warmup_epochs=1", "train.ema_decay=0"]
    cfg = load_config("small-fast", sets=sets, extra={"data.path": str(synth_dir)})
    same_but_hard = [s for s in sets if not s.startswith("train.hard_pits")]
    plain = load_config("small-fast", sets=same_but_hard, extra={"data.path": str(synth_dir)})
    train(cfg, tmp_path / "full")
    train(plain, tmp_path / "plain")
    train(cfg, tmp_path / "cut", stop_after=2)
    train(None, tmp_path / "cut", resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    c = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the draws changed what it learned
