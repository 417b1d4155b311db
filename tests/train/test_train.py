import json
import shutil

import pytest
import torch
from PIL import Image

from pitguard.cli import main
from pitguard.config import load_config
from pitguard.core.errors import Diverged
from pitguard.data.manifest import read_manifest
from pitguard.evaluate.run import evaluate_run
from pitguard.models.runfolder import load_checkpoint, load_run
from pitguard.train import epoch as epoch_module
from pitguard.train import loop as train_module
from pitguard.train.loop import train

TINY = [
    "model.name=pitguard_tiny",
    "train.epochs=3",
    "train.batch_size=32",
    "train.threads=1",
    "train.max_minutes=0",  # no time budget: the runs are not timed first (tests/test_budget.py)
    "train.eval_batch_size=64",
    "augment.motion_blur_p=0.5",
    "augment.blur_p=0.5",
    "augment.erase_p=0.3",
    "model.drop_rate=0.2",
]


def tiny_config(data, *extra):
    return load_config("small-fast", sets=[*TINY, *extra], extra={"data.path": str(data)})


def test_resumed_run_ends_with_the_same_weights(synth_dir, tmp_path):
    # mixup draws its weights from numpy's generator: the checkpoint must carry that one too
    cfg = tiny_config(synth_dir, "train.ema_decay=0.9", "augment.mixup_alpha=0.4")
    train(cfg, tmp_path / "full")
    summary = train(cfg, tmp_path / "cut", stop_after=1)
    assert summary["epochs_run"] == 1 and "resume" in summary["stop_reason"]
    train(None, tmp_path / "cut", resume=True)
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert cut["epoch"] == full["epoch"] == 3
    for key, value in full["model"].items():
        assert torch.equal(value, cut["model"][key]), key
    for key, value in full["ema"].items():
        assert torch.equal(value, cut["ema"][key]), key
    # History is rewritten, never appended: one row per epoch, the same losses.
    rows = [
        json.loads(line) for line in (tmp_path / "cut" / "history.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    full_rows = [
        json.loads(line) for line in (tmp_path / "full" / "history.jsonl").read_text().splitlines()
    ]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in full_rows]


