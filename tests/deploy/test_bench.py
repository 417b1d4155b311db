"""Tests for pitguard.deploy.bench: result structure, baseline ratios, bundle targets, skips and bad input.

Tiny settings throughout; the tests check behaviour, never which backend is faster.
"""

import json
import shutil

import pytest

from pitguard.cli import main
from pitguard.core.errors import PitguardError
from pitguard.deploy.bench import bench, format_table
from pitguard.deploy.timing import parse_backends, parse_batch_sizes

FAST = {"warmup": 1, "min_runs": 3, "min_seconds": 0, "threads": 1}
RECORD_KEYS = {
    "target",
    "backend",
    "batch_size",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "ms_per_crop",
    "crops_per_s",
    "runs",
}


@pytest.fixture(scope="module")
def bundle_without_int8(bundle, tmp_path_factory):
    """The session bundle with its INT8 graph taken out."""
    return drop_int8(bundle, tmp_path_factory.mktemp("bench") / "fp32")


def drop_int8(bundle, dest):
    shutil.copytree(bundle, dest)
    meta = json.loads((dest / "bundle.json").read_text())
    (dest / meta["files"].pop("onnx_int8")).unlink()
    (dest / "bundle.json").write_text(json.dumps(meta))
    return dest


def check_record(r: dict) -> None:
    assert set(r) >= RECORD_KEYS
    assert r["runs"] >= FAST["min_runs"]
    assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    assert r["ms_per_crop"] == pytest.approx(r["p50_ms"] / r["batch_size"])
    assert r["crops_per_s"] == pytest.approx(r["batch_size"] / (r["mean_ms"] / 1000))


def test_result_structure_and_percentiles():
    result = bench(["pitguard_tiny"], batch_sizes=(1, 3), backends=("eager", "onnx"), **FAST)
    assert set(result) >= {"hardware", "threads", "results", "skipped", "baseline", "ratios"}
    assert result["threads"] == 1 and result["baseline"] is None and result["ratios"] == []
    assert result["skipped"] == []
    hw = result["hardware"]
    assert hw["cpu"] and hw["cores"] >= 1 and hw["torch"] and hw["onnxruntime"] and hw["platform"]
    got = [(r["target"], r["backend"], r["batch_size"]) for r in result["results"]]
    assert got == [
        ("pitguard_tiny", "eager", 1),
        ("pitguard_tiny", "eager", 3),
        ("pitguard_tiny", "onnx", 1),
        ("pitguard_tiny", "onnx", 3),
    ]
    for r in result["results"]:
        check_record(r)
    json.dumps(result)  # plain JSON values only


def test_baseline_is_timed_as_eager_and_ratios_follow_from_records():
    result = bench(
        ["pitguard_tiny"],
        batch_sizes=(1, 2),
        backends=("onnx",),
        baseline="pitguard_small",
        **FAST,
    )
    assert result["baseline"] == "pitguard_small"
    base = {
        r["batch_size"]: r
        for r in result["results"]
        if r["target"] == "pitguard_small" and r["backend"] == "eager"
    }
    assert sorted(base) == [1, 2]
    assert {r["backend"] for r in result["results"] if r["target"] == "pitguard_small"} == {"eager"}
    others = [r for r in result["results"] if r["target"] != "pitguard_small"]
    assert len(result["ratios"]) == len(others) == 2
    for ratio, r in zip(result["ratios"], others, strict=True):
        assert (ratio["target"], ratio["backend"], ratio["batch_size"]) == (
            r["target"],
            r["backend"],
            r["batch_size"],
        )
        expected = base[r["batch_size"]]["ms_per_crop"] / r["ms_per_crop"]
        assert ratio["speedup_per_crop_vs_baseline"] == pytest.approx(expected)
    table = format_table(result)
    assert "x baseline" in table and "base" in table and "pitguard_tiny" in table


def test_baseline_among_targets_is_timed_once_and_gains_eager():
    result = bench(
        ["pitguard_tiny"], batch_sizes=(2,), backends=("onnx",), baseline="pitguard_tiny", **FAST
    )
    keys = [(r["target"], r["backend"]) for r in result["results"]]
    assert keys == [("pitguard_tiny", "eager"), ("pitguard_tiny", "onnx")]
    (ratio,) = result["ratios"]
    eager, onnx = result["results"]
    assert ratio["backend"] == "onnx"
    assert ratio["speedup_per_crop_vs_baseline"] == pytest.approx(
        eager["ms_per_crop"] / onnx["ms_per_crop"]
    )


