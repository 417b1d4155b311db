"""Tests for pitguard.train.distributed: data-parallel training under torchrun (gloo on the CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pitguard.cli import main
from pitguard.core.errors import PitguardError
from pitguard.core.files import read_json
from pitguard.models.runfolder import load_checkpoint
from pitguard.train.distributed import Dist, check_resume, check_sync_bn, from_env

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# Learns within seconds on easy synthetic crops; the last epoch is kept, so nothing is chosen.
SETS = [
    "model.name=pitguard_tiny",
    "train.max_minutes=0",
    "train.ema_decay=0",
    "model.normalize=data",
    "train.select_metric=last",
]


def _sets(*extra: str) -> list[str]:
    return [arg for s in (*SETS, *extra) for arg in ("--set", s)]


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "pitguard",
        "train",
        "--recipe",
        "small-fast",
        "--data",
        str(data),
        "--out",
        str(out),
        *_sets(*extra),
    ]


@pytest.fixture(scope="module")
def easy_crops(tmp_path_factory) -> Path:
    from pitguard.data.synth import synthesize

    crops = tmp_path_factory.mktemp("ddp") / "crops"
    synthesize(crops, count=800, seed=3, difficulty=0.2)
    return crops


def test_each_rank_takes_a_disjoint_share_of_every_global_batch():
    batch = torch.arange(11)
    shares = [Dist(rank=r, world=3).shard(batch) for r in range(3)]
    assert sorted(torch.cat(shares).tolist()) == list(range(11))
    assert [len(s) for s in shares] == [4, 4, 3]
    assert Dist().shard(batch) is batch and Dist().main and not Dist().active
    assert [Dist(rank=r, world=2).seed(7) for r in range(2)] == [7, 8]


def test_the_job_is_read_from_torchruns_environment(monkeypatch):
    for key, value in {
        "WORLD_SIZE": "4",
        "RANK": "3",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }.items():
        monkeypatch.setenv(key, value)
    assert from_env() == Dist(rank=3, world=4, local_rank=1, local_world=2)
    assert not from_env().main
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert from_env() == Dist()


def test_resume_with_another_number_of_processes_says_how_to_resume(tmp_path):
    with pytest.raises(
        PitguardError, match="torchrun --nproc-per-node 2 -m pitguard train --resume"
    ):
        check_resume(Dist(), 2, tmp_path)
    with pytest.raises(PitguardError, match="trained with 1 process, this job has 2"):
        check_resume(Dist(rank=0, world=2), None, tmp_path)  # checkpoints from before torchrun
    check_resume(Dist(rank=1, world=2), 2, tmp_path)
    with pytest.raises(PitguardError, match=r"train\.sync_bn=true needs CUDA"):
        check_sync_bn(True, torch.device("cpu"))


@pytest.mark.slow
def test_two_ranks_match_one_rank_and_write_one_set_of_files(easy_crops, tmp_path):
    """Same global batch (64) and seed: 2 gloo ranks end within 6 of 80 val crops of 1 rank
    (the ranks draw their own augmentation and keep BatchNorm statistics of their own share)."""
    one = subprocess.run(
        [
            sys.executable,
            *_train_cmd(easy_crops, tmp_path / "one", "train.epochs=15", "train.threads=1"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [*TORCHRUN, *_train_cmd(easy_crops, tmp_path / "two", "train.epochs=15")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr
    s1, s2 = (
        read_json(tmp_path / "one" / "train_summary.json"),
        read_json(tmp_path / "two" / "train_summary.json"),
    )
    assert (s1["world_size"], s2["world_size"], s2["rank_seeds"]) == (1, 2, [0, 1])
    ckpt1 = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    ckpt2 = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert ckpt1["step"] == ckpt2["step"]  # the same number of global-batch steps
    acc1, acc2 = ckpt1["history"][-1]["val_accuracy"], ckpt2["history"][-1]["val_accuracy"]
    assert acc1 > 0.75 and abs(acc1 - acc2) <= 6 / 80, (acc1, acc2)
    assert len(ckpt2["rng_ranks"]) == 2 and ckpt2["world_size"] == 2
    # one writer: one line per epoch, one event file, one run folder, no rank's stray output
    assert two.stdout.count("epoch  15/15") == 1
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert len(ckpt2["history"]) == 15


def _workers_of(run: Path) -> list[int]:
    """Live processes whose command line names RUN."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split()[2]
        except (OSError, ValueError):
            continue
        if str(run) in cmd and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_a_killed_torchrun_job_resumes_under_torchrun(easy_crops, tmp_path):
    run = tmp_path / "run"
    job = subprocess.Popen(
        [*TORCHRUN, *_train_cmd(easy_crops, run, "train.epochs=40")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # a few more epochs: the kill lands mid-run
    assert job.poll() is None, "the job ended before it could be killed"
    os.killpg(job.pid, signal.SIGKILL)  # torchrun's agent; its workers die with it
    job.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _workers_of(run) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _workers_of(run) == [], "a worker outlived the killed job"
    killed_at = load_checkpoint(last)["epoch"]
    assert killed_at < 40

    alone = main(["train", "--resume", str(run)])  # one process cannot resume a 2-process run
    assert alone == 2
    resumed = subprocess.run(
        [*TORCHRUN, "-m", "pitguard", "train", "--resume", str(run)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} after epoch {killed_at}" in resumed.stdout
    summary = read_json(run / "train_summary.json")
    assert summary["epochs_run"] == 40 and summary["world_size"] == 2
    assert [h["epoch"] for h in load_checkpoint(last)["history"]] == list(range(1, 41))
