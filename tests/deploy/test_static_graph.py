"""Tests for pitguard.deploy.static_graph: rewrites for a graph of one input size."""

import pytest
import torch
from timm.layers import Conv2dSame

from pitguard.deploy.bundle import DeployModule
from pitguard.deploy.static_graph import for_fixed_size
from pitguard.models.nets import InputContract, build_model
from pitguard.runtime.policy import DecisionPolicy


def _module(name: str, contract: InputContract) -> DeployModule:
    torch.manual_seed(0)
    net = build_model(name, 2, contract).eval()
    with torch.no_grad():  # BatchNorm statistics away from 0/1, so a wrong pad would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return DeployModule(net, DecisionPolicy(temperature=1.3, t_low=0.2, t_high=0.6)).eval()


@pytest.mark.parametrize("mode", ["average", "learned"])
def test_the_rewritten_lite0_computes_what_the_eager_one_does(mode):
    contract = InputContract(channels=(0, 2), crop=96, downsample=2, downsample_mode=mode)
    module = _module("tf_efficientnet_lite0", contract)
    fixed = for_fixed_size(module)
    backbone = fixed.net.backbone
    assert not any(isinstance(m, Conv2dSame) for m in backbone.modules())
    assert any(isinstance(m, Conv2dSame) for m in module.net.backbone.modules())  # a copy
    stem = backbone.conv_stem
    if mode == "learned":  # one strided convolution over the full-resolution 96 px
        conv = stem[1]
        assert (conv.in_channels, conv.kernel_size, conv.stride) == (2, (6, 6), (4, 4))
        assert (
            fixed.net.contract.stack == 1
            and fixed.net.select(torch.rand(1, 3, 128, 128)).shape[-1] == 96
        )
    x = torch.zeros(5, 3, 128, 128)
    x[:, :, 20:108, 24:104] = torch.rand(5, 3, 88, 80)  # a cherry on the black background
    with torch.no_grad():
        want, got = module(x), fixed(x)
    assert torch.allclose(got[0], want[0], atol=1e-4)  # logits
    assert torch.equal(got[2], want[2])  # routes


def test_a_plain_network_keeps_its_layers():
    module = _module("pitguard_tiny", InputContract(channels=(0, 2)))
    fixed = for_fixed_size(module)
    x = torch.rand(3, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(fixed(x)[0], module(x)[0])
    assert [type(m) for m in fixed.modules()] == [type(m) for m in module.modules()]
