import json

import numpy as np
import pytest

from pitguard.cli import main
from pitguard.data.audit import audit
from tests.conftest import random_crop, write_png


@pytest.fixture
def dup_data(tmp_path):
    """Split folders with an exact duplicate across splits, a near duplicate and a label conflict."""
    root = tmp_path / "d"
    for i in range(4):
        write_png(root / "train" / "clean" / f"c{i}.png", random_crop(i))
        write_png(root / "train" / "pit" / f"p{i}.png", random_crop(10 + i))
    write_png(root / "val" / "clean" / "copy_of_c0.png", random_crop(0))
    near = random_crop(1).astype(np.int16)
    near[near > 0] += 1  # one grey level brighter: same crop, re-encoded or re-exposed
    write_png(root / "val" / "clean" / "near_c1.png", near.clip(0, 255).astype(np.uint8))
    write_png(root / "val" / "pit" / "conflict_c2.png", random_crop(2))
    (root / "val" / "pit" / "broken.png").write_bytes(b"\x89PNG\r\n")
    return root


def test_audit_finds_duplicates_leakage_conflicts_and_bad_files(dup_data):
    r = audit(dup_data)
    assert r["classes"] == {"clean": 6, "pit": 5}
    assert r["splits"] == {"train": {"clean": 4, "pit": 4}, "val": {"clean": 2, "pit": 1}}
    assert sorted(r["duplicates"]) == [
        ["train/clean/c0.png", "val/clean/copy_of_c0.png"],
        ["train/clean/c2.png", "val/pit/conflict_c2.png"],
    ]
    assert ["train/clean/c1.png", "val/clean/near_c1.png"] in r["near_duplicates"]
    assert len(r["cross_split_duplicates"]) == 2
    assert ["train/clean/c2.png", "val/pit/conflict_c2.png"] in r["label_conflicts"]
    assert r["unreadable"][0]["path"] == "val/pit/broken.png"
    green = r["channels"][1]
    assert green["channel"] == "G" and green["constant"] and green["max"] == 0
    assert not r["channels"][0]["constant"]
    assert 0.7 < r["background_fraction"] < 0.85


def test_audit_cli_writes_json_and_summary(dup_data, tmp_path, capsys):
    out = tmp_path / "a.json"
    assert main(["data", "audit", str(dup_data), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "channel G: mean 0.0" in text and "CONSTANT" in text
    assert "cross-split duplicate groups: 2, label conflicts: 2" in text
    data = json.loads(out.read_text())
    for key in (
        "classes",
        "splits",
        "unreadable",
        "odd",
        "duplicates",
        "near_duplicates",
        "cross_split_duplicates",
        "label_conflicts",
    ):
        assert key in data


def test_audit_cli_error_exits_2_with_message(tmp_path, capsys):
    assert main(["data", "audit", str(tmp_path / "missing")]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err


@pytest.mark.shared_data
def test_shared_crops_audit(shared_train):
    r = audit(shared_train)
    assert r["classes"] == {"clean": 1978, "pit": 1698}
    assert len(r["duplicates"]) == 30 and all(len(g) == 2 for g in r["duplicates"])
    assert r["channels"][1]["constant"] and r["channels"][1]["max"] == 0
    assert r["unreadable"] == [] and r["odd"] == []


def test_channel_stats_are_exact_over_all_pixels_and_the_cherry():
    import numpy as np
    import torch

    from pitguard.data.audit import channel_stats

    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (6, 3, 16, 16), dtype=np.uint8))
    images[:, :, :5] = 0  # background: zero in every channel
    images[0, 1, 8, 8] = 0  # a zero inside the cherry stays cherry
    x = images.double()
    cherry = images.amax(dim=1) > 0
    for c, stats in enumerate(channel_stats(images)):
        inside = x[:, c][cherry]
        assert (stats["min"], stats["max"]) == (int(x[:, c].min()), int(x[:, c].max()))
        assert stats["mean"] == round(float(x[:, c].mean()), 3)
        assert stats["std"] == round(float(x[:, c].std()), 3)
        assert stats["mean_inside"] == round(float(inside.mean()), 3)
        assert stats["std_inside"] == round(float(inside.std()), 3)


def test_the_text_report_names_the_files_of_a_label_conflict(dup_data):
    from pitguard.data.audit import format_audit

    text = format_audit(audit(dup_data))
    lines = [ln for ln in text.splitlines() if ln.startswith("  label conflict:")]
    assert lines and all("train/clean/c2.png" in ln and "conflict_c2.png" in ln for ln in lines)
