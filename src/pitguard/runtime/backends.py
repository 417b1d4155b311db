"""The inference backends a bundle can run on: one registry for predict, serve, bench and export."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from pitguard.core.errors import PitguardError

WEIGHTS_FILE = "model.safetensors"  # the bundle's weights, read by the eager backends


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: str  # "torch" (the bundle's safetensors weights) or "onnx" (an ONNX Runtime graph)
    file_key: str  # key of its file in bundle.json's "files"
    file_name: str  # the file pitguard export writes for it
    export_flag: str | None  # the `pitguard export` flag that writes its graph
    autocast: str | None = None  # torch dtype name for half-precision eager runs


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("eager", "torch", "weights", WEIGHTS_FILE, None),
        Backend("onnx", "onnx", "onnx", "model.onnx", "--onnx"),
        Backend("onnx-int8", "onnx", "onnx_int8", "model.int8.onnx", "--int8"),
        Backend("onnx-fp16", "onnx", "onnx_fp16", "model.fp16.onnx", "--fp16"),
        Backend("eager-fp16", "torch", "weights", WEIGHTS_FILE, None, "float16"),
        Backend("eager-bf16", "torch", "weights", WEIGHTS_FILE, None, "bfloat16"),
    )
}
ALIASES = {"torch": "eager"}  # `pitguard predict --backend torch` reads as plain PyTorch
SERVING = ("eager", "onnx", "onnx-int8", "onnx-fp16")  # what predict and serve load directly


def get_backend(name: str, serving: bool = False) -> Backend:
    """The backend called ``name`` (or an alias); ``serving``: one predict and serve can load.

    The error lists the choices and names the closest.
    """
    name = ALIASES.get(name, name)
    choices = SERVING if serving else tuple(BACKENDS)
    if name in BACKENDS and name not in choices:
        raise PitguardError(
            f"backend {name!r}: timed by pitguard bench only, not loaded by predict or serve; "
            f"choose auto, {', '.join(choices)} (torch is eager)"
        )
    if name not in choices:
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        if serving:
            listed = "auto, " + ", ".join(choices)
        else:
            listed = ", ".join(choices) + " (e.g. --backends eager,onnx,onnx-int8)"
        raise PitguardError(f"backend {name!r}: unknown{hint}; choose from {listed}")
    return BACKENDS[name]


def auto_backend(files: dict[str, str]) -> Backend:
    """ONNX Runtime when the bundle has an ONNX graph, else PyTorch."""
    return BACKENDS["onnx" if BACKENDS["onnx"].file_key in files else "eager"]


# ONNX Runtime's execution providers by the device name pitguard takes; never a silent fallback
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def resolve_device(device: str) -> str:
    """``auto``: cuda where ONNX Runtime has a CUDA provider, else cpu; a named device must
    have its provider installed."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "auto":
        return "cuda" if PROVIDERS["cuda"] in available else "cpu"
    if device not in PROVIDERS:
        raise PitguardError(f"device {device!r}: choose auto, {', '.join(PROVIDERS)}")
    if PROVIDERS[device] not in available:
        raise PitguardError(
            f"device {device}: this onnxruntime has no {PROVIDERS[device]} (it has "
            f"{', '.join(available)}); install the GPU runtime (pip install 'pitguard[gpu]', "
            "which brings onnxruntime-gpu) or choose device cpu"
        )
    return device


def ort_session(path: Path, threads: int = 0, device: str = "cpu"):
    """An ONNX Runtime session that flushes denormals, on ``device`` (cpu, cuda, tensorrt) and
    nowhere else: a provider that is missing or fails to start is refused, never replaced."""
    import onnxruntime as ort

    device = resolve_device(device)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    wanted = PROVIDERS[device]
    # CPU stays listed after a GPU provider for the few operators it cannot place (ONNX
    # Runtime's own split); the session's first provider is the one asked for, checked below.
    providers = [wanted] if device == "cpu" else [wanted, PROVIDERS["cpu"]]
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as err:  # onnxruntime raises its own classes for a graph it cannot load
        raise PitguardError(
            f"{path}: ONNX Runtime cannot load it ({str(err).splitlines()[0][:160]}); "
            "export the bundle again"
        ) from err
    if session.get_providers()[0] != wanted:
        raise PitguardError(
            f"{path}: ONNX Runtime did not start {wanted} (it runs on "
            f"{session.get_providers()[0]}: are the GPU's CUDA libraries installed?); fix the "
            "GPU runtime or choose device cpu"
        )
    return session