def test_same_seed_same_weights_other_seed_differs(synth_dir, tmp_path):
    cfg = tiny_config(synth_dir, "train.epochs=1")
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    train(tiny_config(synth_dir, "train.epochs=1", "train.seed=1"), tmp_path / "c")
    a, b, c = (load_run(tmp_path / n).net.state_dict() for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_run_folder_contents_and_split_never_trains_on_test(synth_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(synth_dir, "train.epochs=2"), run)
    for name in (
        "config.json",
        "data.json",
        "split.csv",
        "model.safetensors",
        "model.json",
        "history.csv",
        "history.jsonl",
        "curves.png",
        "augment_grid.png",
        "train_summary.json",
        "checkpoints/best.pt",
    ):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["name"] == "pitguard_tiny" and cfg["recipe"] == "small-fast"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert json.loads(json.dumps(ckpt["config"])) == cfg and ckpt["model_name"] == "pitguard_tiny"
    meta = json.loads((run / "model.json").read_text())
    assert meta["selected_on"]["part"] == "val"
    counts = json.loads((run / "data.json").read_text())["counts"]
    assert set(counts) == {"train", "val", "calib", "test"}
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["n_train"] == sum(counts["train"].values())
    assert summary["n_val"] == sum(counts["val"].values())
    grid = Image.open(run / "augment_grid.png")
    assert grid.size[0] > 500


def test_summary_gives_the_val_accuracy_of_the_epoch_it_kept(synth_dir, tmp_path):
    """Selected on val loss or kept last, the summary's val_accuracy is the kept epoch's; its
    best_value is the selection metric's value, or None when the last epoch is kept."""
    for select in ("val_loss", "last"):
        run = tmp_path / select
        summary = train(tiny_config(synth_dir, f"train.select_metric={select}"), run)
        rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
        kept = next(r for r in rows if r["epoch"] == summary["kept_epoch"])
        assert summary["val_accuracy"] == kept["val_accuracy"]
        assert summary["best_epoch"] == summary["kept_epoch"]  # the old name, for older readers
        if select == "last":
            assert summary["kept_epoch"] == 3 and summary["best_value"] is None
        else:
            assert summary["best_value"] == min(r["val_loss"] for r in rows)
        saved = json.loads((run / "train_summary.json").read_text())
        assert saved["kept_epoch"] == summary["kept_epoch"]
        assert saved["best_value"] == summary["best_value"]


def test_a_checkpoint_from_before_kept_epochs_resumes_keeping_the_last(synth_dir, tmp_path):
    """Old checkpoints kept last held the epoch number as their best value: still resumed."""
    run = tmp_path / "run"
    cfg = tiny_config(synth_dir, "train.select_metric=last")
    train(cfg, run, stop_after=1)
    last = run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    assert ckpt["best"] is None and ckpt["best_epoch"] == 1
    torch.save({**ckpt, "best": 1.0}, last)  # what the code before wrote
    summary = train(None, run, resume=True)
    assert summary["epochs_run"] == 3 and summary["kept_epoch"] == summary["best_epoch"] == 3
    assert summary["best_value"] is None
    assert load_checkpoint(last)["best"] is None


def test_fit_val_trains_on_the_val_crops_and_the_split_lists_them_as_train(synth_dir, tmp_path):
    plain, fitted = tmp_path / "plain", tmp_path / "fitted"
    train(tiny_config(synth_dir, "train.epochs=1", "train.select_metric=last"), plain)
    cfg = tiny_config(synth_dir, "train.epochs=1", "train.select_metric=last", "train.fit_val=true")
    summary = train(cfg, fitted)
    before = {r.path: r.split for r in read_manifest(plain / "split.csv")}
    after = {r.path: r.split for r in read_manifest(fitted / "split.csv")}
    assert before.keys() == after.keys()
    moved = {p for p, part in before.items() if part == "val"}
    assert moved and all(after[p] == "train" for p in moved)
    assert all(after[p] == part for p, part in before.items() if p not in moved)  # calib, test
    counts = json.loads((plain / "data.json").read_text())["counts"]
    assert summary["n_val"] == 0 and summary["val_accuracy"] is None
    assert summary["n_train"] == sum(counts["train"].values()) + sum(counts["val"].values())
    assert "val_accuracy" not in json.loads((fitted / "history.jsonl").read_text().splitlines()[0])
    # the calib and test parts stay unseen: eval reads the run's own test part as before
    assert evaluate_run(fitted)["n"] == evaluate_run(plain)["n"] == sum(counts["test"].values())
    train(None, fitted, resume=True)  # the kept split has no val part left to move
    assert {r.path: r.split for r in read_manifest(fitted / "split.csv")} == after


def test_a_loss_gone_nan_stops_the_run_before_that_epoch_is_saved(synth_dir, tmp_path):
    # SGD whose rate grows 1e15-fold after the first epoch: the weights overflow in the second
    sets = ["train.optimizer=sgd", "train.schedule=step", "train.step_epochs=1"]
    cfg = tiny_config(synth_dir, *sets, "train.step_gamma=1e15", "train.lr=1e-3")
    run = tmp_path / "run"
    with pytest.raises(Diverged) as caught:
        train(cfg, run)
    text = str(caught.value)
    assert "became nan in epoch 2" in text and "holds epoch 1" in text
    assert "--set train.lr=0.0005" in text
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert json.loads((run / "model.json").read_text())["epoch"] == 1
    assert not (run / "train_summary.json").exists()
    # Diverging in the first epoch leaves no half-made run folder behind.
    with pytest.raises(Diverged, match=r"became nan in epoch 1.*nothing saved"):
        train(
            tiny_config(synth_dir, *sets, "train.step_gamma=1e15", "train.lr=1e12"),
            run.parent / "b",
        )
    assert not (run.parent / "b").exists()


def test_a_val_loss_gone_nan_stops_the_run_too():
    cfg = load_config("small-fast")
    epoch_module.check_finite_loss({"train_loss": 0.3, "val_loss": 0.4}, 5, cfg)  # healthy
    epoch_module.check_finite_loss({"train_loss": 0.3}, 5, cfg)  # no val part
    with pytest.raises(Diverged, match=r"the val loss became nan in epoch 5: .*holds epoch 4"):
        epoch_module.check_finite_loss({"train_loss": 2e22, "val_loss": float("nan")}, 5, cfg)
    with pytest.raises(
        Diverged, match=r"the train loss became inf in epoch 1: .*\(nothing saved\)"
    ):
        epoch_module.check_finite_loss({"train_loss": float("inf"), "val_loss": 0.4}, 1, cfg)


def test_kept_epoch_far_below_the_best_is_reported():
    rows = [{"epoch": 1, "val_accuracy": 0.80}, {"epoch": 2, "val_accuracy": 0.92}]
    said = []
    for last, expected in ((0.86, True), (0.8701, False), (0.92, False)):
        history = [*rows, {"epoch": 3, "val_accuracy": last}]
        text = epoch_module.kept_epoch_warning(history, 3, lambda *a, **k: said.append(a[0]))
        assert (text is not None) is expected, last
    assert said == [
        "warning: the kept epoch 3 scored 86.0% on val, 6.0 points below epoch 2's 92.0%: the run "
        "may have diverged; train again with a lower train.lr, or keep the best epoch on val "
        "with --set train.select_metric=val_accuracy"
    ]
    assert epoch_module.kept_epoch_warning(rows, 2, print) is None  # kept the best
    assert epoch_module.kept_epoch_warning([{"epoch": 1}], 1, print) is None  # no val part


def test_a_run_that_keeps_a_collapsed_last_epoch_says_so(synth_dir, tmp_path, monkeypatch, capsys):
    # Validation scripted: the second of three epochs is the best, the last has collapsed.
    scores = iter([0.75, 0.9, 0.5])
    real = train_module.validate

    def scripted(*args, **kwargs):
        return {**real(*args, **kwargs), "val_accuracy": next(scores)}

    monkeypatch.setattr(train_module, "validate", scripted)
    summary = train(tiny_config(synth_dir, "train.select_metric=last"), tmp_path / "run")
    assert summary["kept_epoch"] == 3 and summary["val_accuracy"] == 0.5
    assert summary["warning"].startswith("the kept epoch 3 scored 50.0% on val, 40.0 points below")
    assert "warning: the kept epoch 3" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert saved["warning"] == summary["warning"]
    monkeypatch.setattr(train_module, "validate", real)
    healthy = train(tiny_config(synth_dir, "train.epochs=1"), tmp_path / "healthy")
    assert healthy["warning"] is None


def test_bf16_autocast_only_where_the_device_computes_it(monkeypatch):
    cpu = torch.device("cpu")
    on = load_config("small-fast")
    off = load_config("small-fast", sets=["train.amp=false"])
    monkeypatch.setattr(epoch_module, "cpu_has_native_bf16", lambda: True)
    assert epoch_module.use_bf16(on, cpu) and not epoch_module.use_bf16(off, cpu)
    monkeypatch.setattr(epoch_module, "cpu_has_native_bf16", lambda: False)
    assert not epoch_module.use_bf16(on, cpu)
    assert epoch_module.use_bf16(on, torch.device("cuda"))


def test_summary_records_the_step_precision(synth_dir, tmp_path, monkeypatch):
    autocast_seen = []  # whether autocast was on at each training forward of the backbone
    from pitguard.models import weights as weights_module

    build = weights_module.build_model

    def recording_build(*args, **kwargs):
        net = build(*args, **kwargs)
        net.backbone.register_forward_pre_hook(
            lambda module, _: (
                autocast_seen.append(torch.is_autocast_enabled("cpu")) if module.training else None
            )
        )
        return net

    monkeypatch.setattr(weights_module, "build_model", recording_build)
    monkeypatch.setattr(epoch_module, "cpu_has_native_bf16", lambda: False)
    summary = train(tiny_config(synth_dir, "train.epochs=1"), tmp_path / "fp32")
    assert summary["precision"] == "fp32"
    assert autocast_seen and not any(autocast_seen)
    autocast_seen.clear()
    monkeypatch.setattr(epoch_module, "cpu_has_native_bf16", lambda: True)
    summary = train(tiny_config(synth_dir, "train.epochs=1", "model.crop=80"), tmp_path / "bf16")
    assert summary["precision"] == "bf16 autocast"
    assert autocast_seen and all(autocast_seen)
    run = load_run(tmp_path / "bf16")
    assert run.net.contract.crop == 80 and run.net.contract.side == 80
    assert json.loads((tmp_path / "bf16" / "train_summary.json").read_text())["precision"] == (
        "bf16 autocast"
    )


def test_refuses_to_overwrite_a_run(synth_dir, tmp_path):
    cfg = tiny_config(synth_dir, "train.epochs=1")
    train(cfg, tmp_path / "r")
    with pytest.raises(Exception, match="already holds a run; use --resume"):
        train(cfg, tmp_path / "r")


def test_three_class_training_and_eval(synth_dir, tmp_path):
    data = tmp_path / "three"
    shutil.copytree(synth_dir, data)
    (data / "maybe").mkdir()
    for p in sorted((data / "cherry_pit").glob("*.png"))[:40]:
        p.rename(data / "maybe" / p.name)
    run = tmp_path / "run3"
    train(tiny_config(data, "train.epochs=1", "train.balance=loss"), run)
    model = load_run(run)
    assert model.classes == ("clean", "maybe", "pit")
    result = evaluate_run(run, n_boot=100)
    assert len(result["confusion_matrix"]) == 3
    assert set(result["per_class"]) == {"clean", "maybe", "pit"}


def test_cli_train_eval_end_to_end(synth_dir, tmp_path, capsys):
    run = tmp_path / "cli"
    args = ["train", "--recipe", "small-fast", "--data", str(synth_dir), "--out", str(run)]
    for s in [
        *TINY,
        "train.epochs=2",
        "train.balance=sampler",
        "train.schedule=step",
        "train.optimizer=sgd",
    ]:
        args += ["--set", s]
    assert main(args) == 0
    assert "best epoch" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--json", str(out), "--n-boot", "200"]) == 0
    result = json.loads(out.read_text())
    test_counts = json.loads((run / "data.json").read_text())["counts"]["test"]
    assert result["n"] == sum(test_counts.values())
    lo, hi = result["accuracy_ci"]
    assert lo <= result["accuracy"] <= hi
    assert set(result["per_class"]) == {"clean", "pit"}
    preds = (
        (run / "eval" / result["outputs"].rsplit("/", 1)[1] / "predictions.csv")
        .read_text()
        .splitlines()
    )
    assert (
        preds[0] == "path,true_label,predicted,p_pit,route,error,reason"
        and len(preds) == result["n"] + 1
    )
    # A class-folder directory is evaluated whole.
    assert (
        main(["eval", str(run), "--data", str(synth_dir), "--json", str(out), "--n-boot", "100"])
        == 0
    )
    assert json.loads(out.read_text())["n"] == 240


def _split_rows(run):
    lines = (run / "split.csv").read_text().splitlines()[1:]
    return sorted((str((run / ln.split(",")[0]).resolve()), ln.split(",", 1)[1]) for ln in lines)


def test_run_keeps_the_split_it_was_given(synth_dir, tmp_path):
    first = tmp_path / "first"
    train(tiny_config(synth_dir, "train.epochs=1"), first)
    second = tmp_path / "second"
    train(tiny_config(first / "split.csv", "train.epochs=1"), second)
    assert _split_rows(first) == _split_rows(second)


def test_tensorboard_events_are_written_as_the_run_trains(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    epochs = [e.step for e in events.Scalars("epoch/val_accuracy")]
    assert epochs == [1, 2, 3, 4, 5, 6]  # the session run's six epochs
    assert {"step/loss", "step/lr", "epoch/train_loss", "epoch/lr"} <= set(scalars)
    assert len(events.Scalars("step/loss")) >= 6
    assert {"augment/grid", "val/confusion_matrix"} <= set(events.Tags()["images"])


def test_a_run_folder_in_use_by_another_job_is_refused_before_any_work(synth_dir, tmp_path):
    from pitguard.core.errors import PitguardError
    from pitguard.core.files import hold_lock

    run = tmp_path / "r"
    run.mkdir()
    busy = r"r \(a run folder\) is in use by pid"
    with hold_lock(run / ".lock", "another job"), pytest.raises(PitguardError, match=busy):
        train(tiny_config(synth_dir, "train.epochs=1"), run)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    """Bad data found after the run folder was made: the folder goes; an existing one stays."""
    from pitguard.core.errors import PitguardError

    data = tmp_path / "d"
    (data / "goodones").mkdir(parents=True)
    with pytest.raises(PitguardError, match="unknown class name"):
        train(tiny_config(data), tmp_path / "runs" / "x")
    assert not (tmp_path / "runs" / "x").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(PitguardError, match="unknown class name"):
        train(tiny_config(data), mine)
    assert mine.is_dir()
