"""Data-parallel training under ``torchrun``: ranks, sharded batches, gathered validation.

``torchrun --nproc-per-node N -m pitguard train ...`` starts N processes; each reads its rank
from the environment torchrun sets. Every rank draws the same epoch permutation (one shared
seed) and takes its share of each global batch, so ``train.batch_size`` stays the global batch
whatever N is; DDP averages the gradients; augmentation and dropout draw from a per-rank seed.
Validation is gathered: each rank scores its share of the val part and every rank computes the
metrics on all of it, so all ranks choose and stop alike. Only rank 0 writes files or prints.
Backend: nccl on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import datetime
import io
import os
import sys
from dataclasses import dataclass

import torch
from torch import distributed as tdist
from torch import nn

from pitguard.core.devices import usable_cores
from pitguard.core.errors import PitguardError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; one process (rank 0 of 1) when not under torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """The one process that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def seed(self, seed: int) -> int:
        """The seed of this rank's augmentation and dropout draws (rank 0: the config's)."""
        return seed + self.rank

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's share of one global batch of indices."""
        return batch[self.rank :: self.world] if self.active else batch

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process on CUDA (its local rank); the CPU as it is."""
        if device.type == "cuda" and self.active:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def threads(self) -> int:
        """CPU threads for this process: the machine's cores shared among its processes."""
        return max(1, usable_cores() // self.local_world)

    def start(self, device: torch.device) -> None:
        if self.active and not tdist.is_initialized():
            _die_with_parent()  # torchrun killed (even by kill -9): its workers end too
            backend = "nccl" if device.type == "cuda" else "gloo"
            tdist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))

    def stop(self) -> None:
        if self.active and tdist.is_initialized():
            tdist.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """The training forward wrapped in DDP (gradients averaged over ranks)."""
        if not self.active:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def slowest(self, seconds: float) -> float:
        """The largest of every rank's value: one epoch plan for all."""
        if not self.active:
            return seconds
        t = torch.tensor([seconds], dtype=torch.float64)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return float(t)

    def gather(self, obj):
        """Every rank's ``obj`` (tensors, numbers, strings, lists, dicts), in rank order, on
        every rank; sent as ``torch.save`` bytes and read back with ``weights_only=True``."""
        if not self.active:
            return [obj]
        buf = io.BytesIO()
        torch.save(obj, buf)
        out: list = [None] * self.world
        tdist.all_gather_object(out, buf.getvalue())
        return [torch.load(io.BytesIO(b), weights_only=True) for b in out]

    def mean_stats(self, stats: dict) -> dict:
        """Train loss and accuracy averaged over ranks; throughput summed."""
        if not self.active:
            return stats
        parts = self.gather(stats)
        return {
            "train_loss": sum(p["train_loss"] for p in parts) / self.world,
            "train_accuracy": sum(p["train_accuracy"] for p in parts) / self.world,
            "images_per_s": sum(p["images_per_s"] for p in parts),
        }

    def gather_logits(self, score, images: torch.Tensor) -> torch.Tensor:
        """``score(images)`` computed in shares across ranks, reassembled in order on each."""
        if not self.active:
            return score(images)
        mine = score(images[self.rank :: self.world]).cpu()
        parts = self.gather(mine)
        shaped = next(p for p in parts if p.numel())  # a rank with no share scores nothing
        out = torch.empty(len(images), *shaped.shape[1:], dtype=shaped.dtype)
        for r, part in enumerate(parts):
            if part.numel():
                out[r :: self.world] = part
        return out


def from_env() -> Dist:
    """The job torchrun described in the environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(
        rank=int(os.environ["RANK"]),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
    )


def check_resume(dist: Dist, saved_world: int | None, run) -> None:
    """A run resumes with the number of processes it was trained with."""
    saved = saved_world or 1
    if saved != dist.world:
        how = (
            "pitguard train --resume RUN"
            if saved == 1
            else f"torchrun --nproc-per-node {saved} -m pitguard train --resume RUN (or --nproc {saved})"
        )
        raise PitguardError(
            f"{run}: trained with {saved} process{'es' if saved > 1 else ''}, this job has "
            f"{dist.world}; resume with the same number: {how.replace('RUN', str(run))}"
        )


def check_sync_bn(sync_bn: bool, device: torch.device) -> None:
    if sync_bn and device.type != "cuda":
        raise PitguardError(
            "train.sync_bn=true needs CUDA (PyTorch synchronises BatchNorm on GPUs only); "
            "set train.sync_bn=false on the CPU"
        )


def _die_with_parent() -> None:
    """Linux: SIGKILL to this process when its parent (the torchrun agent) dies; an orphaned
    worker would otherwise go on writing into the run folder a resumed job is using."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
