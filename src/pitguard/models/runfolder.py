"""A run folder: the one owner of its file names, checkpoints, weights, policy and data parts.

Every other stage asks this module where a run's files are and how to read them.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pitguard.config import Config, config_from_dict
from pitguard.core.devices import pick_device
from pitguard.core.errors import PitguardError
from pitguard.core.files import atomic_write, read_json, write_json
from pitguard.data.layout import find_dataset, parse_class_mapping
from pitguard.data.load import Crops, DecodeOptions, load_crops
from pitguard.models.nets import InputContract, PitguardNet, build_model, infer_logits
from pitguard.models.views import TEST_TIME_VIEWS, dihedral_views
from pitguard.runtime.policy import DecisionPolicy

SCHEMA_VERSION = 1
BENCH_FILE = "bench.json"  # what `pitguard bench --json` is asked to write into a run
CHECKPOINTS, EVALS, CALIBRATION, THRESHOLDS = "checkpoints", "eval", "calibration", "thresholds"
FOLDS = "folds"  # a cross-fitted run's fold models, each an ordinary run folder


@dataclass(frozen=True)
class RunPaths:
    """Where each file of a run folder lies."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.json")  # resolved settings
    data = property(lambda self: self.root / "data.json")  # what was read, counts, fingerprint
    split = property(lambda self: self.root / "split.csv")  # the exact split trained on
    model = property(lambda self: self.root / "model.json")  # how to rebuild the shipped weights
    weights = property(lambda self: self.root / "model.safetensors")
    policy = property(lambda self: self.root / "policy.json")  # the calibrated decision
    summary = property(lambda self: self.root / "train_summary.json")
    history_jsonl = property(lambda self: self.root / "history.jsonl")
    history_csv = property(lambda self: self.root / "history.csv")
    curves = property(lambda self: self.root / "curves.png")
    augment_grid = property(lambda self: self.root / "augment_grid.png")
    bench = property(lambda self: self.root / BENCH_FILE)
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    last_checkpoint = property(lambda self: self.root / CHECKPOINTS / "last.pt")
    best_checkpoint = property(lambda self: self.root / CHECKPOINTS / "best.pt")
    evals = property(lambda self: self.root / EVALS)  # one folder per evaluated data part
    calibration = property(lambda self: self.root / CALIBRATION)
    thresholds = property(lambda self: self.root / THRESHOLDS)
    folds = property(lambda self: self.root / FOLDS)
    crossfit = property(lambda self: self.root / "crossfit.json")  # folds, plan, per-fold results
    oof = property(lambda self: self.root / "oof.csv")  # every pooled crop's out-of-fold logits

    def fold(self, k: int) -> Path:
        return self.folds / f"fold-{k}"

    def eval_dir(self, ev: EvalData) -> Path:
        """``eval/test`` for a part of the run's own split, ``eval/FOLDER-PART`` for other data."""
        if ev.source.resolve() == self.split.resolve():
            return self.evals / ev.part
        name = ev.source.stem if ev.source.suffix.lower() == ".csv" else ev.source.name
        keep = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        return self.evals / f"{keep.strip('_')[-60:] or 'data'}-{ev.part}"

    def eval_metrics(self) -> list[Path]:
        return sorted(self.evals.glob(f"*/{EVAL_METRICS}"))


# Files inside an evaluation folder (RunPaths.eval_dir), the calibration and thresholds folders.
EVAL_METRICS = "metrics.json"
EVAL_PREDICTIONS = "predictions.csv"
EVAL_CONFUSION = "confusion_matrix.png"
EVAL_ROC_PR = "roc_pr.png"
CALIB_REPORT = "policy_report.json"
CALIB_OPERATING_CURVE = "operating_curve.png"
CALIB_RELIABILITY = "reliability.png"
SWEEP_JSON = "sweep.json"
SWEEP_PNG = "sweep.png"

# Folder names inside a run that are never runs themselves.
INNER_FOLDERS = frozenset({CHECKPOINTS, EVALS, CALIBRATION, THRESHOLDS, FOLDS})


