import json
from pathlib import Path

from pitguard.report.collect import pick_latency, run_record
from tests.conftest import copy_run


def _metrics(run: Path) -> dict:
    (path,) = run.glob("eval/*/metrics.json")
    return json.loads(path.read_text())


def test_numbers_equal_the_runs_own_files(runs, report):
    _, out = report
    records = {r["run"]: r for r in json.loads((out / "experiments.json").read_text())["runs"]}
    assert set(records) == {"a", "b"}
    for name in ("a", "b"):
        rec, metrics = records[name], _metrics(runs / name)
        for key in (
            "accuracy",
            "accuracy_ci",
            "macro_f1",
            "macro_f1_ci",
            "pit_recall",
            "pit_recall_ci",
            "data",
            "n",
        ):
            assert rec["test"][key] == metrics[key], (name, key)
        assert rec["test"]["part"] == "test" and metrics["data"].endswith("[test]")
        assert rec["architecture"] == "pitguard_tiny" and rec["recipe"] == "small-fast"
        assert rec["size_bytes"] == (runs / name / "model.safetensors").stat().st_size
        assert rec["parameters"] > 1000
        assert rec["figures"]["confusion_matrix"]["data"] == metrics["data"]

    policy = json.loads((runs / "a" / "policy.json").read_text())
    measured = _metrics(runs / "a")["policy"]
    a = records["a"]
    assert a["calibration"]["guarantee"]["max_pit_miss"] == policy["guarantee"]["max_pit_miss"]
    assert a["calibration"]["guarantee"]["confidence"] == policy["guarantee"]["confidence"]
    for key in ("pit_miss_rate", "pit_miss_ci", "pit_miss_upper", "maybe_rate", "maybe_ci"):
        assert a["policy_test"][key] == measured[key], key

    bench_result = json.loads((runs / "a" / "bench.json").read_text())
    (row,) = [
        r for r in bench_result["results"] if r["backend"] == "eager" and r["batch_size"] == 32
    ]
    assert a["latency_cpu"]["ms_per_crop"] == row["ms_per_crop"]
    assert a["latency_cpu"]["backend"] == "eager" and "no onnx" in a["latency_cpu"]["choice"]

    b = records["b"]
    assert b["calibration"] is None and b["policy_test"] is None and b["latency_cpu"] is None
    assert any("pitguard calibrate" in n for n in b["notes"])
    assert any("pitguard bench" in n for n in b["notes"])


def test_baseline_comparison_is_paired(report):
    result, _ = report
    records = {r["run"]: r for r in result["runs"]}
    assert result["baseline"] == "a"
    assert records["a"]["vs_baseline"]["verdict"] == "baseline"
    vs = records["b"]["vs_baseline"]
    assert vs["paired"] is True and vs["baseline"] == "a"
    assert vs["verdict"] in ("within noise", "difference beyond noise")
    assert 0.0 <= vs["mcnemar_p"] <= 1.0 and vs["n"] == records["b"]["test"]["n"]


def test_part_comes_from_the_structured_keys_or_an_older_files_data(runs, tmp_path):
    # A metrics file written before "source" and "part" were recorded still counts as the run's
    # own test part: the run folder's owner reads its older form.
    run = copy_run(runs / "b", tmp_path / "b")
    (path,) = run.glob("eval/*/metrics.json")
    metrics = json.loads(path.read_text())
    assert metrics["part"] == "test" and metrics["source"]
    old = {k: v for k, v in metrics.items() if k not in ("source", "part")}
    path.write_text(json.dumps(old))
    rec = run_record(run, "b")
    assert rec["test"]["part"] == "test" and rec["test"]["data"] == metrics["data"]
    assert not any("not the run's own test part" in n for n in rec["notes"])
    path.write_text(json.dumps({**old, "data": "elsewhere/crops [all]"}))
    rec = run_record(run, "b")
    assert rec["test"]["part"] == "all"
    assert any("not the run's own test part" in n for n in rec["notes"])


