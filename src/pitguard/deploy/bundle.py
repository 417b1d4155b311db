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
from pitguard.files import read_json, write_json
from pitguard.policy import DecisionPolicy, Route

if TYPE_CHECKING:
    from pitguard.models import PitguardNet

BUNDLE_SCHEMA = 2  # 2: the input contract may hold a centre crop
READABLE_BUNDLE_SCHEMAS = (1, 2)
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
    return meta


def write_bundle_json(folder: str | Path, meta: dict) -> None:
    """Written atomically, with the schema version and the outputs' description filled in."""
    write_json(
        Path(folder) / BUNDLE_JSON, {"schema_version": BUNDLE_SCHEMA, "outputs": OUTPUTS, **meta}
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


def load_deploy_module(bundle: str | Path) -> tuple[DeployModule, dict]:
    from safetensors.torch import load_file

    meta = read_bundle_json(bundle)
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
