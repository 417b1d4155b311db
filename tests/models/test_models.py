import pytest
import torch
from safetensors.torch import save_file

from pitguard.core.errors import PitguardError
from pitguard.models.nets import (
    InputContract,
    SingleView,
    build_backbone,
    build_model,
)
from pitguard.models.views import dihedral_views
from pitguard.models.weights import adapt_first_conv, load_pretrained, read_state_dict


def test_tiny_model_is_registered_and_small():
    net = build_backbone("pitguard_tiny", 3, 2)
    assert sum(p.numel() for p in net.parameters()) < 20_000
    assert net(torch.rand(2, 2, 128, 128)).shape == (2, 3)


def test_small_and_medium_models_are_registered():
    sizes = {}
    for name in ("pitguard_small", "pitguard_medium"):
        net = build_backbone(name, 2, 2)
        assert net(torch.rand(2, 2, 96, 96)).shape == (2, 2)
        sizes[name] = sum(p.numel() for p in net.parameters())
    assert 400_000 < sizes["pitguard_small"] < 700_000
    assert 1_000_000 < sizes["pitguard_medium"] < 1_500_000


def test_contract_selects_channels_and_downsamples():
    net = build_model("pitguard_tiny", 2, InputContract(channels=(0, 2), downsample=2)).eval()
    x = torch.rand(4, 3, 128, 128)
    pre = net.preprocess(x)
    assert pre.shape == (4, 2, 64, 64)
    assert torch.allclose(pre[:, 1], torch.nn.functional.avg_pool2d(x[:, 2:3], 2)[:, 0])


def test_unknown_timm_name():
    with pytest.raises(PitguardError, match=r"model.name='resnet5000': not a timm model"):
        build_backbone("resnet5000", 2, 3)


def test_pretrained_local_file_loads_and_adapts(tmp_path):
    src = build_backbone("resnet18", 1000, 3)
    path = tmp_path / "r18.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = build_backbone("resnet18", 2, 2)
    info = load_pretrained(dst, path, in_chans=2)
    assert info["loaded"] > 50
    assert any(s.startswith("fc.weight") for s in info["skipped"])  # 1000-class head dropped
    assert torch.equal(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)


def test_torch_checkpoint_with_nested_state_dict(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"a.weight": torch.ones(2)}}, path)
    assert list(read_state_dict(path)) == ["a.weight"]


def test_weights_that_match_nothing_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo": torch.ones(1)}, path)
    with pytest.raises(PitguardError, match=r"no tensor matched the model's parameters"):
        load_pretrained(build_backbone("pitguard_tiny", 2, 3), path, 3)


def test_contract_centre_crop_then_pool():
    contract = InputContract(channels=(0, 2), crop=96, downsample=2)
    assert contract.side == 48
    net = build_model("pitguard_tiny", 2, contract).eval()
    x = torch.rand(3, 3, 128, 128)
    pre = net.preprocess(x)
    assert pre.shape == (3, 2, 48, 48)
    centre = x[:, [0, 2], 16:112, 16:112]
    assert torch.allclose(pre, torch.nn.functional.avg_pool2d(centre, 2))
    assert InputContract.from_dict(contract.to_dict()) == contract
    with pytest.raises(PitguardError, match=r"unknown field\(s\) tile: written by a newer"):
        InputContract.from_dict({**contract.to_dict(), "tile": 4})


def test_upsampling_enlarges_what_augmentation_saw_before_the_backbone():
    contract = InputContract(channels=(0, 2), crop=64, upsample=2, mean=(0.5, 0.5), std=(0.5, 0.5))
    assert contract.side == 128
    net = build_model("pitguard_tiny", 2, contract).eval()
    x = torch.rand(3, 3, 128, 128)
    small = net.select(x)  # what training augments: the centre 64 px, not yet enlarged
    assert small.shape == (3, 2, 64, 64)
    big = net.backbone_input(small)
    assert big.shape == (3, 2, 128, 128)
    centre = (x[:, [0, 2], 32:96, 32:96] - 0.5) / 0.5
    want = torch.nn.functional.interpolate(centre, scale_factor=2.0, mode="bilinear")
    assert torch.allclose(big, want, atol=1e-6)
    # geometry: a ramp across the columns is sampled at the enlarged pixels' centres,
    # (j + 0.5) / 2 - 0.5 in source pixels, away from the border where bilinear clamps
    ramp = torch.arange(128.0).expand(1, 3, 128, 128) / 128
    got = net.backbone_input(net.select(ramp))[0, 0, 0] * 0.5 + 0.5
    cols = torch.arange(2, 126.0)
    assert torch.allclose(got[2:126], (32 + (cols + 0.5) / 2 - 0.5) / 128, atol=1e-6)
    assert InputContract.from_dict(contract.to_dict()) == contract
    older = {k: v for k, v in contract.to_dict().items() if k != "upsample"}
    assert InputContract.from_dict(older).upsample == 1  # bundles written before the field


def test_model_defaults_come_from_timms_pretrained_cfg():
    from pitguard.models.nets import model_defaults

    for name in ("vit_small_patch16_224", "swin_tiny_patch4_window7_224", "cait_xxs24_224"):
        assert model_defaults(name).fixed_input_size, name
    assert not model_defaults("resnet50").fixed_input_size
    assert model_defaults("resnet50").first_conv == "conv1"
    assert model_defaults("pitguard_tiny") == model_defaults("pitguard_small")  # own nets: defaults