def test_bundle_target_with_int8(bundle):
    target = str(bundle)
    result = bench([target], batch_sizes=(2,), backends=("eager", "onnx", "onnx-int8"), **FAST)
    assert result["skipped"] == []
    assert [(r["target"], r["backend"]) for r in result["results"]] == [
        (target, "eager"),
        (target, "onnx"),
        (target, "onnx-int8"),
    ]
    for r in result["results"]:
        check_record(r)


def test_bundle_without_int8_records_a_skip(bundle_without_int8):
    target = str(bundle_without_int8)
    result = bench([target], batch_sizes=(1,), backends=("eager", "onnx-int8"), **FAST)
    assert [r["backend"] for r in result["results"]] == ["eager"]
    (skip,) = result["skipped"]
    assert skip["target"] == target and skip["backend"] == "onnx-int8"
    assert "onnx-int8" in skip["reason"] and "--int8" in skip["reason"]
    assert "skipped" in format_table(result)


def test_timm_name_gets_an_int8_graph():
    result = bench(["pitguard_tiny"], batch_sizes=(1,), backends=("onnx-int8",), **FAST)
    assert result["skipped"] == []
    (r,) = result["results"]
    assert r["backend"] == "onnx-int8"
    check_record(r)


@pytest.mark.parametrize(
    ("call", "needles"),
    [
        (lambda tmp: bench(["resnet5x_not_a_model"], **FAST), ["resnet5x_not_a_model", "timm"]),
        (lambda tmp: bench([str(tmp)], **FAST), ["{tmp}", "bundle.json", "pitguard export"]),
        (lambda tmp: bench([str(tmp / "missing")], **FAST), ["missing", "no such folder"]),
        (lambda tmp: parse_batch_sizes("1,x"), ["'1,x'", "'x'", "1,8,32"]),
        (lambda tmp: parse_batch_sizes("1,0"), ["'0'", "positive"]),
        (lambda tmp: parse_backends("eager,tensorrt"), ["'tensorrt'", "eager, onnx"]),
        (lambda tmp: bench(["pitguard_tiny"], backends=("tvm",), **FAST), ["'tvm'"]),
        (lambda tmp: bench(["pitguard_tiny"], batch_sizes=(0,), **FAST), ["0", "1,8,32"]),
        (lambda tmp: bench([], **FAST), ["no target"]),
        (lambda tmp: bench(["pitguard_tiny"], warmup=1, min_runs=3, threads=0), ["--threads"]),
        (lambda tmp: bench(["pitguard_tiny"], device="tpu", **FAST), ["'tpu'", "cpu or cuda"]),
    ],
)
def test_bad_input_names_the_value_and_the_fix(tmp_path, call, needles):
    with pytest.raises(PitguardError) as err:
        call(tmp_path)
    for needle in needles:
        assert needle.format(tmp=tmp_path) in str(err.value)


def test_bad_target_fails_before_any_timing(tmp_path):
    # A typo in the last target must not cost the minutes spent timing the first ones.
    with pytest.raises(PitguardError, match="no_such_model_xyz"):
        bench(["pitguard_tiny", "no_such_model_xyz"], min_runs=10**9, min_seconds=10**9)


def test_cli_writes_json_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "pitguard_tiny",
            "--batch-sizes",
            "1,2",
            "--backends",
            "eager",
            "--threads",
            "1",
            "--min-seconds",
            "0",
            "--min-runs",
            "3",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert [r["batch_size"] for r in result["results"]] == [1, 2]
    assert result["threads"] == 1
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and "crops/s" in printed and str(out) in printed


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["no_such_model_xyz"], "no_such_model_xyz"),
        (["pitguard_tiny", "--batch-sizes", "1,x"], "'x'"),
        (["pitguard_tiny", "--backends", "eager,trt"], "'trt'"),
    ],
)
def test_cli_bad_input_exits_2_with_the_message(args, needle, capsys):
    assert main(["bench", *args, "--min-seconds", "0", "--min-runs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err
