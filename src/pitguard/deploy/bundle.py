"""The bundle's PyTorch side: the deploy module (network + calibrated policy, what ships), its
weights file, and the eager module rebuilt from a bundle. ``bundle.json`` itself is owned by
:mod:`pitguard.runtime.bundle`, which needs no torch.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pitguard.core.errors import PitguardError
from pitguard.core.files import fsync_tree, replace_folder, temp_name
from pitguard.runtime.backends import WEIGHTS_FILE
from pitguard.runtime.bundle import SECOND_LOOK_WEIGHTS, is_bundle, open_bundle
from pitguard.runtime.policy import DecisionPolicy

if TYPE_CHECKING:
    from pitguard.models.nets import PitguardNet

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


class SecondLookModule(DeployModule):
    """A cascade's second stage: a network's (the first stage's, or another run's) mean logits
    over test-time views of a crop, then the second stage's own calibrated policy (see
    :mod:`pitguard.decision.cascade`)."""

    def __init__(self, net: PitguardNet, policy: DecisionPolicy, views: str):
        super().__init__(net, policy)
        self.views = views

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from pitguard.models.views import dihedral_views

        logits = torch.stack([self.net(v) for v in dihedral_views(x, self.views)]).mean(0)
        p_pit, route = self.policy(logits)
        return logits, p_pit, route


def second_look_module(
    module: DeployModule, look: dict, net: PitguardNet | None = None
) -> SecondLookModule:
    """The second stage ``look`` (bundle.json's or policy.json's ``second_look``) describes, on
    ``net`` (another run's network), else on ``module``'s."""
    net = net if net is not None else module.net
    return SecondLookModule(net, DecisionPolicy.from_dict(look["policy"]), look["views"]).eval()


def load_second_stage(bundle: str | Path, meta: dict, module: DeployModule) -> SecondLookModule:
    """A cascade bundle's eager second stage: on the first stage's network, or on the network
    whose weights the bundle ships for it (``bundle.json``'s ``second_look.model``)."""
    from safetensors.torch import load_file

    look = meta["second_look"]
    model = look.get("model")
    if model is None:
        return second_look_module(module, look)
    net = build_net(model)
    net.load_state_dict(load_file(str(Path(bundle) / meta["files"][SECOND_LOOK_WEIGHTS])))
    return second_look_module(module, look, net.eval())


def build_net(meta: dict) -> PitguardNet:
    """The network ``meta`` describes (``model_name``, ``model_kwargs``, ``input``), untrained."""
    from pitguard.models.nets import InputContract, build_model  # the eager backend only

    contract = InputContract.from_dict(meta["input"])
    kwargs = meta["model_kwargs"]
    return build_model(
        meta["model_name"], kwargs["num_classes"], contract, kwargs.get("drop_rate", 0.0)
    )


def build_deploy_module(meta: dict) -> DeployModule:
    return DeployModule(build_net(meta), DecisionPolicy.from_dict(meta["policy"])).eval()


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


def save_weights(
    module: nn.Module, folder: Path, metadata: dict[str, str], name: str = WEIGHTS_FILE
) -> str:
    """A module's weights (the deploy module's, by default as ``model.safetensors``) as
    safetensors in ``folder``, with ``metadata``; returns the file name."""
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    try:
        save_file(state, str(folder / name), metadata=metadata)
    except Exception as err:  # safetensors reports a full disk as its own error class
        if isinstance(err, OSError):
            raise
        raise OSError(
            errno.EIO, f"could not be written ({err}); is the disk full?", str(folder / name)
        ) from err
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


def prepare_bundle_out(out: Path, replace: bool) -> None:
    """Refuse, before any work, an --out that is a file, or a folder that is not a bundle
    (or is one, without ``replace``)."""
    if out.exists() and not out.is_dir():
        raise PitguardError(f"--out {out}: is a file; give a folder for the bundle")
    if out.exists() and any(out.iterdir()):
        if not replace:
            raise PitguardError(
                f"{out}: exists and is not empty; choose a new --out, or --force to replace "
                "the bundle there"
            )
        if not is_bundle(out):
            raise PitguardError(
                f"{out}: holds files but no bundle.json; --force replaces only a bundle, "
                "so choose a new --out"
            )


def write_bundle_folder(out: Path, write: Callable[[Path], None]) -> None:
    """The bundle ``write`` makes in a new folder, put at ``out`` once complete and synced;
    the bundle ``--force`` replaces is exchanged with it in one step (``replace_folder``), so
    a signal at any moment leaves the old bundle or the new one at ``out``, never neither."""
    tmp = temp_name(out)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process with the same pid
    old = None
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        fsync_tree(tmp)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # an empty folder given as --out
        old = replace_folder(tmp, out)
    except OSError as err:
        if err.filename is None:  # a full disk reports no path: name the bundle being written
            raise OSError(err.errno, err.strerror or str(err), str(out)) from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new one on failure, the old one on success
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
