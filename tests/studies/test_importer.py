import json

import pytest
import torch
import torchvision

from pitguard.cli import main
from pitguard.data.synth import synthesize
from pitguard.errors import PitguardError
from pitguard.evaluate import evaluate_run
from pitguard.runfolder import load_run
from pitguard.studies.importer import import_torchvision


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
