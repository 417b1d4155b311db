"""ONNX graphs of a deploy module: export, INT8 static quantization, FP16 conversion, and runs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from pitguard.deploy.bundle import INPUT_NAME, OUTPUT_NAMES, DeployModule
from pitguard.deploy.static_graph import for_fixed_size

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
    torch.onnx.export(
        module,
        (dummy,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter handles these CNNs and the policy ops reliably
    )


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
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = out.with_name("prep.onnx")
    quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
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
