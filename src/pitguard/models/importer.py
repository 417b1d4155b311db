"""Bring weights trained elsewhere (the production torchvision ResNet50) into a pitguard run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pitguard.config import Config, ModelConfig
from pitguard.core.errors import PitguardError
from pitguard.data.layout import CANONICAL_ORDER
from pitguard.models.nets import InputContract, build_model
from pitguard.models.runfolder import model_meta, save_model
from pitguard.models.weights import read_state_dict

# timm's ResNets use torchvision's parameter names, so these state dicts load unchanged.
TORCHVISION_COMPATIBLE = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# blocks per stage and block kind of each: what a state dict's keys tell apart
RESNET_SHAPES: dict[tuple[tuple[int, ...], bool], str] = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}
CLASS_ORDER_NOTE = (
    "the class order cannot be verified from the weights: --classes must list the fc's outputs "
    "in the order the model was trained with (the line's model: clean,maybe,pit)"
)


def resnet_of(state: dict) -> str | None:
    """The torchvision ResNet whose layout ``state`` has, or None."""
    blocks = tuple(
        len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)
    )
    return RESNET_SHAPES.get((blocks, "layer1.0.conv3.weight" in state))


def import_torchvision(
    state_dict: str | Path, arch: str, classes: str, out: str | Path, channels: str = "0,1,2"
) -> dict:
    if arch not in TORCHVISION_COMPATIBLE:
        raise PitguardError(
            f"--arch {arch}: supported torchvision architectures are {', '.join(TORCHVISION_COMPATIBLE)}"
        )
    names = tuple(c.strip() for c in classes.split(",") if c.strip())
    bad = [c for c in names if c not in CANONICAL_ORDER]
    if bad or "pit" not in names or "clean" not in names or len(set(names)) != len(names):
        raise PitguardError(
            f"--classes {classes}: give the fc's outputs in order, each once, from {', '.join(CANONICAL_ORDER)}, "
            "with clean and pit among them (e.g. clean,maybe,pit)"
        )
    state = read_state_dict(state_dict)
    if "fc.weight" not in state:
        raise PitguardError(f"{state_dict}: no fc.weight; is this a torchvision ResNet state dict?")
    found = resnet_of(state)
    if found != arch:
        what = f"a torchvision {found}" if found else "no torchvision ResNet this pitguard knows"
        raise PitguardError(
            f"{state_dict}: holds {what}, not {arch}; pass --arch {found or 'with the right name'}"
        )
    n_out = state["fc.weight"].shape[0]
    if n_out != len(names):
        raise PitguardError(
            f"{state_dict}: fc has {n_out} outputs but --classes names {len(names)} ({classes})"
        )
    chans = tuple(int(c) for c in channels.split(","))
    in_chans = state["conv1.weight"].shape[1]
    if in_chans != len(chans):
        raise PitguardError(
            f"{state_dict}: conv1 takes {in_chans} channels but --channels gives {len(chans)}"
        )
    # The production line feeds crops scaled to [0, 1] without normalization.
    contract = InputContract(size=128, channels=chans)
    net = build_model(arch, n_out, contract)
    missing, unexpected = net.backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PitguardError(
            f"{state_dict}: does not match timm {arch}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    out = Path(out)
    if (out / "model.json").exists():
        raise PitguardError(f"{out}: already holds a model; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg = replace(Config(), model=replace(ModelConfig(), name=arch, channels=chans), recipe=None)
    meta = model_meta(
        arch,
        {"num_classes": n_out, "drop_rate": 0.0},
        contract,
        names,
        cfg,
        {"imported_from": str(Path(state_dict).resolve()), "source": "torchvision"},
    )
    save_model(out, net.eval(), meta)
    return {"run": str(out), "arch": arch, "classes": names, "note": CLASS_ORDER_NOTE}
