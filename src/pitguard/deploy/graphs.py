"""ONNX graphs of a deploy module: export, INT8 static quantization, FP16 conversion, and runs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from pitguard.core.errors import PitguardError
from pitguard.deploy.bundle import DeployModule
from pitguard.deploy.static_graph import for_fixed_size
from pitguard.runtime.bundle import (
    INPUT_NAME,
    OUTPUT_NAMES,
    POLICY_KEYS,
    guard_stamp,
    policy_stamp,
)
from pitguard.runtime.contract import contract_stamp

OPSET = 17


def run_onnx(
    session, crops_u8: torch.Tensor, batch: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    outs: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, len(crops_u8), batch):
        x = (crops_u8[start : start + batch].numpy().astype(np.float32) / np.float32(255)).astype(
            dtype
        )
        for acc, value in zip(outs, session.run(None, {INPUT_NAME: x}), strict=True):
            acc.append(value.astype(np.float32) if value.dtype == np.float16 else value)
    logits, p_pit, route = (np.concatenate(o) for o in outs)
    return logits, p_pit, route


@torch.no_grad()
def run_torch(module: DeployModule, crops_u8: torch.Tensor, batch: int = 128):
    outs: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, len(crops_u8), batch):
        x = crops_u8[start : start + batch].float() / 255
        for acc, value in zip(outs, module(x), strict=True):
            acc.append(value.numpy())
    return tuple(np.concatenate(o) for o in outs)


def export_onnx(module: DeployModule, path: Path, size: int) -> None:
    """The module as an ONNX graph for crops of ``size``, rewritten for that size first."""
    dummy = torch.rand(2, 3, size, size)
    module = for_fixed_size(module)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # the TorchScript exporter is chosen on purpose
        # fixed pads are written with a reversing slice the exporter cannot fold; ONNX Runtime
        # folds them when it loads the graph
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        _export(module, dummy, path)


def _export(module: DeployModule, dummy: torch.Tensor, path: Path) -> None:
    import onnx

    torch.onnx.export(
        module,
        (dummy,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter handles these CNNs and the policy ops reliably
        # Otherwise the exporter merges initializers of equal value: t_low == t_high would
        # become one tensor that no threshold of an INT8 or FP16 graph could be written into.
        keep_initializers_as_inputs=True,
    )
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    crops_only = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(crops_only)  # the initializers stay constants, not inputs
    onnx.save(model, str(path))


class _CalibReader:
    """Feeds calibration crops to onnxruntime's static quantization."""

    def __init__(self, crops_u8: torch.Tensor, batch: int = 32):
        self.batches = [
            {INPUT_NAME: crops_u8[i : i + batch].numpy().astype(np.float32) / np.float32(255)}
            for i in range(0, len(crops_u8), batch)
        ]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return self.batches[self.pos - 1]

    def rewind(self):
        self.pos = 0


def quantize_int8(fp32: Path, out: Path, crops_u8: torch.Tensor) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = out.with_name("prep.onnx")
    quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
    # The first convolution stays in float: quantized, it cost cpu-fast 3.5 points of calib
    # accuracy (87.89% against 91.43%, n=735); kept in float, 0.4 (decision log, INT8 entry).
    stem = next(n.name for n in onnx.load(str(prep)).graph.node if n.op_type == "Conv")
    reader = _CalibReader(crops_u8)
    CalibrationDataReader.register(_CalibReader)
    quantize_static(
        str(prep),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "Gemm", "MatMul"],  # the decision stays in float
        nodes_to_exclude=[stem],
    )
    prep.unlink(missing_ok=True)


def convert_fp16(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32))
    # The whole graph in fp16, inputs and outputs too: the converter's mixed-precision and
    # kept-io modes produce invalid graphs here. The gate measures what the thresholds' fp16
    # rounding does to the routes.
    half = convert_float_to_float16(model, keep_io_types=False)
    onnx.save(half, str(out))


def _at_least(value: float, dtype: np.dtype) -> np.ndarray:
    """The smallest ``dtype`` number >= ``value``: a threshold between two scores that a graph
    of that precision can hold, keeping every score on the side it was certified on."""
    held = np.asarray(value, dtype=np.float64).astype(dtype)
    if float(held) < value:
        held = np.nextafter(held, np.asarray(np.inf, dtype=dtype))
    return held


def _policy_uses(graph) -> dict[str, tuple]:
    """Where the graph reads each policy value: (node, input index) per key.

    Found by the policy's own operations rather than by name, since graph optimizers merge
    initializers of equal value (t_low == t_high) under one name: the thresholds are the second
    inputs of ``Less(p_pit, t_low)`` and ``GreaterOrEqual(p_pit, t_high)``, the temperature the
    divisor of the logits before the softmax (absent where an optimizer removed a division by 1).
    """
    uses: dict[str, tuple] = {}
    softmax_inputs = {n.input[0] for n in graph.node if n.op_type == "Softmax"}
    for node in graph.node:
        if node.op_type == "Less" and node.input[0] == OUTPUT_NAMES[1]:
            uses["t_low"] = (node, 1)
        elif node.op_type == "GreaterOrEqual" and node.input[0] == OUTPUT_NAMES[1]:
            uses["t_high"] = (node, 1)
        elif node.op_type == "Div" and node.output[0] in softmax_inputs:
            uses["temperature"] = (node, 1)
    return uses


def held_policy(path: Path) -> dict[str, float]:
    """The policy values a graph computes with, read where its operations read them."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    held = {"temperature": 1.0}  # no division left: an optimizer removed a division by 1
    for key, (node, index) in _policy_uses(graph).items():
        if node.input[index] not in inits:
            raise PitguardError(f"{path}: the graph's policy.{key} is not a constant; export again")
        held[key] = float(numpy_helper.to_array(inits[node.input[index]]))
    missing = [k for k in POLICY_KEYS if k not in held]
    if missing:
        raise PitguardError(f"{path}: the graph holds no policy.{missing[0]}; export it again")
    return held


def set_thresholds(path: Path, t_low: float, t_high: float) -> None:
    """Write thresholds into the graph's policy, in its own precision, rounded up, in place;
    each into a constant of its own."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    uses = _policy_uses(model.graph)
    for key, value in (("t_low", t_low), ("t_high", t_high)):
        if key not in uses:
            raise PitguardError(f"{path}: the graph holds no policy.{key}; export it again")
        node, index = uses[key]
        array = numpy_helper.to_array(inits[node.input[index]])
        name = f"pitguard.policy.{key}"  # a name in the bundle format, as written since schema 4
        held = _at_least(value, array.dtype).reshape(array.shape)
        model.graph.initializer.append(numpy_helper.from_array(held, name))
        node.input[index] = name
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(path))


def stamp_graph(path: Path, guard: dict | None, meta: dict) -> dict[str, float]:
    """Record in the graph's metadata the input guard it ships with, the policy values it
    computes with and the bundle's contract (read where only ONNX Runtime is installed);
    returns that policy."""
    import onnx

    held = held_policy(path)
    model = onnx.load(str(path))
    stamps = {**guard_stamp(guard), **policy_stamp(held), **contract_stamp(meta)}
    kept = [p for p in model.metadata_props if p.key not in stamps]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, text in stamps.items():
        model.metadata_props.add(key=key, value=text)
    onnx.save(model, str(path))
    return held