def test_learned_downsampling_stacks_each_blocks_pixels_as_channels():
    contract = InputContract(channels=(0, 2), crop=96, downsample=2, downsample_mode="learned")
    assert (contract.side, contract.stack, contract.backbone_channels) == (48, 2, 8)
    net = build_model("pitguard_tiny", 2, contract).eval()
    x = torch.rand(3, 3, 128, 128)
    pre = net.preprocess(x)
    assert pre.shape == (3, 8, 48, 48)
    centre = x[:, [0, 2], 16:112, 16:112]
    pooled = torch.nn.functional.avg_pool2d(centre, 2)
    assert torch.allclose(pre.view(3, 2, 4, 48, 48).mean(dim=2), pooled, atol=1e-6)
    assert torch.equal(pre[:, 5], centre[:, 1, 0::2, 1::2])  # channel 1's top-right pixels
    assert InputContract.from_dict(contract.to_dict()) == contract
    old = {k: v for k, v in contract.to_dict().items() if k != "downsample_mode"}
    assert InputContract.from_dict(old).downsample_mode == "average"  # files written before it
    with pytest.raises(PitguardError, match=r"downsample_mode 'max'; this pitguard knows average"):
        InputContract.from_dict({**old, "downsample_mode": "max"})


def test_learned_downsampling_starts_as_average_pooling_then_the_pretrained_conv():
    torch.manual_seed(0)
    mean, std = (0.5, 0.5), (0.5, 0.5)
    pooled = InputContract(channels=(0, 2), mean=mean, std=std, crop=96, downsample=2)
    stacked = InputContract(**{**pooled.to_dict(), "downsample_mode": "learned"})
    a = build_model("tf_efficientnet_lite0", 2, pooled).eval()
    b = build_model("tf_efficientnet_lite0", 2, stacked).eval()
    state = a.state_dict()
    state["backbone.conv_stem.weight"] = adapt_first_conv(state["backbone.conv_stem.weight"], 2, 2)
    b.load_state_dict(state)
    assert b.backbone.conv_stem.weight.shape[1] == 8
    x = torch.rand(4, 3, 128, 128)
    with torch.no_grad():
        fa = a.backbone.forward_features(a.preprocess(x))
        fb = b.backbone.forward_features(b.preprocess(x))
    assert torch.allclose(fa, fb, atol=1e-4)
    # and the training step can move the block's pixels apart: they are separate weights
    x[:, :, 16:112:2] = 0  # every other row blank: the average halves, the stack sees which
    with torch.no_grad():
        b.backbone.conv_stem.weight[:, 0::4] *= 2  # only the top-left pixels of channel 0
        assert not torch.allclose(
            b.backbone.forward_features(b.preprocess(x)),
            a.backbone.forward_features(a.preprocess(x)),
            atol=1e-4,
        )


def _asymmetric(n: int = 3, side: int = 128) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, 3, side, side)


def _views_net(contract: InputContract):
    """An untrained pitguard_tiny whose logits tell its views apart: at its small starting
    weights every view scores about the same, so the head is made sharper."""
    torch.manual_seed(0)
    net = build_model("pitguard_tiny", 2, contract).eval()
    with torch.no_grad():
        net.backbone.get_classifier().weight.normal_(0, 30)
    return net


@pytest.mark.parametrize(("mode", "count"), [("none", 1), ("hflip", 2), ("rot4", 4), ("d8", 8)])
def test_test_time_views_are_the_distinct_mirrors_and_turns(mode, count):
    x = _asymmetric(1, 8)
    views = dihedral_views(x, mode)
    assert len(views) == count and torch.equal(views[0], x)
    assert len({v.numpy().tobytes() for v in views}) == count  # all different
    want = [torch.rot90(x, -k, dims=(-2, -1)) for k in range(4)]  # clockwise quarter turns
    want += [w.flip(-1) for w in want]
    allowed = {w.numpy().tobytes() for w in want}
    assert all(v.numpy().tobytes() in allowed for v in views)
    if mode in ("rot4", "d8"):
        for got, expected in zip(views, want, strict=False):
            assert torch.equal(got, expected)


@pytest.mark.parametrize("mode", ["hflip", "rot4", "d8"])
def test_a_network_with_test_time_views_averages_its_single_view_logits(mode):
    net = _views_net(InputContract(channels=(0, 2), crop=96, downsample=2, tta=mode))
    x = _asymmetric()
    with torch.no_grad():
        want = torch.stack(
            [net.forward_one(v) for v in dihedral_views(x, mode)]  # the full crop turned
        ).mean(0)
        got = net(x)
        one = SingleView(net)(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert (one - got).abs().max() > 1e-3  # one view is not the average
    assert torch.equal(one, net.forward_one(x))


def test_d8_views_make_the_score_blind_to_turns_and_mirrors():
    plain = _views_net(InputContract(channels=(0, 2)))
    views = _views_net(InputContract(channels=(0, 2), tta="d8"))
    views.load_state_dict(plain.state_dict())
    x = _asymmetric()
    turned, mirrored = torch.rot90(x, 1, dims=(-2, -1)), x.flip(-2)
    with torch.no_grad():
        assert torch.allclose(views(turned), views(x), atol=1e-5)
        assert torch.allclose(views(mirrored), views(x), atol=1e-5)
        assert (plain(turned) - plain(x)).abs().max() > 1e-3


def test_contract_keeps_its_test_time_views_and_refuses_unknown_ones():
    contract = InputContract(channels=(0, 2), tta="rot4")
    assert InputContract.from_dict(contract.to_dict()) == contract
    assert InputContract.from_dict({**contract.to_dict(), "tta": "none"}).tta == "none"
    old = {k: v for k, v in contract.to_dict().items() if k != "tta"}  # written before tta
    assert InputContract.from_dict(old).tta == "none"
    with pytest.raises(PitguardError, match=r"input contract has tta 'd16'"):
        InputContract.from_dict({**contract.to_dict(), "tta": "d16"})
