"""The GPU path, where a CUDA device is present: training in bf16 with the crops on the device,
data-parallel training over GPUs with nccl, CUDA-event timing in bench, and the FP16 ONNX graph
on ONNX Runtime's CUDA provider. Every test skips on a machine without CUDA."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from pitguard.config import load_config
from pitguard.core.files import read_json
from pitguard.train.loop import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SETS = ["model.name=pitguard_small", "train.epochs=3", "train.max_minutes=0", "train.device=cuda"]


def test_training_on_cuda_runs_bf16_with_the_crops_on_the_device(synth_dir, tmp_path):
    cfg = load_config("small-fast", sets=SETS, extra={"data.path": str(synth_dir)})
    summary = train(cfg, tmp_path / "r")
    assert summary["device"].startswith("cuda") and summary["precision"] == "bf16 autocast"
    assert summary["epochs_run"] == 3
    history = read_json(tmp_path / "r" / "train_summary.json")
    assert history is not None and history["world_size"] == 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_train_data_parallel_with_nccl(synth_dir, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    sets = [arg for s in SETS for arg in ("--set", s)]
    job = ["--nproc-per-node", "2", "-m", "pitguard", "train", "--recipe", "small-fast"]
    data = ["--data", str(synth_dir), "--out", str(tmp_path / "r")]
    done = subprocess.run(
        [*launcher, *job, *data, *sets],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    summary = read_json(tmp_path / "r" / "train_summary.json")
    assert summary is not None and summary["world_size"] == 2
    assert summary["device"] == "cuda:0"


def test_bench_times_cuda_with_events_and_autocast_variants():
    from pitguard.deploy.bench import bench

    result = bench(
        ["pitguard_tiny"],
        batch_sizes=(1, 32),
        backends=("eager",),
        device="cuda",
        warmup=2,
        min_runs=5,
        min_seconds=0,
    )
    backends = {r["backend"] for r in result["results"]}
    assert {"eager", "eager-fp16", "eager-bf16"} <= backends
    assert all(r["p50_ms"] > 0 for r in result["results"])
    assert "cuda" in str(result["hardware"]).lower()


def test_the_fp16_graph_on_onnx_runtimes_cuda_provider_routes_as_the_fp32_graph(
    calibrated_run, tmp_path
):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
    from pitguard.deploy.export import export_run
    from pitguard.deploy.graphs import run_onnx
    from pitguard.runtime.bundle import open_bundle

    export_run(calibrated_run, tmp_path / "b", onnx=True, fp16=True)
    files = open_bundle(tmp_path / "b")["files"]
    crops = torch.from_numpy(
        np.random.default_rng(0).integers(0, 255, (64, 3, 128, 128), dtype=np.uint8)
    )
    routes = {}
    for key, provider in (("onnx", "CPUExecutionProvider"), ("onnx_fp16", "CUDAExecutionProvider")):
        session = ort.InferenceSession(str(tmp_path / "b" / files[key]), providers=[provider])
        routes[key] = run_onnx(session, crops)[2]
    assert np.mean(routes["onnx"] == routes["onnx_fp16"]) >= 0.97
