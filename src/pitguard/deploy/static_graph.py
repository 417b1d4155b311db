"""A deploy module rewritten for a graph of one input size: the same function, fewer operations.

The line always sends crops of the contract's size, so what timm computes from the input's
shape at run time can be fixed when the graph is written:

- TensorFlow-style "same" padding (``Conv2dSame``, in the EfficientNet-Lite models) pads by an
  amount computed from the input size on every call, which an ONNX graph records as shape
  arithmetic and a ``Pad`` it cannot merge. Fixed pads let ONNX Runtime fold them into the
  convolution.
- Learned downsampling stacks each block's pixels as channels (a reshape and a transpose) for
  the first convolution; one convolution over the full-resolution crop, with a kernel and stride
  ``downsample`` times larger, computes the same thing without the transpose.

The export's parity gate compares the graph with the eager module it came from.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from timm.layers import Conv2dSame
from timm.layers.conv2d_same import Conv2dSameExport
from timm.layers.padding import pad_same_arg
from torch import nn

from pitguard.deploy.bundle import DeployModule
from pitguard.models.nets import PitguardNet, first_conv, first_conv_name


def for_fixed_size(module: DeployModule) -> DeployModule:
    """A copy of ``module`` with the stacked stem fused and every "same" padding fixed."""
    module = copy.deepcopy(module).eval()
    net = module.net
    if net.contract.stack > 1:
        _fuse_stacked_stem(net)
    _fix_same_padding(net)
    return module


def _pads(conv: nn.Conv2d, side: int) -> tuple[int, int, int, int] | None:
    """(left, right, top, bottom) zero padding of ``conv`` on a square input of ``side``."""
    if isinstance(conv, Conv2dSame):
        args = (list(conv.kernel_size), list(conv.stride), list(conv.dilation))
        left, right, top, bottom = pad_same_arg([side, side], *args)
        return left, right, top, bottom
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    ph, pw = conv.padding
    return pw, pw, ph, ph


@torch.no_grad()
def _fuse_stacked_stem(net: PitguardNet) -> None:
    """Pixel blocks stacked as channels, then conv(k, stride s) == conv(k*d, stride s*d) on the
    blocks' full-resolution pixels, padding times d: weight'[o, c, d*a+p, d*b+q] is
    weight[o, c*d*d + p*d + q, a, b]."""
    c, d = net.contract, net.contract.stack
    name = first_conv_name(net.backbone)
    conv = first_conv(net.backbone)
    pads = _pads(conv, c.side)
    if pads is None or conv.groups != 1 or conv.dilation != (1, 1):
        return  # left as it is: stacked in the graph
    out_ch, in_ch, kh, kw = conv.weight.shape
    channels = in_ch // (d * d)
    weight = conv.weight.view(out_ch, channels, d, d, kh, kw).permute(0, 1, 4, 2, 5, 3)
    fused = nn.Conv2d(
        channels,
        out_ch,
        (kh * d, kw * d),
        stride=(conv.stride[0] * d, conv.stride[1] * d),
        bias=conv.bias is not None,
    )
    fused.weight.copy_(weight.reshape(out_ch, channels, kh * d, kw * d))
    if conv.bias is not None and fused.bias is not None:
        fused.bias.copy_(conv.bias)
    left, right, top, bottom = (p * d for p in pads)
    stem = nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), fused)
    net.backbone.set_submodule(name, stem)
    # the backbone now reads the full-resolution crop; its first layer does the reduction
    net.contract = replace(c, downsample=1, downsample_mode="average")


@torch.no_grad()
def _fix_same_padding(net: PitguardNet) -> None:
    """Each ``Conv2dSame`` becomes timm's ``Conv2dSameExport``, which fixes its padding on its
    first call: one call at the contract's size, before the graph is traced."""
    for name, conv in list(net.backbone.named_modules()):
        if isinstance(conv, Conv2dSame):
            (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
            fixed = Conv2dSameExport(
                conv.in_channels,
                conv.out_channels,
                (kh, kw),
                (sh, sw),
                dilation=(dh, dw),
                groups=conv.groups,
                bias=conv.bias is not None,
            )
            fixed.load_state_dict(conv.state_dict())
            net.backbone.set_submodule(name, fixed)
    net(torch.zeros(1, 3, net.contract.size, net.contract.size))
