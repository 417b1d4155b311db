"""The Predictor: a bundle loaded for inference with ONNX Runtime or PyTorch, on CPU or GPU."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pitguard.core.devices import pick_device
from pitguard.core.errors import PitguardError
from pitguard.core.files import atomic_path, naming_errors
from pitguard.core.progress import Progress
from pitguard.data.layout import CLASS_ALIASES, IMAGE_SUFFIXES
from pitguard.deploy.bundle import load_deploy_module, load_second_stage
from pitguard.runtime.backends import auto_backend, get_backend
from pitguard.runtime.bundle import open_bundle
from pitguard.runtime.classifier import Classifier
from pitguard.runtime.guard import InputGuard
from pitguard.runtime.policy import PREDICTION_COLUMNS, ROUTES, Route
from pitguard.runtime.queue import ReviewQueue

MAYBE = Route.MAYBE.label
FLOATS = (np.float32, np.float64, np.float16, torch.float32, torch.float64, torch.float16)

# pitguard.data.load (the one image decoder) is imported where paths are decoded: serving gets
# crops as arrays and PNG bytes, and the decoder brings pitguard.config with it.


@dataclass
class Prediction:
    """Per-crop results, in input order."""

    labels: list[str]  # argmax class
    p_pit: np.ndarray  # calibrated pit probability
    routes: list[str]  # clean / maybe / pit of the calibrated decision
    reasons: list[str]  # why the input guard sent a crop to maybe; "" for the others

    def __len__(self) -> int:
        return len(self.routes)


class Predictor:
    """``predict(batch)`` on uint8 arrays (N, H, W, C) or (N, C, H, W), float32 arrays in [0, 1],
    PIL images, or paths."""

    def __init__(
        self,
        bundle: str | Path,
        backend: str = "auto",
        device: str = "auto",
        threads: int = 0,
        second_look: bool = True,
        trust=None,
    ):
        self.bundle = Path(bundle)
        self.meta = open_bundle(self.bundle, trust=trust)
        self.second = None
        self.classes = tuple(self.meta["classes"])
        guard = self.meta.get("input_guard")
        self.guard = InputGuard.from_dict(guard) if guard else None
        self.size = int(self.meta["input"]["size"])
        files = self.meta.get("files", {})
        chosen = auto_backend(files) if backend == "auto" else get_backend(backend, serving=True)
        self.backend = chosen.name
        if chosen.runtime == "onnx":  # the line's runtime, with its graph proved on load
            self.runtime = Classifier(
                self.bundle, chosen.name, device, threads, second_look, meta=self.meta
            )
            self.session = self.runtime.session
            self.device = self.runtime.device
        else:
            self.device = pick_device(device, "device").type
            torch.set_flush_denormal(True)  # denormal floats slow CPU inference ~10x
            if threads:
                torch.set_num_threads(threads)
            self.module, _ = load_deploy_module(self.bundle, self.meta)
            self.module.to(self.device)
            look = self.meta.get("second_look") if second_look else None
            if look:
                second = load_second_stage(self.bundle, self.meta, self.module)
                self.second = second.to(self.device)

    # ------------------------------------------------------------------ input conversion

    def to_uint8(self, batch) -> np.ndarray:
        """(N, 3, H, W) uint8 from any accepted input; raises PitguardError naming the problem."""
        if isinstance(batch, np.ndarray | torch.Tensor):
            arr = batch.cpu().numpy() if isinstance(batch, torch.Tensor) else batch
            if arr.dtype != np.uint8:
                raise PitguardError(
                    f"expected a uint8 array, got {arr.dtype} (float32 crops in [0, 1]: "
                    "predict(batch) takes them)"
                )
            if arr.ndim == 3:
                arr = arr[None]
            if arr.ndim != 4:
                raise PitguardError(f"expected (N, H, W, C) or (N, C, H, W), got shape {arr.shape}")
            if arr.shape[-1] == 3 and arr.shape[1] != 3:
                arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
            elif arr.shape[1] != 3:
                raise PitguardError(f"expected 3 channels, got shape {arr.shape}")
            if arr.shape[2:] != (self.size, self.size):
                raise PitguardError(
                    f"expected {self.size}x{self.size} crops, got {arr.shape[2]}x{arr.shape[3]}"
                )
            return np.ascontiguousarray(arr)
        if isinstance(batch, Sequence) and not isinstance(batch, str | bytes):
            crops = []
            for i, item in enumerate(batch):
                if isinstance(item, Image.Image):
                    if item.mode != "RGB" or item.size != (self.size, self.size):
                        raise PitguardError(
                            f"image {i}: mode {item.mode} size {item.size}, expected RGB {self.size}x{self.size}"
                        )
                    crops.append(np.asarray(item, dtype=np.uint8))
                elif isinstance(item, str | Path):
                    from pitguard.data.load import DecodeOptions, decode_bytes, read_crop

                    data = read_crop(item)  # regular files only, size capped
                    if isinstance(data, str):
                        raise PitguardError(f"{item}: {data}")
                    decoded, problem = decode_bytes(data, str(item), DecodeOptions(size=self.size))
                    if decoded is None:
                        raise PitguardError(
                            f"{item}: {problem.reason if problem else 'unreadable'}"
                        )
                    crops.append(decoded)
                else:
                    raise PitguardError(
                        f"item {i}: expected a PIL image or a path, got {type(item).__name__}"
                    )
            if not crops:
                raise PitguardError("empty batch")
            return np.stack(crops).transpose(0, 3, 1, 2).copy()
        raise PitguardError(
            f"cannot predict on {type(batch).__name__}: give a uint8 array, PIL images or paths"
        )

    # ------------------------------------------------------------------ inference

    def predict_uint8(self, crops: np.ndarray) -> Prediction:
        if len(crops) == 0:
            raise PitguardError("empty batch")
        if self.backend != "eager":
            out = self.runtime.classify(crops)
            return Prediction(list(out.labels), out.p_pit, list(out.routes), list(out.reasons))
        x = crops.astype(np.float32) / np.float32(255)
        return self.decide(crops, *self._eager(x))

    def decide(self, crops: np.ndarray, logits, p, route) -> Prediction:
        """The graph's outputs as a Prediction, crops the input guard flags routed to maybe."""
        labels = [self.classes[i] for i in np.asarray(logits).argmax(1)]
        routes = [ROUTES[int(r)] for r in route]
        reasons = self.guard.check(crops) if self.guard else [""] * len(routes)
        routes = [MAYBE if why else r for r, why in zip(routes, reasons, strict=True)]
        return Prediction(labels, np.asarray(p, dtype=np.float32), routes, reasons)

    def predict(self, batch) -> Prediction:
        """uint8 arrays, PIL images or paths; or float32 arrays in [0, 1], (N, 3, H, W) as the
        line sends them (NHWC too), scored as they are, without rounding to uint8."""
        if isinstance(batch, np.ndarray | torch.Tensor) and batch.dtype in FLOATS:
            return self.predict_float(batch)
        return self.predict_uint8(self.to_uint8(batch))

    def predict_float(self, batch) -> Prediction:
        arr = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else batch
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim == 4 and arr.shape[-1] == 3 and arr.shape[1] != 3:
            arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        if self.backend != "eager":  # the runtime checks shape, range and finiteness
            out = self.runtime.classify(np.ascontiguousarray(arr, dtype=np.float32))
            return Prediction(list(out.labels), out.p_pit, list(out.routes), list(out.reasons))
        if arr.ndim != 4 or arr.shape[1:] != (3, self.size, self.size):
            raise PitguardError(f"expected (N, 3, {self.size}, {self.size}), got {arr.shape}")
        x = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise PitguardError("float crops must be finite and in [0, 1]; divide uint8 by 255")
        return self.decide(x * np.float32(255), *self._eager(x))

    def _eager(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits, p(pit) and routes of the bundle's module on float crops; with a second look,
        the crops it routes maybe are scored again by the second stage, as the graphs do."""
        with torch.no_grad():
            batch = torch.from_numpy(x).to(self.device)
            logits, p, route = (t.cpu().numpy().copy() for t in self.module(batch))
            looked = np.flatnonzero(route == int(Route.MAYBE))
            if self.second is not None and len(looked):
                _, p2, r2 = self.second(batch[torch.from_numpy(looked).to(self.device)])
                p[looked], route[looked] = p2.cpu().numpy(), r2.cpu().numpy()
        return logits, p, route


def load(
    bundle: str | Path, backend: str = "auto", device: str = "auto", threads: int = 0, trust=None
) -> Predictor:
    """Load a bundle for inference (ONNX Runtime when it has ONNX, else PyTorch); ``trust``: a
    public key or keyring that must have signed it."""
    return Predictor(bundle, backend, device, threads, trust=trust)


ROW_FIELDS = PREDICTION_COLUMNS


def walk_images(paths: Sequence[str | Path]) -> Iterator[tuple[Path, str | None]]:
    """``(file, None)`` for each image file under ``paths`` (folders walked, symbolic links
    followed once), ``(path, reason)`` for each entry that cannot be read: an unreadable folder,
    a broken link, a link loop. A file given directly is read as it is, whatever its suffix."""
    for p in map(Path, paths):
        if not p.is_dir():
            yield p, None
            continue
        errors: list[OSError] = []
        seen = {os.path.realpath(p)}
        for folder, dirnames, filenames in os.walk(p, followlinks=True, onerror=errors.append):
            yield from _listing_errors(errors)
            dirnames.sort()
            for d in list(dirnames):
                real = os.path.realpath(os.path.join(folder, d))
                if real in seen:
                    dirnames.remove(d)
                    yield Path(folder, d), "symbolic link loop: a folder already walked"
                seen.add(real)
            for name in sorted(filenames):
                path = Path(folder, name)
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if not path.exists():
                    yield path, "broken symbolic link (or a link loop): nothing to read"
                    continue
                yield path, None
        yield from _listing_errors(errors)


def _listing_errors(errors: list[OSError]) -> Iterator[tuple[Path, str]]:
    while errors:
        err = errors.pop(0)
        yield Path(str(err.filename)), f"cannot list this folder: {err.strerror}"


@contextmanager
def _row_writer(out_csv: Path | None) -> Iterator[Callable[[dict], None]]:
    """Rows written as they come to a temporary file renamed into place at the end; the file is
    opened first, so an output that cannot be written stops the run before any inference."""
    if out_csv is None:
        yield lambda row: None
        return
    if out_csv.is_dir():
        raise PitguardError(f"--out {out_csv}: is a folder; give a CSV file path")
    with atomic_path(out_csv) as tmp:
        with naming_errors(out_csv):  # a full disk raises from a write, naming no file
            fh = tmp.open("w", newline="")
            writer = csv.DictWriter(fh, fieldnames=list(ROW_FIELDS))
            writer.writeheader()

        def write(row: dict) -> None:
            with naming_errors(out_csv):
                writer.writerow(row)

        try:
            yield write
        except BaseException:
            with suppress(OSError):  # the first error is the one to report
                fh.close()  # atomic_path then removes the temporary: no partial CSV is left
            raise
        with naming_errors(out_csv):
            fh.close()  # the last buffered rows reach the disk here


def predict_files(
    predictor: Predictor,
    paths: Sequence[str | Path],
    out_csv: Path | None,
    batch_size: int = 64,
    queue: ReviewQueue | None = None,
    on_row: Callable[[dict], None] | None = None,
    keep_rows: bool = False,
) -> dict:
    """Classify files and folders, streaming: decoded ``batch_size`` at a time, each row written
    (and passed to ``on_row``) in input order as its batch is done. Unreadable files and
    folders get a row with their error; ``queue`` keeps the crops routed to review. A crop in a
    class folder (cherry_clean/, pit/, ...) gets that class as its true label, and the routes
    are also counted per true class."""
    from pitguard.data.load import DecodeOptions

    opts = DecodeOptions(size=predictor.size)
    counts = dict.fromkeys(ROUTES, 0)
    by_class: dict[str, dict[str, int]] = {}  # true class -> routes, for crops in class folders
    kept: list[dict] = []
    n = failed = 0
    with _row_writer(out_csv) as write:
        pending: list[tuple[dict, np.ndarray | None]] = []

        def flush() -> None:
            nonlocal failed
            arrays = [a for _, a in pending if a is not None]
            if arrays:
                pred = predictor.predict_uint8(np.stack(arrays).transpose(0, 3, 1, 2).copy())
                done = iter(zip(pred.routes, pred.p_pit, pred.labels, pred.reasons, strict=True))
            for row, arr in pending:
                if arr is not None:
                    route, p, label, why = next(done)
                    row.update(route=route, p_pit=f"{float(p):.6f}", predicted=label, reason=why)
                    counts[route] += 1
                    if row["true_label"]:
                        by_class.setdefault(row["true_label"], dict.fromkeys(ROUTES, 0))[route] += 1
                    if queue is not None:
                        queue.offer(arr, row["path"], route, float(p))
                else:
                    failed += 1
                write(row)
                if on_row is not None:
                    on_row(row)
                if keep_rows:
                    kept.append(row)
            pending.clear()

        n_arrays = 0
        files = list(walk_images(paths))  # paths only: the crops are read batch by batch
        progress = Progress("predicting", len(files), "files")
        for path, reason in files:
            n += 1
            progress.update()
            row, arr = _read_row(path, reason, opts)
            pending.append((row, arr))
            n_arrays += arr is not None
            if n_arrays >= batch_size:
                flush()
                n_arrays = 0
        if n == 0:
            raise PitguardError(f"no image files found in {', '.join(map(str, paths))}")
        flush()
        progress.close()
    return {
        "n": n,
        "failed": failed,
        "routes": counts,
        "by_class": by_class,
        "rows": kept if keep_rows else None,
        "queued": queue.kept if queue is not None else None,
    }


def _read_row(path: Path, reason: str | None, opts) -> tuple[dict, np.ndarray | None]:
    """A file's prediction row so far (its true label where its folder names a class, or its
    error) and its decoded crop, or None where it cannot be read."""
    from pitguard.data.load import decode_bytes, read_crop

    row = dict.fromkeys(ROW_FIELDS, "") | {"path": str(path), "error": reason or ""}
    row["true_label"] = CLASS_ALIASES.get(Path(path).parent.name.lower(), "")
    if reason is not None:
        return row, None
    data = read_crop(path)  # regular files only: a FIFO or device is listed unread
    if isinstance(data, str):
        row["error"] = data
        return row, None
    arr, problem = decode_bytes(data, str(path), opts)
    if arr is None:
        row["error"] = problem.reason if problem else "unreadable"
    return row, arr