def is_run(path: str | Path) -> bool:
    return RunPaths(Path(path)).model.is_file()


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save of tensors and plain data only (loadable with weights_only=True), then rename."""
    atomic_write(path, lambda tmp: torch.save({"schema_version": SCHEMA_VERSION, **payload}, tmp))


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise PitguardError(f"{path}: checkpoint not found; is this a pitguard run folder?")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        raise PitguardError(
            f"{path}: damaged checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            f"it cannot be resumed. If {path.parent / 'best.pt'} is intact, copy it over "
            f"{path.name} to resume from that epoch; otherwise train again with a new --out"
        ) from err
    version = ckpt.get("schema_version") if isinstance(ckpt, dict) else None
    if version != SCHEMA_VERSION:
        raise PitguardError(
            f"{path}: checkpoint schema {version}, this pitguard reads {SCHEMA_VERSION}; "
            "use the pitguard version that wrote it"
        )
    return ckpt


def write_history(run: Path, history: list[dict]) -> None:
    """Rewritten whole every epoch: a resumed run never appends to an older run's rows."""
    import csv

    paths = RunPaths(run)
    atomic_write(
        paths.history_jsonl,
        lambda tmp: tmp.write_text("".join(json.dumps(h) + "\n" for h in history)),
    )
    if history:

        def write_csv(tmp: Path) -> None:
            with tmp.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(history[0]))
                writer.writeheader()
                writer.writerows(history)

        atomic_write(paths.history_csv, write_csv)


def kept_val_accuracy(history: list[dict], epoch: int) -> float | None:
    """Val accuracy of the epoch a run kept (its best, or its last under select_metric=last).

    Comparable across runs whatever they selected on; None without a val part.
    """
    for row in history:
        if row["epoch"] == epoch:
            return row.get("val_accuracy")
    return None


# --------------------------------------------------------------------------- weights


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
    paths = RunPaths(run)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    atomic_write(paths.weights, lambda tmp: save_file(state, str(tmp)))
    write_json(paths.model, {"schema_version": SCHEMA_VERSION, **meta})


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
    paths = RunPaths(run)
    meta_path = paths.model
    if not meta_path.is_file():
        hint = " (training has not finished an epoch yet?)" if paths.checkpoints.is_dir() else ""
        raise PitguardError(
            f"{run}: no model.json{hint}; give a run folder written by pitguard train"
        )
    meta = json.loads(meta_path.read_text())
    contract = InputContract.from_dict(meta["input"])
    kwargs = meta["model_kwargs"]
    net = build_model(
        meta["model_name"], kwargs["num_classes"], contract, kwargs.get("drop_rate", 0.0)
    )
    net.load_state_dict(load_file(str(paths.weights)))
    net.eval()
    cfg = config_from_dict(meta["config"]) if meta.get("config") else None
    return RunModel(run, net, tuple(meta["classes"]), meta["model_name"], kwargs, cfg, meta)


def unfinished_training(run: str | Path) -> str | None:
    """Why a run trained here has not done its planned epochs (None when it has, or when it was
    not trained by pitguard, an imported one); an early stop and a time budget count as done."""
    paths = RunPaths(Path(run))
    summary = read_json(paths.summary)
    if summary is None:
        if not paths.history_jsonl.is_file():
            return None
        done = sum(1 for line in paths.history_jsonl.read_text().splitlines() if line.strip())
        return f"training stopped after epoch {done} and never finished (no {paths.summary.name})"
    ran, planned = summary.get("epochs_run", 0), summary.get("epochs_planned", 0)
    reason = str(summary.get("stop_reason", ""))
    if ran < planned and not reason.startswith(("early stop", "time budget")):
        return f"{ran} of {planned} planned epochs done ({reason})"
    return None


def refuse_unfinished(run: Path, allow_unfinished: bool, verb: str) -> str | None:
    """Why the run is unfinished, where ``allow_unfinished`` lets it through; else refuses
    naming the fix (``verb``: what the caller does with the run)."""
    why = unfinished_training(run)
    if why and not allow_unfinished:
        raise PitguardError(
            f"{run}: training is unfinished ({why}); finish it with pitguard train --resume "
            f"{run}, or {verb} it as it is with --allow-unfinished"
        )
    return why


def load_policy(run: str | Path) -> DecisionPolicy | None:
    """The calibrated decision of a run folder, or None when it has not been calibrated."""
    record = read_json(RunPaths(Path(run)).policy)
    return DecisionPolicy.from_dict(record["policy"]) if record else None


