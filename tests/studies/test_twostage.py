import json

from pitguard.cli import main
from pitguard.data.manifest import read_manifest
from pitguard.models.runfolder import load_run


def test_twostage_mines_only_train_val_and_reports_on_original_labels(synth_dir, tmp_path, capsys):
    out = tmp_path / "ts"
    sets = ["model.name=pitguard_tiny", "train.epochs=2", "train.threads=1", "train.batch_size=32"]
    args = [
        "twostage",
        "--data",
        str(synth_dir),
        "--out",
        str(out),
        "--stage2-epochs",
        "1",
        "--recipe",
        "small-fast",
    ]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "relabelled maybe" in text and "3-class argmax" in text

    rows = read_manifest(out / "mined.csv")
    original = {r.path: r for r in read_manifest(out / "stage1" / "split.csv")}
    assert {r.path for r in rows} == set(original)
    maybes = [r for r in rows if r.label == "maybe"]
    assert maybes and all(r.split in ("train", "val") for r in maybes)
    for r in rows:  # calib and test keep their original labels
        if r.split in ("calib", "test"):
            assert r.label == original[r.path].label
    mining = json.loads((out / "twostage.json").read_text())["mining"]
    assert mining["mined"] == len(maybes)

    assert load_run(out / "stage2").classes == ("clean", "maybe", "pit")
    table = json.loads((out / "routing_table.json").read_text())
    row = table["rows"][0]
    test_n = sum(1 for r in rows if r.split == "test")
    assert table["n"] == test_n and sum(row["routes"].values()) == test_n

    # The ensemble-disagreement route: stage 1 twice agrees with itself, so nothing is maybe.
    routing = tmp_path / "routing.json"
    ens = ["--ensemble", str(out / "stage1"), str(out / "stage1"), "--json", str(routing)]
    assert main(["routing", str(out / "stage2"), *ens]) == 0
    assert "ensemble disagreement" in capsys.readouterr().out
    ensemble_row = json.loads(routing.read_text())["rows"][-1]
    assert ensemble_row["routes"]["maybe"] == 0
