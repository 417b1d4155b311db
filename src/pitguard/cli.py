"""The ``pitguard`` command: one thin verb per pipeline stage."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from pitguard import __version__
from pitguard.errors import PitguardError

Handler = Callable[[argparse.Namespace], int]


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _verb(sub, name: str, help_text: str, examples: list[str], handler: Handler):
    parser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def _write_json(obj: dict, path: str | None) -> None:
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(obj, indent=2) + "\n")
        print(f"wrote {out}")


def _decode_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", type=int, default=128, help="expected crop side in px (default 128)"
    )
    parser.add_argument(
        "--modes",
        choices=["skip", "convert"],
        default="skip",
        help="non-RGB files: skip and list them (default), or convert "
        "(L/I;16 gray replicated, alpha multiplied in, palette expanded)",
    )
    parser.add_argument(
        "--sizes",
        choices=["skip", "resize", "pad"],
        default="skip",
        help="crops of another size: skip and list them (default), resize, or centre-pad/crop",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file")
    parser.add_argument(
        "--classes",
        metavar="MAP",
        help="map folder or label names to classes, e.g. good=clean,bad=pit,unsure=maybe",
    )


def _decode_options(args):
    from pitguard.data.load import DecodeOptions

    return DecodeOptions(size=args.size, modes=args.modes, sizes=args.sizes, strict=args.strict)


def _index(args):
    from pitguard.data.layout import find_dataset, parse_class_mapping

    return find_dataset(args.data, parse_class_mapping(args.classes))


def cmd_audit(args) -> int:
    from pitguard.data.audit import audit, format_audit

    report = audit(_index(args), _decode_options(args))
    print(format_audit(report))
    _write_json(report, args.json)
    return 0


def cmd_split(args) -> int:
    from pitguard.data.split import parse_fractions, split_dataset

    result = split_dataset(
        _index(args), args.out, parse_fractions(args.fractions), args.seed, _decode_options(args)
    )
    print(f"{'split':<8}" + "".join(f"{c:>10}" for c in next(iter(result["counts"].values()))))
    for split, per in result["counts"].items():
        print(f"{split:<8}" + "".join(f"{v:>10}" for v in per.values()))
    print(f"duplicate groups kept whole: {result['groups_kept_whole']}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unusable file(s), e.g. {result['skipped'][0]}")
    print(f"wrote {result['manifest']}")
    return 0


def cmd_synth(args) -> int:
    from pitguard.data.synth import synthesize

    info = synthesize(
        args.out, count=args.count, seed=args.seed, size=args.size, difficulty=args.difficulty
    )
    print(
        f"wrote {info['count']} synthetic crops to {info['out']} "
        + ", ".join(f"{k} {v}" for k, v in info["classes"].items())
    )
    return 0


def cmd_train(args) -> int:
    from pitguard.config import load_config
    from pitguard.train import train

    if args.resume:
        if args.recipe or args.config or args.set or args.data:
            raise PitguardError(
                "--resume continues a run with its saved config; drop --recipe/--config/--set/--data"
            )
        summary = train(None, args.resume, resume=True)  # type: ignore[arg-type]
    else:
        if not args.out:
            raise PitguardError("--out RUN is required (the run folder to create)")
        extra = {"data.path": args.data} if args.data else None
        cfg = load_config(args.recipe, args.config, args.set, extra)
        summary = train(cfg, args.out, stop_after=args.stop_after)
    print(
        f"run {summary['run']}: {summary['epochs_run']} epochs, best epoch {summary['best_epoch']} "
        f"({summary['selected_on']} {summary['best_value']:.4f} on val), {summary['stop_reason']}, "
        f"{summary['train_seconds']:.0f} s on {summary['device']}"
    )
    return 0


def cmd_eval(args) -> int:
    from pitguard.calibrate import load_policy
    from pitguard.evaluate import evaluate_run, format_report

    policy = load_policy(args.run)
    result = evaluate_run(
        args.run, args.data, args.split, n_boot=args.n_boot, classes=args.classes, policy=policy
    )
    print(format_report(result))
    print(f"outputs in {result['outputs']}")
    _write_json(result, args.json)
    return 0


def cmd_calibrate(args) -> int:
    from pitguard.calibrate import calibrate_run

    rec = calibrate_run(
        args.run, args.data, args.split, args.max_pit_miss, args.confidence, args.max_false_reject
    )
    th, cal = rec["thresholds"], rec["calibration_data"]
    pol = rec["policy"]
    print(
        f"temperature {pol['temperature']:.4f}  ECE {rec['ece_before']:.4f} -> {rec['ece_after']:.4f}"
    )
    print(
        f"t_low {th['t_low']:.6f}  t_high {th['t_high']:.6f}  (p_pit < t_low: clean; >= t_high: pit; else maybe)"
    )
    print(
        f"on {cal['data']} (n={cal['n']}, {cal['n_pits']} pits): {th['calib_pit_misses']} pits routed clean, "
        f"pit-miss bound {100 * th['pit_miss_bound']:.3f}% at {100 * args.confidence:.0f}% confidence "
        f"(target {100 * args.max_pit_miss:g}%), maybe rate {100 * th['calib_maybe_rate']:.2f}%"
    )
    print("routes on calib: " + ", ".join(f"{k} {v}" for k, v in rec["calib_routes"].items()))
    print(f"wrote {args.run}/policy.json and {args.run}/calibration/")
    return 0


def cmd_thresholds(args) -> int:
    from pitguard.calibrate import sweep_run

    sweep = sweep_run(args.run, args.data, args.split, args.min_recall)
    print(f"{sweep['data']}  n={sweep['n']}  (pit when p_pit >= threshold)")
    print(
        f"{'thr':>6}{'acc':>8}{'prec':>8}{'recall':>8}{'f1':>8}{'spec':>8}{'tp':>6}{'fp':>6}{'tn':>6}{'fn':>6}"
    )

    def f(x):
        return f"{'n/a':>8}" if x is None else f"{x:>8.4f}"

    for r in sweep["rows"][:: max(1, args.every)]:
        print(
            f"{r['threshold']:>6.2f}{f(r['accuracy'])}{f(r['precision'])}{f(r['recall'])}{f(r['f1'])}"
            f"{f(r['specificity'])}{r['tp']:>6}{r['fp']:>6}{r['tn']:>6}{r['fn']:>6}"
        )
    best = sweep["best"]
    if best:
        print(
            f"best F1 with recall >= {args.min_recall}: threshold {best['threshold']:.2f}, F1 {best['f1']:.4f}, "
            f"recall {best['recall']:.4f}, precision {best['precision']:.4f}"
        )
    else:
        print(f"no threshold reaches recall {args.min_recall}")
    print(f"wrote {sweep['outputs']}/sweep.json and sweep.png")
    return 0


def cmd_compare(args) -> int:
    from pitguard.compare import compare_runs, format_comparison

    result = compare_runs(args.runs, args.data, args.split)
    print(format_comparison(result))
    _write_json(result, args.json)
    return 0


def cmd_twostage(args) -> int:
    from pitguard.config import load_config
    from pitguard.twostage import format_table, routing_table, run_twostage

    data = args.data
    if data is None and args.compare:
        data = str(
            Path(args.compare) / "split.csv"
        )  # the calibrated run's own split: same test part
    if data is None:
        raise PitguardError("--data DIR is required (or --compare RUN to reuse that run's split)")
    cfg = load_config(args.recipe, None, args.set, {"data.path": data})
    mining = run_twostage(cfg, args.out, args.stage2_epochs)
    print(
        f"mining: {mining['mined']} of {mining['of']} train/val crops relabelled maybe "
        f"({mining['pits_kept_clean_forever']} pits scored <= 0.35 stay clean for good)"
    )
    stage2 = str(Path(args.out) / "stage2")
    reference = args.compare or stage2
    others: list[str | Path] = [stage2] if args.compare else []
    table = routing_table(reference, others, args.ensemble)
    print(format_table(table))
    _write_json(table, str(Path(args.out) / "routing_table.json"))
    return 0


def cmd_routing(args) -> int:
    from pitguard.twostage import format_table, routing_table

    table = routing_table(args.reference, args.runs, args.ensemble, args.data, args.split)
    print(format_table(table))
    _write_json(table, args.json)
    return 0


def cmd_export(args) -> int:
    from pitguard.export import export_run

    meta = export_run(
        args.run,
        args.out,
        args.onnx,
        args.int8,
        args.fp16,
        args.calib_data,
        args.allow_uncalibrated,
    )
    print(f"wrote bundle {args.out}: " + ", ".join(meta["files"].values()))
    for key, label in (("onnx", "ONNX parity"), ("int8", "INT8 gate"), ("fp16", "FP16 gate")):
        if key in meta:
            g = meta[key].get("parity") or meta[key]["gate"]
            print(
                f"{label}: max p(pit) diff {g['max_prob_diff']:.2e}, {g['route_mismatches']} route mismatches, "
                f"accuracy {100 * g['accuracy']:.2f}% (fp32 {100 * g['accuracy_ref']:.2f}%), "
                f"pits routed clean {g['pit_misses']} (fp32 {g['pit_misses_ref']}) on n={g['n']}"
            )
    return 0


def cmd_predict(args) -> int:
    from pitguard.predict import load, predict_files

    predictor = load(args.bundle, args.backend, args.device, args.threads)
    result = predict_files(predictor, args.paths, Path(args.out) if args.out else None)
    if not args.out:
        for row in result["rows"]:
            print(f"{row['path']},{row['route']},{row['p_pit']},{row['error']}")
    print(
        f"{result['n']} files: "
        + ", ".join(f"{k} {v}" for k, v in result["routes"].items())
        + f", failed {result['failed']}",
        file=sys.stderr,
    )
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if result["failed"] else 0


def cmd_serve(args) -> int:
    from pitguard.serve import serve

    serve(
        args.bundle,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        backend=args.backend,
        threads=args.threads,
    )
    return 0


def cmd_recipes(args) -> int:
    from pitguard.config import recipe_names, recipe_summary, recipe_text

    if args.name:
        print(recipe_text(args.name), end="")
        return 0
    for name in recipe_names():
        print(f"{name:<26} {recipe_summary(name)}")
    return 0


def cmd_import_torchvision(args) -> int:
    from pitguard.importer import import_torchvision

    info = import_torchvision(args.state_dict, args.arch, args.classes, args.out, args.channels)
    print(
        f"wrote run {info['run']} ({info['arch']}, classes {', '.join(info['classes'])}); try: pitguard eval {info['run']} --data DIR"
    )
    return 0


def cmd_demo(args) -> int:
    from pitguard.demo import run_demo

    return run_demo(Path(args.out), data=args.data, fast=args.fast)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pitguard",
        description="Train, check and ship the cherry pit crop classifier.",
        epilog=_examples(
            "pitguard data audit ../shared/data/cherry_classification/train --json audit.json",
            "pitguard data split ../shared/data/cherry_classification/train --out split.csv",
            "pitguard demo",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pitguard {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    data = sub.add_parser("data", help="find, audit, split and synthesize crops")
    data_sub = data.add_subparsers(dest="data_verb", metavar="VERB", required=True)

    p = _verb(
        data_sub,
        "audit",
        "Report counts, image statistics, bad files, duplicates and leakage of a dataset.",
        [
            "pitguard data audit ../shared/data/cherry_classification/train",
            "pitguard data audit runs/split.csv --json audit.json",
            "pitguard data audit my_crops/ --modes convert --sizes pad",
        ],
        cmd_audit,
    )
    p.add_argument("data", help="class-folder dir, split-folder dir, or CSV manifest")
    p.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    _decode_args(p)

    p = _verb(
        data_sub,
        "split",
        "Write a seeded, stratified, duplicate-aware split manifest (path,label,split,group).",
        [
            "pitguard data split ../shared/data/cherry_classification/train --out split.csv",
            "pitguard data split crops/ --out split.csv --fractions train=0.7,val=0.15,test=0.15",
            "pitguard data split crops/ --out split.csv --seed 7",
        ],
        cmd_split,
    )
    p.add_argument("data", help="class-folder dir, split-folder dir, or CSV manifest")
    p.add_argument(
        "--out", required=True, metavar="MANIFEST.csv", help="where to write the manifest"
    )
    p.add_argument(
        "--fractions",
        help="NAME=FRACTION pairs adding up to 1 (default train=0.55,val=0.1,calib=0.2,test=0.15)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    _decode_args(p)

    p = _verb(
        data_sub,
        "synth",
        "Write procedural crops that look like the line's (clean and pit folders, balanced).",
        [
            "pitguard data synth synth/ --count 400",
            "pitguard data synth hard/ --count 1000 --difficulty 0.8 --seed 3",
        ],
        cmd_synth,
    )
    p.add_argument("out", help="output folder (created; must not hold other files)")
    p.add_argument("--count", type=int, default=400, help="number of crops (default 400)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--size", type=int, default=128, help="crop side in px (default 128)")
    p.add_argument(
        "--difficulty", type=float, default=0.5, help="0 easy .. 1 hard: fainter pits (default 0.5)"
    )

    p = _verb(
        sub,
        "train",
        "Train a recipe on a dataset into a run folder, or resume an interrupted run.",
        [
            "pitguard train --recipe cpu-fast --data ../shared/data/cherry_classification/train --out runs/cpu-fast",
            "pitguard train --recipe resnet50-aug --data split.csv --out runs/r50 --set train.epochs=10",
            "pitguard train --resume runs/cpu-fast",
        ],
        cmd_train,
    )
    p.add_argument("--recipe", help="a shipped recipe by name (see pitguard recipes)")
    p.add_argument("--config", help="a YAML file of overrides (applied after the recipe)")
    p.add_argument(
        "--data", help="class-folder dir (split here, seeded), split-folder dir or CSV manifest"
    )
    p.add_argument("--out", help="run folder to create")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable)",
    )
    p.add_argument(
        "--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint"
    )
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="EPOCHS",
        help="stop after this many epochs (resume later)",
    )

    p = _verb(
        sub,
        "eval",
        "Evaluate a run: metrics with 95% intervals, per-crop predictions and plots.",
        [
            "pitguard eval runs/cpu-fast                      # the run's own test part",
            "pitguard eval runs/cpu-fast --data other_crops/ --json eval.json",
            "pitguard eval runs/cpu-fast --data runs/cpu-fast/split.csv --split calib",
        ],
        cmd_eval,
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="dataset (any layout); default: the run's own split")
    p.add_argument("--split", help="part of a split dataset to evaluate (default test)")
    p.add_argument("--json", metavar="OUT", help="also write the metrics JSON here")
    p.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples for intervals (default 1000)"
    )
    p.add_argument(
        "--classes", metavar="MAP", help="map folder names to classes, e.g. good=clean,bad=pit"
    )

    p = _verb(
        sub,
        "calibrate",
        "Calibrate the clean/maybe/pit decision with a stated bound on pits routed clean.",
        [
            "pitguard calibrate runs/cpu-fast --max-pit-miss 0.01 --confidence 0.95",
            "pitguard calibrate runs/cpu-fast --max-pit-miss 0.02 --max-false-reject 0.05",
            "pitguard calibrate runs/prod --data held_out_calib/",
        ],
        cmd_calibrate,
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="calibration crops (default: the run's own calib part)")
    p.add_argument("--split", help="part of a split --data to use (default calib)")
    p.add_argument(
        "--max-pit-miss", type=float, default=0.01, help="bound on pits routed clean (default 0.01)"
    )
    p.add_argument(
        "--confidence", type=float, default=0.95, help="confidence of the bound (default 0.95)"
    )
    p.add_argument("--max-false-reject", type=float, help="also bound clean crops routed pit")

    p = _verb(
        sub,
        "thresholds",
        "Sweep one threshold on p(pit) (the old reports' analysis): table, JSON and plot.",
        [
            "pitguard thresholds runs/cpu-fast --min-recall 0.99",
            "pitguard thresholds runs/cpu-fast --data other_crops/ --every 5",
        ],
        cmd_thresholds,
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="crops to sweep on (default: the run's calib part)")
    p.add_argument("--split", help="part of a split --data (default calib)")
    p.add_argument("--min-recall", type=float, default=0.99, help="pit recall floor (default 0.99)")
    p.add_argument(
        "--every", type=int, default=5, help="print every Nth threshold of the 101 (default 5)"
    )

    p = _verb(
        sub,
        "compare",
        "Paired comparison of runs on the same crops: exact McNemar test and bootstrap intervals.",
        [
            "pitguard compare runs/cpu-fast runs/r50 runs/effb0",
            "pitguard compare runs/a runs/b --data held_out/ --json compare.json",
        ],
        cmd_compare,
    )
    p.add_argument("runs", nargs="+", help="run folders; the first is the baseline")
    p.add_argument("--data", help="crops to compare on (default: the runs' shared test part)")
    p.add_argument("--split", help="part of a split --data (default test)")
    p.add_argument("--json", metavar="OUT", help="write the comparison as JSON")

    p = _verb(
        sub,
        "twostage",
        "Reproduce the legacy two-stage maybe method and compare its routing on the same test part.",
        [
            "pitguard twostage --compare runs/cpu-fast --out runs/twostage --recipe cpu-fast",
            "pitguard twostage --data crops/ --out runs/twostage --set train.epochs=10",
        ],
        cmd_twostage,
    )
    p.add_argument("--data", help="dataset (default: the --compare run's split.csv)")
    p.add_argument("--out", required=True, help="folder for stage1/, stage2/ and the table")
    p.add_argument("--recipe", default="cpu-fast", help="recipe of both stages (default cpu-fast)")
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting"
    )
    p.add_argument(
        "--stage2-epochs", type=int, help="fine-tuning epochs of stage 2 (default half of stage 1)"
    )
    p.add_argument(
        "--compare", metavar="RUN", help="a calibrated run to compare with on its test part"
    )
    p.add_argument(
        "--ensemble", nargs="+", metavar="RUN", help="binary runs routed by disagreement"
    )

    p = _verb(
        sub,
        "routing",
        "Compare clean/maybe/pit routing methods on the same crops (pit-miss, maybe, false-reject).",
        [
            "pitguard routing runs/cpu-fast runs/twostage/stage2",
            "pitguard routing runs/cpu-fast --ensemble runs/a runs/b runs/c --json routing.json",
        ],
        cmd_routing,
    )
    p.add_argument("reference", help="run whose test part is used (calibrated, 3-class or binary)")
    p.add_argument("runs", nargs="*", help="more runs to route on the same crops")
    p.add_argument(
        "--ensemble", nargs="+", metavar="RUN", help="binary runs routed by disagreement"
    )
    p.add_argument("--data", help="crops to route (default: the reference run's test part)")
    p.add_argument("--split", help="part of a split --data (default test)")
    p.add_argument("--json", metavar="OUT", help="write the table as JSON")

    p = _verb(
        sub,
        "export",
        "Write a deployable bundle (weights, input contract, calibrated decision; ONNX/INT8/FP16).",
        [
            "pitguard export runs/cpu-fast --out bundles/cpu-fast --onnx",
            "pitguard export runs/cpu-fast --out bundles/cpu-fast-q --onnx --int8 --fp16",
            "pitguard export runs/prod --out bundles/prod --onnx --calib-data calib_crops/",
        ],
        cmd_export,
    )
    p.add_argument("run", help="a calibrated run folder")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (checked for parity)")
    p.add_argument(
        "--int8", action="store_true", help="also write model.int8.onnx (static PTQ, gated)"
    )
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx for GPU (gated)")
    p.add_argument(
        "--calib-data",
        help="crops for the gates and INT8 calibration (default: the run's calib part)",
    )
    p.add_argument(
        "--allow-uncalibrated",
        action="store_true",
        help="export a run without policy (argmax, no maybe)",
    )

    p = _verb(
        sub,
        "predict",
        "Classify image files and folders with a bundle; writes path, route, p_pit (exit 1 if some failed).",
        [
            "pitguard predict bundles/cpu-fast crops/ --out preds.csv",
            "pitguard predict bundles/cpu-fast a.png b.png --backend torch",
        ],
        cmd_predict,
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", help="write a CSV (path,route,p_pit,label,error)")
    p.add_argument(
        "--backend",
        default="auto",
        help="auto (ONNX when present), torch, onnx, onnx-int8, onnx-fp16",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")

    p = _verb(
        sub,
        "serve",
        "Serve a bundle over HTTP: POST /v1/classify (PNG files or .npy), /healthz, /metrics.",
        [
            "pitguard serve bundles/cpu-fast",
            "pitguard serve bundles/cpu-fast --host 0.0.0.0 --port 8080 --max-batch 128",
            "curl -F files=@a.png -F files=@b.png http://127.0.0.1:8000/v1/classify",
        ],
        cmd_serve,
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--max-batch", type=int, default=64, help="most crops per model call (default 64)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="longest wait for more requests to batch with (default 5)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="auto (ONNX when present), torch, onnx, onnx-int8, onnx-fp16",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")

    p = _verb(
        sub,
        "recipes",
        "List the shipped recipes, or print one.",
        ["pitguard recipes", "pitguard recipes cpu-fast"],
        cmd_recipes,
    )
    p.add_argument("name", nargs="?", help="print this recipe's YAML")

    p = _verb(
        sub,
        "import-torchvision",
        "Turn a torchvision-style state dict (e.g. the production ResNet50) into a run folder.",
        [
            "pitguard import-torchvision prod_resnet50.pth --arch resnet50 --classes clean,maybe,pit --out runs/prod",
            "pitguard import-torchvision r50_2class.pth --arch resnet50 --classes clean,pit --out runs/prod2",
        ],
        cmd_import_torchvision,
    )
    p.add_argument("state_dict", help=".pth/.pt/.safetensors state dict")
    p.add_argument(
        "--arch",
        required=True,
        help="timm architecture with torchvision key names (resnet18/34/50/101)",
    )
    p.add_argument(
        "--classes", required=True, help="output classes in the fc's order, e.g. clean,maybe,pit"
    )
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument(
        "--channels", default="0,1,2", help="input channels the model reads (default 0,1,2)"
    )

    p = _verb(
        sub,
        "demo",
        "Run the pipeline on a built-in default (synthetic crops) or on your own crops.",
        ["pitguard demo", "pitguard demo --out demo-out", "pitguard demo --data my_crops/"],
        cmd_demo,
    )
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--data", help="your own class-folder dir instead of synthetic crops")
    p.add_argument("--fast", action="store_true", help="smallest settings, for tests")

    # pitguard.report imports only the standard library at load time, so help stays fast.
    from pitguard.report import cmd_report

    p = _verb(
        sub,
        "report",
        "Tabulate runs (metrics with 95% intervals, guarantee, latency, paired verdict vs a "
        "baseline) into experiments.json, experiments.md and one self-contained report.html.",
        [
            "pitguard report runs/",
            "pitguard report runs/cpu-fast runs/r50 --out report-r50 --baseline runs/cpu-fast",
            "pitguard report runs/ runs/twostage --baseline prod",
        ],
        cmd_report,
    )
    p.add_argument("paths", nargs="+", help="run folders, or folders holding run folders")
    p.add_argument("--out", default="report", help="output folder (default report/)")
    p.add_argument(
        "--baseline", metavar="RUN", help="run folder or run name to compare with (default: first)"
    )

    def cmd_bench(args) -> int:
        # Imported when the verb runs: torch stays out of `pitguard --help`.
        from pitguard.bench import bench, format_table, parse_backends, parse_batch_sizes

        result = bench(
            args.targets,
            parse_batch_sizes(args.batch_sizes),
            parse_backends(args.backends),
            threads=args.threads,
            baseline=args.baseline,
            min_runs=args.min_runs,
            min_seconds=args.min_seconds,
            device=args.device,
            size=args.size,
        )
        print(format_table(result))
        _write_json(result, args.json)
        return 0

    p = _verb(
        sub,
        "bench",
        "Latency and throughput of bundles and timm models, end to end from uint8 crops.",
        [
            "pitguard bench runs/bundle --baseline resnet50 --batch-sizes 1,32 --json bench.json",
            "pitguard bench resnet50 pitguard_small --backends eager,onnx,onnx-int8 --threads 2",
            "pitguard bench runs/bundle --device cuda --backends eager,onnx --min-seconds 5",
        ],
        cmd_bench,
    )
    p.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="bundle folder or timm model name (random weights)",
    )
    p.add_argument(
        "--batch-sizes", default="1,8,32", metavar="N,N", help="comma-separated (default 1,8,32)"
    )
    p.add_argument(
        "--backends",
        default="eager,onnx",
        metavar="NAME,NAME",
        help="comma-separated from eager, onnx, onnx-int8, onnx-fp16, eager-fp16, eager-bf16 "
        "(default eager,onnx; on cuda eager also brings eager-fp16 and eager-bf16)",
    )
    p.add_argument(
        "--threads", type=int, help="CPU threads for torch and onnxruntime (default: all cores)"
    )
    p.add_argument(
        "--baseline", metavar="TARGET", help="also time this as eager and compare per crop"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    p.add_argument(
        "--min-seconds",
        type=float,
        default=2.0,
        help="time each batch size at least this long (default 2)",
    )
    p.add_argument(
        "--min-runs", type=int, default=20, help="and at least this many runs (default 20)"
    )
    p.add_argument("--size", type=int, default=128, help="crop side for timm names (default 128)")
    p.add_argument("--json", metavar="OUT", help="write the full result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except PitguardError as exc:
        print("error: " + textwrap.indent(str(exc), "  ").lstrip(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
