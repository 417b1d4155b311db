"""The deployable bundle: weights, input contract and calibrated decision in one folder.

This module is the one reader and writer of ``bundle.json``. ``model.safetensors`` holds the
deploy module's weights (normalization folded into the first convolution); ``model.onnx`` (and
``model.int8.onnx``, ``model.fp16.onnx``) are the same graph for ONNX Runtime. The graph takes
float crops in [0, 1], (N, 3, H, W) as the line sends them, and returns logits, p(pit) and the
route id of :class:`pitguard.policy.Route`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pitguard.deploy.backends import WEIGHTS_FILE
from pitguard.errors import PitguardError
from pitguard.files import file_sha256, read_json, write_json
from pitguard.policy import DecisionPolicy, Route

if TYPE_CHECKING:
    from pitguard.models import PitguardNet

BUNDLE_SCHEMA = 3  # 2: the input contract may hold a centre crop; 3: a sha256 per file
READABLE_BUNDLE_SCHEMAS = (1, 2, 3)
HASHED_SCHEMA = 3  # from this schema on, every file's sha256 is recorded and checked
BUNDLE_JSON = "bundle.json"
INPUT_NAME = "crops"  # the graph's input and outputs, as ONNX names them
OUTPUT_NAMES = ("logits", "p_pit", "route")
OUTPUTS = dict(
    zip(
        OUTPUT_NAMES,
        (
            "(N, classes)",
            "(N,) calibrated",
            "(N,) " + ", ".join(f"{r.value} {r.label}" for r in Route),
        ),
        strict=True,
    )
)
REQUIRED_KEYS = ("model_name", "model_kwargs", "classes", "input", "policy", "files")
POLICY_KEYS = ("temperature", "t_low", "t_high")  # policy values the graph holds as buffers
# Below the smallest normal float32 (1.18e-38): such weights only cost CPU time as denormals.
DENORMAL_LIMIT = 1e-30


class DeployModule(nn.Module):
    """What ships: the network and the decision policy as one graph."""

    def __init__(self, net: PitguardNet, policy: DecisionPolicy):
        super().__init__()
        self.net = net
        self.policy = policy

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        p_pit, route = self.policy(logits)
        return logits, p_pit, route


def is_bundle(folder: str | Path) -> bool:
    return (Path(folder) / BUNDLE_JSON).is_file()


def read_bundle_json(bundle: str | Path) -> dict:
    path = Path(bundle) / BUNDLE_JSON
    meta = read_json(path) if path.is_file() else None
    if meta is None:
        raise PitguardError(f"{bundle}: no bundle.json; give a folder written by pitguard export")
    if meta.get("schema_version") not in READABLE_BUNDLE_SCHEMAS:
        readable = ", ".join(str(v) for v in READABLE_BUNDLE_SCHEMAS)
        raise PitguardError(
            f"{path}: bundle schema {meta.get('schema_version')}, this pitguard reads {readable}; "
            "use the pitguard version that wrote it"
        )
    missing = [k for k in REQUIRED_KEYS if not meta.get(k)]
    if missing:
        raise PitguardError(
            f"{path}: lacks {', '.join(missing)}; a bundle.json is written by pitguard export, "
            "export the bundle again"
        )
    return meta


def write_bundle_json(folder: str | Path, meta: dict) -> None:
    """Written atomically, with the schema version, the outputs' description and the sha256 of
    every file it lists filled in."""
    folder = Path(folder)
    digests = {name: file_sha256(folder / name) for name in (meta.get("files") or {}).values()}
    write_json(
        folder / BUNDLE_JSON,
        {"schema_version": BUNDLE_SCHEMA, "outputs": OUTPUTS, **meta, "sha256": digests},
    )


def open_bundle(bundle: str | Path) -> dict:
    """``bundle.json`` read and proved: its files inside the bundle and unchanged since export,
    its classes, policy and input size the ones the weights and graphs hold."""
    meta = read_bundle_json(bundle)
    folder = Path(bundle)
    where = folder / BUNDLE_JSON
    files = meta.get("files") or {}
    digests = meta.get("sha256") or {}
    for key, name in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise PitguardError(
                f"{where}: files.{key} is {name!r}, not a file of this bundle; a bundle names "
                "only files inside its own folder (export it again)"
            )
        path = folder / name
        if not path.is_file():
            raise PitguardError(
                f"{path}: listed in {BUNDLE_JSON} ({key}) but missing; export again"
            )
        if meta.get("schema_version", 0) >= HASHED_SCHEMA:
            if name not in digests:
                raise PitguardError(f"{where}: no sha256 for {name}; export the bundle again")
            if file_sha256(path) != digests[name]:
                raise PitguardError(
                    f"{path}: its sha256 is not the one {BUNDLE_JSON} records: the file was "
                    "changed or replaced after export; restore it or export the bundle again"
                )
    _check_against_weights(folder, meta)
    return meta


def _check_against_weights(folder: Path, meta: dict) -> None:
    """Refuse a bundle.json that misstates what the weights and graphs compute."""
    import numpy as np

    where = folder / BUNDLE_JSON
    classes, policy = list(meta.get("classes") or []), meta.get("policy") or {}
    pit_index = policy.get("pit_index")
    if "pit" not in classes or classes.index("pit") != pit_index:
        raise PitguardError(
            f"{where}: classes {classes} put pit at index "
            f"{classes.index('pit') if 'pit' in classes else 'none'}, but the graph's pit output "
            f"is index {pit_index}; restore the classes as exported"
        )
    if len(classes) != (meta.get("model_kwargs") or {}).get("num_classes", len(classes)):
        raise PitguardError(
            f"{where}: {len(classes)} classes for a {meta['model_kwargs']['num_classes']}-class model"
        )
    held: dict[str, dict[str, float]] = {}
    weights = (meta.get("files") or {}).get("weights")
    if weights:
        from safetensors import safe_open

        with safe_open(str(folder / weights), "pt") as fh:
            names = set(fh.keys())
            held[weights] = {
                k: float(fh.get_tensor(f"policy.{k}"))
                for k in POLICY_KEYS
                if f"policy.{k}" in names
            }
    for key, name in (meta.get("files") or {}).items():
        if key == "weights" or not name.endswith(".onnx"):
            continue
        import onnx
        from onnx import numpy_helper

        try:
            graph = onnx.load(str(folder / name), load_external_data=False).graph
        except Exception as err:  # protobuf's decode errors have no common base
            raise PitguardError(
                f"{folder / name}: not a readable ONNX graph ({type(err).__name__}); "
                "export the bundle again"
            ) from err
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        held[name] = {k: float(inits[f"policy.{k}"]) for k in POLICY_KEYS if f"policy.{k}" in inits}
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        size = int((meta.get("input") or {}).get("size", 0))
        if dims[2:] and dims[2:] != [size, size]:
            raise PitguardError(
                f"{where}: input size {size} px, but {name} takes {dims[2]}x{dims[3]} crops; "
                "restore the input contract as exported"
            )
    for name, values in held.items():
        for k, value in values.items():
            stated = policy.get(k)
            if stated is None or np.float32(stated) != np.float32(value):
                raise PitguardError(
                    f"{where}: policy {k} is {stated}, but {name} computes with {value:.9g}; "
                    "thresholds live in the graph, so edit nothing: calibrate and export again"
                )


def build_deploy_module(meta: dict) -> DeployModule:
    from pitguard.models import InputContract, build_model  # the eager backend only

    contract = InputContract.from_dict(meta["input"])
    kwargs = meta["model_kwargs"]
    net = build_model(
        meta["model_name"], kwargs["num_classes"], contract, kwargs.get("drop_rate", 0.0)
    )
    policy = DecisionPolicy.from_dict(meta["policy"])
    return DeployModule(net, policy).eval()


def load_deploy_module(bundle: str | Path, meta: dict | None = None) -> tuple[DeployModule, dict]:
    """The bundle's PyTorch module; ``meta`` is its bundle.json already opened (and proved)."""
    from safetensors.torch import load_file

    meta = meta if meta is not None else open_bundle(bundle)
    module = build_deploy_module(meta)
    state = load_file(str(Path(bundle) / WEIGHTS_FILE))
    own = module.state_dict()
    for key in state:
        # Folding the normalization gave the first convolution a bias it was built without.
        if key not in own and key.endswith(".bias"):
            conv = module.get_submodule(key.rsplit(".", 1)[0])
            if isinstance(conv, nn.Conv2d) and conv.bias is None:
                conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
    module.load_state_dict(state)
    return module.eval(), meta


def save_weights(module: DeployModule, folder: Path) -> str:
    """The deploy module's weights as safetensors in ``folder``; returns the file name."""
    from safetensors.torch import save_file

    name = WEIGHTS_FILE
    # clone: safetensors refuses tensors that share storage
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / name))
    return name


@torch.no_grad()
def sanitize_denormals(module: nn.Module) -> int:
    """Set denormal-range weights and buffers to zero; returns how many values changed."""
    changed = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            tiny = (tensor.abs() < DENORMAL_LIMIT) & (tensor != 0)
            changed += int(tiny.sum())
            tensor[tiny] = 0.0
    return changed