def test_latency_prefers_onnx_at_batch_32():
    def rec(backend, batch, ms):
        return {"target": "bundles/x", "backend": backend, "batch_size": batch, "ms_per_crop": ms}

    results = [rec("eager", 32, 1.0), rec("onnx", 1, 0.5), rec("onnx", 32, 0.25)]
    pick = pick_latency({"results": results, "threads": 4, "hardware": {"cpu": "x"}})
    assert (pick["backend"], pick["batch_size"], pick["ms_per_crop"]) == ("onnx", 32, 0.25)
    pick = pick_latency({"results": results[:2], "hardware": {}})
    assert (pick["backend"], pick["batch_size"]) == ("eager", 32)
    cuda_only = [{**rec("eager", 32, 0.1), "device": "cuda"}]
    assert pick_latency({"results": cuda_only}) is None


def test_results_measured_under_another_policy_or_other_weights_are_flagged(
    calibrated_run, tmp_path
):
    from safetensors.torch import load_file, save_file

    from pitguard.core.files import read_json
    from pitguard.decision.calibrate import calibrate_run
    from pitguard.evaluate.run import evaluate_run
    from pitguard.models.runfolder import RunPaths, load_policy
    from pitguard.report.collect import run_record
    from tests.conftest import copy_run

    run = copy_run(calibrated_run, tmp_path / "run")
    evaluate_run(
        run, n_boot=20, policy=load_policy(run), calibration=read_json(RunPaths(run).policy)
    )
    assert not [n for n in run_record(run, "run")["notes"] if "earlier policy" in n]
    calibrate_run(run, max_pit_miss=0.1, confidence=0.9)  # another bound: another t_low
    assert [n for n in run_record(run, "run")["notes"] if "earlier policy" in n]
    weights = RunPaths(run).weights
    state = load_file(str(weights))
    first = next(iter(state))
    state[first] = state[first] + 1  # other weights (trained again, say)
    save_file(state, str(weights))
    assert [n for n in run_record(run, "run")["notes"] if "measured other weights" in n]


def test_export_refuses_a_policy_calibrated_for_other_weights(calibrated_run, tmp_path):
    import pytest

    from pitguard.core.errors import PitguardError
    from pitguard.core.files import read_json, write_json
    from pitguard.deploy.export import export_run
    from pitguard.models.runfolder import RunPaths
    from tests.conftest import copy_run

    run = copy_run(calibrated_run, tmp_path / "run")
    record = read_json(RunPaths(run).policy)
    write_json(RunPaths(run).policy, {**record, "model_sha256": "0" * 64})
    with pytest.raises(PitguardError, match="calibrated for other weights"):
        export_run(run, tmp_path / "bundle")


def test_a_bench_file_reads_and_writes_back_and_older_ones_read(runs):
    from pitguard.deploy.bench_result import BenchResult

    written = json.loads((runs / "a" / "bench.json").read_text())
    bench = BenchResult.from_dict(written)
    assert json.dumps(bench.to_dict()) == json.dumps(written)  # same keys, values and order
    assert all(r.on_cpu and r.ms_per_crop > 0 for r in bench.results)
    # an older file: records without device or p50, no baseline nor ratios
    old = {k: v for k, v in written.items() if k not in ("baseline", "ratios")}
    old["results"] = [
        {k: v for k, v in r.items() if k not in ("device", "p50_ms")} for r in written["results"]
    ]
    older = BenchResult.from_dict(old)
    assert older.baseline is None and older.ratios == []
    assert [r.to_dict() for r in older.results] == old["results"]
    pick = pick_latency(old, "a")
    assert (pick["backend"], pick["batch_size"], pick["p50_ms"]) == ("eager", 32, None)
    assert pick["ms_per_crop"] == pick_latency(written, "a")["ms_per_crop"]


def test_the_plain_summary_counts_at_the_given_pit_share(runs):
    default = run_record(runs / "a", "a")["test"]["plain_summary"]
    metrics = _metrics(runs / "a")
    share = metrics["policy"]["n_pits"] / metrics["policy"]["n"]
    assert f"(pit share {100 * share:.1f}%, the test part's)" in default
    given = run_record(runs / "a", "a", pit_share=0.05)["test"]["plain_summary"]
    assert "(pit share 5.0%, given)" in given and given != default
    assert run_record(runs / "b", "b", pit_share=0.05)["test"]["plain_summary"] is None
