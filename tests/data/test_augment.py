"""Tests for pitguard.data.augment's mixup and a training run that uses it."""

import numpy as np
import torch

from pitguard.config import AugmentConfig
from pitguard.data.augment import mixup, preview
from pitguard.models.runfolder import load_run
from pitguard.train.loop import train
from tests.train.test_train import tiny_config


def test_mixup_blends_each_crop_with_its_mirror_partner_by_one_weight():
    torch.manual_seed(0)
    x = torch.rand(5, 2, 8, 8)
    x[:, :, :2] = 0  # masked background in every crop
    np.random.seed(0)
    mixed, lam = mixup(x, 0.4)
    assert 0 < lam < 1 and lam != 0.5
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0))
    assert torch.allclose(mixed[2], x[2])  # an odd batch: the middle crop meets itself
    assert torch.equal(mixed[:, :, :2], torch.zeros(5, 2, 2, 8))  # background stays background
    np.random.seed(0)
    assert mixup(x, 0.4)[1] == lam  # numpy's seeded generator draws the weight


def test_mixup_weights_follow_alpha():
    np.random.seed(1)
    x = torch.ones(2, 1, 1, 1)
    sharp = np.array([mixup(x, 0.1)[1] for _ in range(400)])
    flat = np.array([mixup(x, 50.0)[1] for _ in range(400)])
    assert (np.minimum(sharp, 1 - sharp) < 0.1).mean() > 0.6  # mostly one crop of the two
    assert np.abs(flat - 0.5).max() < 0.25  # always near an even blend


def _weights(run):
    return load_run(run).net.state_dict()


def test_mixup_changes_training_and_is_off_with_the_rest_of_augmentation(synth_dir, tmp_path):
    one = ["train.epochs=1"]
    train(tiny_config(synth_dir, *one), tmp_path / "plain")
    train(tiny_config(synth_dir, *one, "augment.mixup_alpha=0.4"), tmp_path / "mixed")
    plain, mixed = _weights(tmp_path / "plain"), _weights(tmp_path / "mixed")
    assert not all(torch.equal(plain[k], mixed[k]) for k in plain)
    config = load_run(tmp_path / "mixed").config
    assert config is not None and config.augment.mixup_alpha == 0.4

    off = [*one, "augment.enabled=false"]
    train(tiny_config(synth_dir, *off), tmp_path / "off")
    train(tiny_config(synth_dir, *off, "augment.mixup_alpha=0.4"), tmp_path / "off-mixup")
    a, b = _weights(tmp_path / "off"), _weights(tmp_path / "off-mixup")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_augmentation_grid_shows_the_blended_crops(trained_run):
    net = load_run(trained_run).net
    images = torch.randint(0, 256, (6, 3, 128, 128), dtype=torch.uint8)
    channels = net.contract.channels
    still = dict(hflip=0, vflip=0, rotate=0, translate=0, scale_min=1, scale_max=1)
    still.update(brightness=0, contrast=0, blur_p=0, motion_blur_p=0)
    plain = preview(AugmentConfig(**still), net, images, channels)
    np.random.seed(3)
    blended = preview(AugmentConfig(**still, mixup_alpha=0.4), net, images, channels)
    np.random.seed(3)
    lam = mixup(plain, 0.4)[1]
    assert torch.allclose(blended, lam * plain + (1 - lam) * plain.flip(0), atol=1e-6)
