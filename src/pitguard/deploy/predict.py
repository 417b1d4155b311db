"""The Predictor: a bundle loaded for inference with ONNX Runtime or PyTorch, on CPU or GPU."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pitguard.data.layout import IMAGE_SUFFIXES
from pitguard.deploy.backends import auto_backend, get_backend, ort_session
from pitguard.deploy.bundle import INPUT_NAME, load_deploy_module, open_bundle
from pitguard.deploy.queue import ReviewQueue
from pitguard.devices import pick_device
from pitguard.errors import PitguardError
from pitguard.policy import ROUTES

# pitguard.data.load (the one image decoder) is imported where paths are decoded: serving gets
# crops as arrays and PNG bytes, and the decoder brings pitguard.config with it.


@dataclass
class Prediction:
    """Per-crop results, in input order."""

    labels: list[str]  # argmax class
    p_pit: np.ndarray  # calibrated pit probability
    routes: list[str]  # clean / maybe / pit of the calibrated decision

    def __len__(self) -> int:
        return len(self.routes)


class Predictor:
    """``predict(batch)`` on uint8 arrays (N, H, W, C) or (N, C, H, W), PIL images, or paths."""

    def __init__(
        self, bundle: str | Path, backend: str = "auto", device: str = "auto", threads: int = 0
    ):
        self.bundle = Path(bundle)
        self.meta = open_bundle(self.bundle)
        self.classes = tuple(self.meta["classes"])
        self.size = int(self.meta["input"]["size"])
        files = self.meta.get("files", {})
        chosen = auto_backend(files) if backend == "auto" else get_backend(backend, serving=True)
        self.device = pick_device(device, "device").type
        self.backend = chosen.name
        if chosen.runtime == "onnx":
            if chosen.file_key not in files:
                raise PitguardError(
                    f"{bundle}: has no {chosen.name} graph; re-export it with "
                    f"`pitguard export RUN --out DIR {chosen.export_flag}`"
                )
            self.session = ort_session(self.bundle / files[chosen.file_key], threads, self.device)
            self.input_dtype = (
                np.float16 if self.session.get_inputs()[0].type == "tensor(float16)" else np.float32
            )
        else:
            torch.set_flush_denormal(True)  # denormal floats slow CPU inference ~10x
            if threads:
                torch.set_num_threads(threads)
            self.module, _ = load_deploy_module(self.bundle, self.meta)
            self.module.to(self.device)

    # ------------------------------------------------------------------ input conversion

    def to_uint8(self, batch) -> np.ndarray:
        """(N, 3, H, W) uint8 from any accepted input; raises PitguardError naming the problem."""
        if isinstance(batch, np.ndarray | torch.Tensor):
            arr = batch.cpu().numpy() if isinstance(batch, torch.Tensor) else batch
            if arr.dtype != np.uint8:
                raise PitguardError(f"expected a uint8 array, got {arr.dtype}")
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
                    from pitguard.data.load import DecodeOptions, decode_bytes

                    decoded, problem = decode_bytes(
                        Path(item).read_bytes(), str(item), DecodeOptions(size=self.size)
                    )
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
        x = crops.astype(np.float32) / np.float32(255)
        if self.backend == "eager":
            with torch.no_grad():
                logits, p, route = (
                    t.cpu().numpy() for t in self.module(torch.from_numpy(x).to(self.device))
                )
        else:
            logits, p, route = self.session.run(None, {INPUT_NAME: x.astype(self.input_dtype)})
        labels = [self.classes[i] for i in np.asarray(logits).argmax(1)]
        return Prediction(labels, np.asarray(p, dtype=np.float32), [ROUTES[int(r)] for r in route])

    def predict(self, batch) -> Prediction:
        return self.predict_uint8(self.to_uint8(batch))


def load(
    bundle: str | Path, backend: str = "auto", device: str = "auto", threads: int = 0
) -> Predictor:
    """Load a bundle for inference (ONNX Runtime when it has ONNX, else PyTorch)."""
    return Predictor(bundle, backend, device, threads)


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            out.append(p)
    return out


def predict_files(
    predictor: Predictor,
    paths: Sequence[str | Path],
    out_csv: Path | None,
    batch_size: int = 64,
    queue: ReviewQueue | None = None,
) -> dict:
    """Classify files and folders; unreadable files get a row with their error, the rest are
    classified. ``queue`` keeps the crops routed to review for people to label."""
    files = expand_paths(paths)
    if not files:
        raise PitguardError(f"no image files found in {', '.join(map(str, paths))}")
    from pitguard.data.load import DecodeOptions, decode_bytes

    rows: list[dict] = []
    good: list[tuple[int, np.ndarray]] = []
    opts = DecodeOptions(size=predictor.size)
    for i, f in enumerate(files):
        try:
            arr, problem = decode_bytes(f.read_bytes(), str(f), opts)
        except OSError as exc:
            rows.append(
                {
                    "path": str(f),
                    "route": "",
                    "p_pit": "",
                    "label": "",
                    "error": f"cannot read: {exc}",
                }
            )
            continue
        if arr is None:
            reason = problem.reason if problem else "unreadable"
            rows.append({"path": str(f), "route": "", "p_pit": "", "label": "", "error": reason})
            continue
        rows.append({"path": str(f), "route": None, "p_pit": None, "label": None, "error": ""})
        good.append((i, arr))
    good_arrays = dict(good)
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        pred = predictor.predict_uint8(np.stack([a for _, a in chunk]).transpose(0, 3, 1, 2).copy())
        for (i, _), route, p, label in zip(
            chunk, pred.routes, pred.p_pit, pred.labels, strict=True
        ):
            rows[i].update(route=route, p_pit=f"{float(p):.6f}", label=label)
            if queue is not None:
                queue.offer(good_arrays[i], rows[i]["path"], route, float(p))
    if out_csv is not None:
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        with out_csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "route", "p_pit", "label", "error"])
            writer.writeheader()
            writer.writerows(rows)
    counts = {r: sum(1 for row in rows if row["route"] == r) for r in ROUTES}
    return {
        "n": len(files),
        "failed": sum(1 for r in rows if r["error"]),
        "routes": counts,
        "rows": rows,
        "queued": queue.kept if queue is not None else None,
    }
