"""Run folders and self-describing checkpoints: written atomically, read back without pickled modules."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pitguard.config import Config, config_from_dict
from pitguard.errors import PitguardError
from pitguard.models import InputContract, PitguardNet, build_model

SCHEMA_VERSION = 1


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save of tensors and plain data only (loadable with weights_only=True), then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"schema_version": SCHEMA_VERSION, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise PitguardError(f"{path}: checkpoint not found; is this a pitguard run folder?")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    version = ckpt.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PitguardError(
            f"{path}: checkpoint schema {version}, this pitguard reads {SCHEMA_VERSION}; "
            "use the pitguard version that wrote it"
        )
    return ckpt


@dataclass
class RunModel:
    """A trained (or imported) model read back from a run folder."""

    run: Path
    net: PitguardNet
    classes: tuple[str, ...]
    model_name: str
    model_kwargs: dict
    config: Config | None
    meta: dict

    @property
    def pit_index(self) -> int:
        return self.classes.index("pit")


def save_model(run: Path, net: PitguardNet, meta: dict) -> None:
    """Weights that ship: safetensors plus model.json describing how to rebuild the network."""
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tmp = run / f".model.safetensors.tmp{os.getpid()}"
    save_file(state, str(tmp))
    os.replace(tmp, run / "model.safetensors")
    write_json(run / "model.json", {"schema_version": SCHEMA_VERSION, **meta})


def model_meta(
    name: str,
    kwargs: dict,
    contract: InputContract,
    classes: tuple[str, ...],
    cfg: Config | None,
    extra=None,
) -> dict:
    return {
        "model_name": name,
        "model_kwargs": kwargs,
        "input": contract.to_dict(),
        "classes": list(classes),
        "config": cfg.to_dict() if cfg is not None else None,
        **(extra or {}),
    }


def load_run(run: str | Path) -> RunModel:
    """The shipped weights of a run folder (``model.safetensors`` + ``model.json``)."""
    run = Path(run)
    meta_path = run / "model.json"
    if not meta_path.is_file():
        hint = (
            " (training has not finished an epoch yet?)" if (run / "checkpoints").is_dir() else ""
        )
        raise PitguardError(
            f"{run}: no model.json{hint}; give a run folder written by pitguard train"
        )
    meta = json.loads(meta_path.read_text())
    contract = InputContract.from_dict(meta["input"])
    kwargs = meta["model_kwargs"]
    net = build_model(
        meta["model_name"], kwargs["num_classes"], contract, kwargs.get("drop_rate", 0.0)
    )
    net.load_state_dict(load_file(str(run / "model.safetensors")))
    net.eval()
    cfg = config_from_dict(meta["config"]) if meta.get("config") else None
    return RunModel(run, net, tuple(meta["classes"]), meta["model_name"], kwargs, cfg, meta)