# --------------------------------------------------------------------------- data parts


@dataclass
class EvalData:
    """Crops of one data part, labelled with the run's class indices."""

    crops: Crops
    labels: np.ndarray  # class indices of the run's classes
    source: Path  # the dataset read (class folders, split folders or a manifest)
    part: str  # the split part read, or "all"

    @property
    def description(self) -> str:
        """For people: ``source [part]``. Stages read ``source`` and ``part`` instead."""
        return f"{self.source} [{self.part}]"


def evaluated_part(metrics: dict) -> tuple[str, str]:
    """(source, part) of an evaluation's metrics.json.

    Files written before ``source`` and ``part`` were recorded hold only ``data`` as
    ``"SOURCE [PART]"``, which ``EvalData.description`` wrote; this owner reads that form back.
    """
    if "part" in metrics:
        return str(metrics.get("source") or ""), str(metrics["part"])
    data = str(metrics.get("data") or "")
    source, sep, part = data.rpartition(" [")
    return (source, part[:-1]) if sep and part.endswith("]") else (data, "")


def split_source(run: RunModel) -> Path:
    """The manifest a run was trained from (its own split.csv, or the data it was given)."""
    own = RunPaths(run.run).split
    if own.is_file():
        return own
    if run.config is not None and run.config.data.path:
        return Path(run.config.data.path)
    raise PitguardError(f"{run.run}: the run records no data; pass --data DIR")


def split_parts(run: str | Path) -> frozenset | None:
    """A run's split as (crop file, part) pairs, independent of where its split.csv lies."""
    manifest = RunPaths(Path(run)).split
    if not manifest.is_file():
        return None
    return frozenset((str(it.path), it.split) for it in find_dataset(manifest).items)


def load_part(
    run: RunModel, data: str | Path | None, part: str | None, classes: str | None = None
) -> EvalData:
    """Crops to evaluate: DATA's ``part`` when it has splits (default test), else all of DATA."""
    source = Path(data) if data is not None else split_source(run)
    index = find_dataset(source, parse_class_mapping(classes))
    opts = DecodeOptions(
        size=run.net.contract.size,
        modes=run.config.data.modes if run.config else "skip",
        sizes=run.config.data.sizes if run.config else "skip",
    )
    if any(it.split for it in index.items):
        part = part or "test"
        items = [it for it in index.items if it.split == part]
        if not items:
            raise PitguardError(
                f"{source}: no '{part}' part; found {', '.join(index.splits())}; choose --split"
            )
    else:
        if part:
            raise PitguardError(
                f"{source}: has no splits, so --split {part} does not apply; it is evaluated whole"
            )
        items, part = index.items, "all"
    unknown = [c for c in index.classes if c not in run.classes]
    if unknown:
        raise PitguardError(
            f"{source}: class(es) {', '.join(unknown)} are not among the run's classes "
            f"{', '.join(run.classes)}"
        )
    crops = load_crops(index, opts, items=items)
    if len(crops) == 0:
        raise PitguardError(f"{source} [{part}]: no readable crops")
    remap = np.array([run.classes.index(c) for c in index.classes])
    return EvalData(crops, remap[crops.labels.numpy()], source, part)


def run_logits(
    run: RunModel, crops: Crops, device: str = "auto", batch_size: int = 256
) -> torch.Tensor:
    dev = pick_device(device)
    torch.set_flush_denormal(True)  # denormal floats slow CPU math ~10x
    run.net.to(dev)
    try:
        return infer_logits(run.net, crops.images, dev, batch_size)
    finally:
        run.net.cpu()


def view_logits(
    net: torch.nn.Module, images: torch.Tensor, views: str, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The mean logits of ``net`` over the test-time ``views`` of uint8 crops (N, C, H, W)
    (``none``: the crops alone), float32 on CPU: what a cascade's second look scores a crop in
    doubt with."""
    if views not in TEST_TIME_VIEWS:
        raise PitguardError(f"views {views!r}: choose {', '.join(TEST_TIME_VIEWS)}")
    if not len(images):
        return torch.zeros(0, 0)
    net.to(device)
    try:
        stack = [infer_logits(net, v.contiguous(), device) for v in dihedral_views(images, views)]
    finally:
        net.cpu()
    return torch.stack(stack).mean(0)
