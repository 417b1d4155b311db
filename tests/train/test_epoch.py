"""Tests for train.epoch and train.distill: the distillation loss, a student taught by a teacher."""

import hashlib

import pytest
import torch
from torch.nn import functional as F

from pitguard.config import load_config
from pitguard.core.errors import PitguardError
from pitguard.models.runfolder import RunPaths
from pitguard.train.distill import distillation_loss, load_teacher
from pitguard.train.loop import train


def test_distillation_loss_weighs_hard_and_soft_labels():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 2), torch.randn(8, 2)
    labels = torch.randint(0, 2, (8,))
    hard = F.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, hard, 0.0, 4.0), hard)
    soft = distillation_loss(student, teacher, hard, 1.0, 2.0)
    p_t = F.softmax(teacher / 2, 1)
    reference = (p_t * (p_t.log() - F.log_softmax(student / 2, 1))).sum(1).mean() * 4
    assert torch.allclose(soft, reference)
    assert distillation_loss(teacher, teacher, hard * 0, 1.0, 3.0).abs() < 1e-6  # agreeing: 0


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_student_learns_from_a_frozen_teacher_run(trained_run, synth_dir, tmp_path):
    before = _digest(RunPaths(trained_run).weights)
    sets = [
        "model.name=pitguard_tiny",
        "model.crop=64",  # the student reads another crop than the teacher: each its own
        "train.epochs=1",
        "train.threads=1",
        "train.max_minutes=0",
        f"train.teacher={trained_run}",
        "train.distill_alpha=0.7",
        "train.distill_temperature=2",
        "augment.mixup_alpha=0.4",  # the teacher scores the same blended crops
    ]
    cfg = load_config("small-fast", sets=sets, extra={"data.path": str(synth_dir)})
    summary = train(cfg, tmp_path / "student")
    assert summary["teacher"] == str(trained_run) and summary["epochs_run"] == 1
    assert _digest(RunPaths(trained_run).weights) == before  # the teacher is never trained
    with pytest.raises(PitguardError, match=r"classes clean, pit differ from the data's"):
        load_teacher(cfg, ("clean", "maybe", "pit"), torch.device("cpu"))


def test_per_epoch_val_and_a_teacher_read_one_view(trained_run, synth_dir, tmp_path):
    """Test-time views are the finished model's: training's val and a teacher's soft labels
    cost one pass over the crops, not eight."""
    import json

    from pitguard.models.nets import InputContract, build_model
    from pitguard.train.epoch import validate
    from tests.conftest import copy_run

    net = build_model("pitguard_tiny", 2, InputContract(channels=(0, 2), tta="d8"))
    seen: list[int] = []
    net.backbone.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    images = torch.randint(0, 256, (5, 3, 128, 128), dtype=torch.uint8)
    stats = validate(net, images, torch.tensor([0, 1, 0, 1, 0]), "cpu", 256)
    assert seen == [5] and 0 <= stats["val_accuracy"] <= 1
    with torch.no_grad():
        net.eval()(images.float() / 255)
    assert seen[-1] == 40  # the finished model reads all eight views

    run = copy_run(trained_run, tmp_path / "teacher")
    meta_path = RunPaths(run).model
    meta = json.loads(meta_path.read_text())
    meta["input"]["tta"] = "d8"
    meta_path.write_text(json.dumps(meta))
    cfg = load_config(
        "small-fast", sets=[f"train.teacher={run}"], extra={"data.path": str(synth_dir)}
    )
    teacher = load_teacher(cfg, ("clean", "pit"), torch.device("cpu"))
    seen.clear()
    teacher.net.backbone.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        teacher(images.float() / 255)
    assert teacher.net.contract.tta == "d8" and seen == [5]
