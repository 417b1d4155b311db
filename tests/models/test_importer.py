import json

import pytest
import torch
import torchvision

from pitguard.cli import main
from pitguard.core.errors import PitguardError
from pitguard.data.synth import synthesize
from pitguard.evaluate.run import evaluate_run
from pitguard.models.importer import import_torchvision
from pitguard.models.runfolder import load_run


@pytest.fixture(scope="module")
def tv_state(tmp_path_factory):
    """A torchvision ResNet18 state dict with a 3-way fc, as the production models are saved."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    path = tmp_path_factory.mktemp("tv") / "prod.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_import_gives_a_run_with_the_same_outputs(tv_state, tmp_path):
    path, net = tv_state
    assert (
        main(
            [
                "import-torchvision",
                str(path),
                "--arch",
                "resnet18",
                "--classes",
                "clean,maybe,pit",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    run = load_run(tmp_path / "r")
    assert run.classes == ("clean", "maybe", "pit")
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(run.net(x), net(x), atol=1e-5)  # [0, 1] input, no normalization
    crops = synthesize(tmp_path / "crops", count=30, seed=4)["out"]  # a ResNet18 is slow on a CPU
    result = evaluate_run(tmp_path / "r", data=crops, n_boot=50)
    assert result["n"] == 30 and len(result["confusion_matrix"]) == 3
    meta = json.loads((tmp_path / "r" / "model.json").read_text())
    assert meta["source"] == "torchvision" and meta["input"]["mean"] is None


def test_fc_size_must_match_classes(tv_state, tmp_path):
    with pytest.raises(
        PitguardError, match=r"fc has 3 outputs but --classes names 2 \(clean,pit\)"
    ):
        import_torchvision(tv_state[0], "resnet18", "clean,pit", tmp_path / "r")


def test_unsupported_arch(tv_state, tmp_path):
    with pytest.raises(
        PitguardError, match=r"--arch vgg16: supported torchvision architectures are resnet18"
    ):
        import_torchvision(tv_state[0], "vgg16", "clean,maybe,pit", tmp_path / "r")


def test_weights_of_another_resnet_are_refused_with_the_arch_to_pass(tv_state, tmp_path, capsys):
    args = ["import-torchvision", str(tv_state[0]), "--classes", "clean,maybe,pit"]
    assert main([*args, "--arch", "resnet50", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "holds a torchvision resnet18, not resnet50; pass --arch resnet18" in err
    assert "Traceback" not in err and not (tmp_path / "r" / "model.json").exists()


def test_the_import_says_the_class_order_cannot_be_verified(tv_state, tmp_path, capsys):
    args = ["import-torchvision", str(tv_state[0]), "--arch", "resnet18", "--classes"]
    assert main([*args, "pit,maybe,clean", "--out", str(tmp_path / "r")]) == 0
    assert "the class order cannot be verified from the weights" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("wrapped", [False, True])
def test_the_production_model_from_import_to_the_runtime(tmp_path, wrapped):
    """A stand-in of the line's model (torchvision resnet50, fc 2048 -> 3, clean/maybe/pit),
    saved as a plain state dict or a training checkpoint: import, calibrate, export with FP32 and
    FP16 graphs, and the runtime scores it; p(pit) counts the maybe mass against clean."""
    import numpy as np

    from pitguard.decision.calibrate import calibrate_run
    from pitguard.deploy.export import export_run
    from pitguard.runtime import Classifier

    torch.manual_seed(0)
    net = torchvision.models.resnet50(num_classes=3, zero_init_residual=True).eval()
    state = {"model_state_dict": net.state_dict()} if wrapped else net.state_dict()
    torch.save(state, tmp_path / "prod.pth")
    run = tmp_path / "run"
    import_torchvision(tmp_path / "prod.pth", "resnet50", "clean,maybe,pit", run)
    crops = synthesize(tmp_path / "crops", count=100, seed=4, difficulty=0.2)["out"]
    record = calibrate_run(run, data=crops, max_pit_miss=0.05, confidence=0.9)
    assert record["policy"]["maybe_index"] == 1
    meta = export_run(run, tmp_path / "b", onnx=True, fp16=True, calib_data=crops)
    assert meta["input_guard"]["n"] == 100  # fitted on the crops it was calibrated on
    assert meta["fp16"]["guarantee"]["established_on"].startswith("model.fp16.onnx's own")
    x = np.random.default_rng(0).random((4, 3, 128, 128), dtype=np.float32)
    with torch.no_grad():
        probs = torch.softmax(net(torch.from_numpy(x)) / record["policy"]["temperature"], 1)
    for graph in ("onnx", "onnx-fp16"):
        out = Classifier(tmp_path / "b", graph=graph, device="cpu").classify(x)
        want = (probs[:, 1] + probs[:, 2]).numpy()  # not clean: maybe + pit
        assert np.abs(out.p_pit - want).max() < (1e-4 if graph == "onnx" else 1e-2), graph
