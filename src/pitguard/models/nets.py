"""Models by timm name, wrapped with the input contract the production line feeds."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from typing import Any, cast, get_args

import timm
import torch
from timm.models import register_model
from torch import nn

from pitguard.config import DownsampleMode
from pitguard.core.errors import PitguardError
from pitguard.core.progress import Progress
from pitguard.models.views import TEST_TIME_VIEWS, dihedral_views

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNSAMPLE_MODES: tuple[str, ...] = get_args(DownsampleMode)


@dataclass(frozen=True)
class InputContract:
    """What the deployed model takes: uint8-derived crops scaled to [0, 1], channels as stored."""

    size: int = 128  # crop side the line sends
    channels: tuple[int, ...] = (0, 1, 2)  # channels of the crop the network reads
    scale: float = 1.0 / 255.0  # uint8 -> [0, 1]; the production line feeds [0, 1]
    mean: tuple[float, ...] | None = None  # normalization applied after scaling, if any
    std: tuple[float, ...] | None = None
    downsample: int = 1  # side of the pixel blocks reduced inside the model before the backbone
    crop: int = 0  # centre square of this side taken before pooling; 0 = the whole crop
    # average: each block's mean; learned: each block's pixels stacked as channels (pixel
    # unshuffle) for the first convolution, which starts out as the average
    downsample_mode: str = "average"
    # ImageNet features at the scale they were learned: the crop enlarged (bilinear) after
    # augmentation, so training warps the small image and the backbone reads the large one
    upsample: int = 1
    # logits averaged over these views of the crop (none, hflip, rot4, d8) at inference only
    tta: str = "none"
    # what each of the crop's channels holds (top,-,bottom; bot1,bot2,top2); () when not given
    channel_names: tuple[str, ...] = ()

    @property
    def side(self) -> int:
        """Side of the image the backbone reads."""
        return (self.crop or self.size) // self.downsample * self.upsample

    @property
    def stack(self) -> int:
        """Side of the pixel blocks stacked as channels (1: none)."""
        return self.downsample if self.downsample_mode == "learned" else 1

    @property
    def backbone_channels(self) -> int:
        """Input channels of the backbone's first convolution."""
        return len(self.channels) * self.stack**2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputContract:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise PitguardError(
                f"input contract has unknown field(s) {', '.join(unknown)}: written by a newer "
                "pitguard; use that version to read it"
            )
        mode = str(d.get("downsample_mode", "average"))
        if mode not in DOWNSAMPLE_MODES:
            raise PitguardError(
                f"input contract has downsample_mode {mode!r}; this pitguard knows "
                f"{', '.join(DOWNSAMPLE_MODES)}: use the version that wrote it"
            )
        tta = str(d.get("tta", "none"))
        if tta not in TEST_TIME_VIEWS:
            raise PitguardError(
                f"input contract has tta {tta!r}; this pitguard knows {', '.join(TEST_TIME_VIEWS)}: "
                "use the version that wrote it"
            )
        return cls(
            size=int(d["size"]),
            channels=tuple(d["channels"]),
            scale=float(d["scale"]),
            mean=tuple(d["mean"]) if d.get("mean") is not None else None,
            std=tuple(d["std"]) if d.get("std") is not None else None,
            downsample=int(d.get("downsample", 1)),
            crop=int(d.get("crop", 0)),
            downsample_mode=mode,
            upsample=int(d.get("upsample", 1)),
            tta=tta,
            channel_names=tuple(d.get("channel_names", ())),
        )


