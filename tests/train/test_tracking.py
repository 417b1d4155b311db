"""Tests for pitguard.train.tracking: MLflow runs beside the TensorBoard event files."""

import sys

import pytest

from pitguard.config import load_config
from pitguard.core.errors import PitguardError
from pitguard.core.files import read_json
from pitguard.train.loop import train

TINY = ("model.name=pitguard_tiny", "train.epochs=2", "train.threads=1", "train.max_minutes=0")


def _config(data, *extra):
    return load_config("small-fast", sets=[*TINY, *extra], extra={"data.path": str(data)})


def test_mlflow_run_gets_params_and_every_epoch_and_a_resume_continues_it(
    synth_dir, tmp_path, monkeypatch
):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "runs" / "r"
    train(_config(synth_dir, "train.tracking=mlflow"), run, stop_after=1)
    record = read_json(run / "mlflow.json")
    assert record["tracking_uri"] == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    train(None, run, resume=True)
    assert read_json(run / "mlflow.json") == record  # the same MLflow run, continued

    client = MlflowClient(tracking_uri=record["tracking_uri"])
    got = client.get_run(record["run_id"])
    assert got.info.status == "FINISHED" and got.info.run_name == "r"
    assert (
        got.data.params["train.lr"] == "0.003" and got.data.params["model.name"] == "pitguard_tiny"
    )
    history = client.get_metric_history(record["run_id"], "epoch/val_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    assert client.get_metric_history(record["run_id"], "step/loss")
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"augment_grid.png", "val_confusion_matrix.png"} <= artifacts


def test_asking_for_mlflow_without_it_names_the_package_before_any_work(
    synth_dir, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now fails
    with pytest.raises(PitguardError, match=r"pip install 'pitguard\[mlflow\]'"):
        train(_config(synth_dir, "train.tracking=mlflow"), tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoints").exists()
