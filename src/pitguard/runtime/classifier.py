"""The line's classifier: a bundle's ONNX graph, its file checks and its input guard, with no
torch. What a ROS2 node (Python 3.10 and up) imports to score the crops of a frame."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pitguard.core.errors import PitguardError
from pitguard.runtime.backends import BACKENDS, PROVIDERS, ort_session, resolve_device
from pitguard.runtime.bundle import INPUT_NAME, SECOND_LOOK_FILE, open_bundle, prove_graph
from pitguard.runtime.guard import InputGuard
from pitguard.runtime.routes import ROUTES, Route
from pitguard.runtime.self_check import self_check

GRAPHS = tuple(name for name, b in BACKENDS.items() if b.runtime == "onnx")
CHUNK = 256  # crops scored at once: about 0.2 GB of inputs and activations at 128 px


@dataclass(frozen=True)
class Classification:
    """Per-crop results, in input order."""

    routes: np.ndarray  # "clean" / "maybe" / "pit": the calibrated decision, guard applied
    p_pit: np.ndarray  # float32: the calibrated p(pit) the bundle's thresholds apply to
    labels: np.ndarray  # the argmax class
    reasons: np.ndarray  # why the input guard sent a crop to review; "" for the others
    logits: np.ndarray  # float32 (N, classes)
    second_look: np.ndarray | None = None  # bool (N,): scored again by the cascade's stage 2

    def __len__(self) -> int:
        return len(self.routes)


class Classifier:
    """``Classifier(bundle).classify(crops)`` for crops (N, 3, H, W) as numpy arrays: float32
    in [0, 1], as the line sends them, or uint8.

    ``graph`` is ``onnx`` (float32), ``onnx-int8`` or ``onnx-fp16``; ``device`` is ``auto``
    (cuda where ONNX Runtime has a CUDA provider, else cpu), ``cpu``, ``cuda`` or ``tensorrt``,
    and a device whose provider is missing is refused, never replaced by the CPU.

    ``verify`` scores the bundle's check crops on this machine first and refuses a graph that
    routes them otherwise than at export (:mod:`pitguard.runtime.self_check`).

    ``trust`` (a public key file from ``pitguard keygen``, a folder of them, or a list) refuses
    a bundle that no trusted key signed (:mod:`pitguard.runtime.trust`).

    A bundle calibrated with a second look scores the crops its first graph routes maybe again
    with its second graph, and the second's route is final (``second_look=False`` keeps the
    first graph's routes: its own certified policy, more crops to review).
    """

    def __init__(
        self,
        bundle: str | Path,
        graph: str = "onnx",
        device: str = "auto",
        threads: int = 0,
        second_look: bool = True,
        trust=None,
        verify: bool = False,
        meta: dict | None = None,
    ):
        self.bundle = Path(bundle)
        # ``meta``: what open_bundle(bundle, trust) returned, so one caller proves a bundle once
        self.meta = meta if meta is not None else open_bundle(self.bundle, trust=trust)
        if graph not in GRAPHS:
            raise PitguardError(f"graph {graph!r}: choose {', '.join(GRAPHS)}")
        backend = BACKENDS[graph]
        if backend.file_key not in self.meta["files"]:
            raise PitguardError(
                f"{bundle}: has no {graph} graph; export it with "
                f"`pitguard export RUN --out DIR {backend.export_flag}`"
            )
        self.graph = graph
        self.device = resolve_device(device)
        self.session = ort_session(
            self.bundle / self.meta["files"][backend.file_key], threads, self.device
        )
        graph_input = self.session.get_inputs()[0]
        stamps = self.session.get_modelmeta().custom_metadata_map
        prove_graph(self.bundle, self.meta, backend.file_key, stamps, list(graph_input.shape))
        self.provider = self.session.get_providers()[0]
        # the check crops scored again here (runtime.self_check); None unless ``verify``
        self.check = (
            self_check(self.bundle, self.meta, backend.file_key, self.session, graph)
            if verify
            else None
        )
        self.input_dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
        self.classes = tuple(self.meta["classes"])
        self.size = int(self.meta["input"]["size"])
        guard = self.meta.get("input_guard")
        self.guard = InputGuard.from_dict(guard) if guard else None
        self.second = None
        if second_look and graph == "onnx" and SECOND_LOOK_FILE in self.meta["files"]:
            self.second = ort_session(
                self.bundle / self.meta["files"][SECOND_LOOK_FILE], threads, self.device
            )
            second_input = self.second.get_inputs()[0]
            stamps = self.second.get_modelmeta().custom_metadata_map
            prove_graph(self.bundle, self.meta, SECOND_LOOK_FILE, stamps, list(second_input.shape))

    def __repr__(self) -> str:
        return f"Classifier({str(self.bundle)!r}, graph={self.graph!r}, provider={self.provider!r})"

    def classify(self, crops: np.ndarray) -> Classification:
        """Routes, calibrated p(pit), argmax labels and the guard's reasons for ``crops``,
        scored ``CHUNK`` crops at a time so memory stays bounded for any number of crops."""
        if isinstance(crops, np.ndarray) and crops.ndim == 4 and len(crops) > CHUNK:
            parts = [self._classify(crops[i : i + CHUNK]) for i in range(0, len(crops), CHUNK)]
            return _joined(parts)
        return self._classify(crops)

    def _classify(self, crops: np.ndarray) -> Classification:
        x, as_uint8_scale = self._input(crops)
        logits, p_pit, route_ids = self.session.run(None, {INPUT_NAME: x})
        looked = None
        if self.second is not None:
            looked = route_ids == int(Route.MAYBE)
            if looked.any():
                p_pit, route_ids = np.array(p_pit), np.array(route_ids)
                _, p2, r2 = self.second.run(None, {INPUT_NAME: x[looked]})
                p_pit[looked], route_ids[looked] = p2, r2
        routes = np.array([ROUTES[int(r)] for r in route_ids], dtype="<U5")
        if self.guard is not None:
            reasons = np.array(self.guard.check(as_uint8_scale), dtype=object)
        else:
            reasons = np.full(len(routes), "", dtype=object)
        routes[reasons != ""] = Route.MAYBE.label
        return Classification(
            routes=routes,
            p_pit=np.asarray(p_pit, dtype=np.float32),
            labels=np.array([self.classes[i] for i in np.asarray(logits).argmax(1)]),
            reasons=reasons,
            logits=np.asarray(logits, dtype=np.float32),
            second_look=looked,
        )

    def _input(self, crops) -> tuple[np.ndarray, np.ndarray]:
        """The graph's input and the same crops on the 0-255 scale the guard was fitted on."""
        if not isinstance(crops, np.ndarray):
            raise PitguardError(
                f"crops: expected a numpy array (N, 3, {self.size}, {self.size}), got "
                f"{type(crops).__name__} (a torch tensor: crops.cpu().numpy())"
            )
        if crops.ndim == 3:
            crops = crops[None]
        if crops.ndim != 4 or crops.shape[1:] != (3, self.size, self.size):
            raise PitguardError(
                f"crops: expected shape (N, 3, {self.size}, {self.size}), got {crops.shape}"
            )
        if len(crops) == 0:
            raise PitguardError("crops: empty batch")
        if crops.dtype == np.uint8:
            x = crops.astype(np.float32) / np.float32(255)
            return x.astype(self.input_dtype, copy=False), crops
        if not np.issubdtype(crops.dtype, np.floating):
            raise PitguardError(f"crops: expected float32 in [0, 1] or uint8, got {crops.dtype}")
        x = np.ascontiguousarray(crops, dtype=np.float32)
        finite = np.isfinite(x)
        if not finite.all() or x.min() < 0 or x.max() > 1:
            seen = f"{x[finite].min():.3g} to {x[finite].max():.3g}" if finite.any() else "none"
            bad = f", {int((~finite).sum())} not finite" if not finite.all() else ""
            raise PitguardError(
                f"crops: float values must be finite and in [0, 1] (the line's scaling); finite "
                f"values {seen}{bad}; divide uint8 images by 255"
            )
        return x.astype(self.input_dtype, copy=False), x * np.float32(255)


def _joined(parts: list[Classification]) -> Classification:
    looks = [p.second_look for p in parts if p.second_look is not None]
    return Classification(
        routes=np.concatenate([p.routes for p in parts]),
        p_pit=np.concatenate([p.p_pit for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        reasons=np.concatenate([p.reasons for p in parts]),
        logits=np.concatenate([p.logits for p in parts]),
        second_look=np.concatenate(looks) if len(looks) == len(parts) else None,
    )


__all__ = ["PROVIDERS", "Classification", "Classifier"]