class _TinyNet(nn.Module):
    """A small CNN with timm's classifier interface, for tests and quick CPU runs."""

    def __init__(self, widths: tuple[int, ...], num_classes: int, in_chans: int, drop_rate: float):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for w in widths:
            layers += [
                nn.Conv2d(prev, w, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            prev = w
        self.conv_stem = layers[0]
        self.features = nn.Sequential(*layers[1:])
        self.num_features = prev
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(prev, num_classes)
        self.pretrained_cfg = {"first_conv": "conv_stem", "classifier": "head"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.conv_stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean(dim=(2, 3))
        return self.head(self.drop(x))


@register_model
def pitguard_tiny(
    pretrained: bool = False, num_classes: int = 2, in_chans: int = 3, drop_rate: float = 0.0, **_
):
    """About 10k parameters: the unit tests' model."""
    return _TinyNet((8, 16, 24), num_classes, in_chans, drop_rate)


@register_model
def pitguard_small(
    pretrained: bool = False, num_classes: int = 2, in_chans: int = 3, drop_rate: float = 0.0, **_
):
    """About 0.5M parameters: fast enough to train and serve on two CPU cores."""
    return _TinyNet((24, 48, 96, 160), num_classes, in_chans, drop_rate)


@register_model
def pitguard_medium(
    pretrained: bool = False, num_classes: int = 2, in_chans: int = 3, drop_rate: float = 0.0, **_
):
    """About 1.2M parameters: pitguard_small widened."""
    return _TinyNet((32, 64, 128, 256), num_classes, in_chans, drop_rate)


class PitguardNet(nn.Module):
    """Preprocessing of the input contract followed by a timm backbone; returns logits."""

    def __init__(self, backbone: nn.Module, contract: InputContract):
        super().__init__()
        self.backbone = backbone
        self.contract = contract
        n = len(contract.channels)
        mean = torch.tensor(contract.mean or (0.0,) * n, dtype=torch.float32)
        std = torch.tensor(contract.std or (1.0,) * n, dtype=torch.float32)
        self.channel_index: torch.Tensor
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.register_buffer("channel_index", torch.tensor(contract.channels, dtype=torch.long))
        self.register_buffer("mean", mean.view(1, n, 1, 1))
        self.register_buffer("inv_std", (1.0 / std).view(1, n, 1, 1))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Channels and resolution the backbone reads, from float crops in [0, 1] (N, 3, H, W).

        Training augments after this step: fewer pixels to warp, same composition as inference.
        """
        if tuple(self.contract.channels) != (0, 1, 2):  # a constant: no branch in exported graphs
            x = x.index_select(1, self.channel_index)
        if self.contract.crop:  # the segmented cherry sits at the centre of the crop
            top = (x.shape[-2] - self.contract.crop) // 2
            left = (x.shape[-1] - self.contract.crop) // 2
            x = x[..., top : top + self.contract.crop, left : left + self.contract.crop]
        if self.contract.downsample > 1 and self.contract.stack == 1:
            x = nn.functional.avg_pool2d(x, self.contract.downsample)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.contract.mean is not None:
            x = (x - self.mean) * self.inv_std
        return x

    def backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized, enlarged where the contract says, and each block's pixels stacked as
        channels where the mode is learned."""
        x = self.normalize(x)
        if self.contract.upsample > 1:
            x = nn.functional.interpolate(
                x, scale_factor=float(self.contract.upsample), mode="bilinear", align_corners=False
            )
        if self.contract.stack > 1:
            x = nn.functional.pixel_unshuffle(x, self.contract.stack)
        return x

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float crops already scaled to [0, 1], all channels, (N, C, H, W)."""
        return self.backbone_input(self.select(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for float crops in [0, 1]; averaged over the contract's test-time views."""
        if self.contract.tta == "none":  # a constant: no branch in exported graphs
            return self.forward_one(x)
        views = dihedral_views(self.select(x), self.contract.tta)
        logits = self.backbone(self.backbone_input(torch.cat(views)))  # one batch of all views
        return logits.reshape(len(views), -1, logits.shape[-1]).mean(0)

    def forward_one(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the crops as they are, whatever the contract's test-time views."""
        return self.backbone(self.preprocess(x))


class SingleView(nn.Module):
    """``net`` reading one view of each crop, whatever its test-time views: training's per-epoch
    val and a teacher's soft labels, which so cost one pass as they did without views."""

    def __init__(self, net: PitguardNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_one(x)


@dataclass(frozen=True)
class ModelDefaults:
    """What timm's ``pretrained_cfg`` says of an architecture, read in one place."""

    fixed_input_size: bool = False  # built for one input size (ViT, DeiT, Swin, BEiT, CaiT, ...)
    first_conv: str = "conv_stem"  # adapted when the input channels differ
    mean: tuple[float, ...] = IMAGENET_MEAN  # input statistics its pretrained weights expect
    std: tuple[float, ...] = IMAGENET_STD


@functools.cache
def model_defaults(name: str) -> ModelDefaults:
    """timm's defaults for ``name``; pitguard's own small nets use the class defaults."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return ModelDefaults()
    return ModelDefaults(
        fixed_input_size=bool(cfg.fixed_input_size),
        first_conv=str(cfg.first_conv or "conv_stem"),
        mean=tuple(cfg.mean or IMAGENET_MEAN),
        std=tuple(cfg.std or IMAGENET_STD),
    )


def build_backbone(
    name: str,
    num_classes: int,
    in_chans: int,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    img_size: int = 128,
):
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if model_defaults(name).fixed_input_size:
        kwargs["img_size"] = img_size  # built for one input size: make it the crop's
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
            raise PitguardError(
                f"model.name={name!r}: not a timm model; similar: {', '.join(close) or 'none'} "
                "(see timm.list_models())"
            ) from None
        raise
    except TypeError as exc:
        raise PitguardError(f"model {name!r} does not accept these settings: {exc}") from None


@torch.no_grad()
def zero_classifier(backbone: nn.Module) -> None:
    """Every logit starts at 0, so the first fine-tuning steps move the head, not the features."""
    for param in classifier_params(backbone):
        param.zero_()


def live_channels(images: torch.Tensor, channels: tuple[int, ...]) -> tuple[int, ...]:
    """Those of ``channels`` that carry image in ``images`` (N, C, H, W): not one value in every
    crop. Refused when none does."""
    live = tuple(
        c for c in channels if images.numel() and bool(images[:, c].amax() != images[:, c].amin())
    )
    if not live:
        raise PitguardError(
            f"model.channels={list(channels)}: each holds one value in every train crop; "
            "read a channel that carries image, or set model.live_channels=false"
        )
    return live


def make_contract(
    cfg_model,
    size: int,
    data_mean: tuple[float, ...] | None = None,
    data_std=None,
    channels: tuple[int, ...] | None = None,
    channel_names: str | None = None,
) -> InputContract:
    """The contract of ``cfg_model``; ``channels`` (those the train crops carry image in)
    replaces ``model.channels`` where given."""
    channels = tuple(channels if channels is not None else cfg_model.channels)
    mean = std = None
    if cfg_model.normalize == "imagenet":
        mean = tuple(IMAGENET_MEAN[c] for c in channels)
        std = tuple(IMAGENET_STD[c] for c in channels)
    elif cfg_model.normalize == "data":
        mean, std = data_mean, data_std
    elif cfg_model.normalize == "pretrained":
        defaults = model_defaults(cfg_model.name)
        mean = tuple(defaults.mean[c] for c in channels)
        std = tuple(defaults.std[c] for c in channels)
    return InputContract(
        size=size,
        channels=channels,
        mean=mean,
        std=std,
        downsample=cfg_model.downsample,
        crop=cfg_model.crop,
        downsample_mode=cfg_model.downsample_mode,
        upsample=cfg_model.upsample,
        tta=cfg_model.tta,
        channel_names=tuple(n.strip() for n in channel_names.split(",")) if channel_names else (),
    )


def build_model(
    name: str, num_classes: int, contract: InputContract, drop_rate=0.0, drop_path_rate=0.0
) -> PitguardNet:
    backbone = build_backbone(
        name,
        num_classes,
        contract.backbone_channels,
        drop_rate,
        drop_path_rate,
        contract.side,
    )
    return PitguardNet(backbone, contract)


def classifier_params(backbone: nn.Module) -> list[nn.Parameter]:
    classifier: nn.Module = cast(Any, backbone).get_classifier()  # timm's interface
    return list(classifier.parameters())


def first_conv_name(backbone: nn.Module) -> str:
    """Name of the backbone's first convolution: timm's ``pretrained_cfg`` says, else the first."""
    name = getattr(backbone, "pretrained_cfg", {}).get("first_conv")
    if name and isinstance(backbone.get_submodule(name), nn.Conv2d):
        return name
    for candidate, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            return candidate
    raise PitguardError("the model has no convolution to fold the normalization into")


def first_conv(backbone: nn.Module) -> nn.Conv2d:
    return cast(nn.Conv2d, backbone.get_submodule(first_conv_name(backbone)))


@torch.no_grad()
def infer_logits(
    net: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu", batch_size: int = 256
) -> torch.Tensor:
    """Logits (float32, on CPU) for uint8 crops (N, C, H, W), in eval mode, batch by batch."""
    device = torch.device(device)
    was_training = net.training
    net.eval()
    out = []
    progress = Progress("scoring crops", len(images))
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float().div_(255)
        out.append(net(x).float().cpu())
        progress.update(len(x))
    progress.close()
    net.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)
