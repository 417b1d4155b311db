"""The deployment verbs: export a bundle, predict with it, serve it, bench it."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pitguard.cli.common import (
    COUNT,
    CROP_SIDE,
    THREADS,
    check_out,
    number,
    run_data,
    verb,
)
from pitguard.cli.serve_verbs import (
    add_queue_args,
    add_serve,
    add_trust_arg,
    review_queue,
    serving_backends,
)
from pitguard.core.errors import PitguardError
from pitguard.runtime.backends import BACKENDS  # no torch: help stays light
from pitguard.runtime.trust import INTEGRITY_ONLY

if TYPE_CHECKING:
    from pitguard.cli.common import Verbs

log = logging.getLogger(__name__)


def cmd_export(args: argparse.Namespace) -> int:
    from pitguard.deploy.export import export_run

    check_out(args.out, "--out", [args.run, args.calib_data, run_data(args.run)])
    meta = export_run(
        args.run,
        args.out,
        args.onnx,
        args.int8,
        args.fp16,
        args.calib_data,
        args.allow_uncalibrated,
        args.force,
        args.allow_unfinished,
        sign=args.sign,
    )
    for key, label in (("onnx", "ONNX parity"), ("int8", "INT8 gate"), ("fp16", "FP16 gate")):
        if key in meta:
            g = meta[key].get("parity") or meta[key]["gate"]
            limits = meta[key].get("tolerances")
            # A graph that fails its gate is never written, so every line here is a pass.
            if "max_accuracy_drop" in limits:
                passed = (
                    f"passed (limits: accuracy drop {100 * limits['max_accuracy_drop']:.1f} "
                    f"points; {meta[key]['guarantee']['established_on']})"
                )
            else:
                passed = (
                    f"passed (limits: p(pit) diff {limits['max_prob_diff']:.0e}, "
                    f"{limits['route_mismatches']} route mismatches)"
                )
            print(
                f"{label} {passed}: max p(pit) diff {g['max_prob_diff']:.2e}, "
                f"{g['route_mismatches']} route mismatches, "
                f"accuracy {100 * g['accuracy']:.2f}% (fp32 {100 * g['accuracy_ref']:.2f}%), "
                f"pits routed clean {g['pit_misses']} (fp32 {g['pit_misses_ref']}) on n={g['n']}"
            )
    look = meta.get("second_look")
    if look and "parity" in look:
        g = look["parity"]
        print(
            f"second look ({(look.get('model') or {}).get('model_name', 'same network')}, views "
            f"{look['views']}) ONNX parity passed: max p(pit) diff "
            f"{g['max_prob_diff']:.2e}, {g['route_mismatches']} route mismatches on n={g['n']}; "
            f"{100 * look['share']:.1f}% of the calibration crops took it"
        )
    from pitguard.runtime.bundle import BUNDLE_JSON

    log.info("wrote: %s/ (%s)", Path(args.out), ", ".join([BUNDLE_JSON, *meta["files"].values()]))
    log.info(
        "next: %s (or %s)",
        shlex.join(["pitguard", "bench", args.out]),
        shlex.join(["pitguard", "predict", args.out, "CROPS", "--out", "predictions.csv"]),
    )
    return 0


def add_export(sub: Verbs) -> None:
    p = verb(
        sub,
        "export",
        "Write a deployable bundle (weights, input contract, calibrated decision; ONNX/INT8/FP16).",
        [
            "pitguard export runs/cpu-fast --out bundles/cpu-fast --onnx",
            "pitguard export runs/cpu-fast --out bundles/cpu-fast-q --onnx --int8 --fp16",
            "pitguard export runs/prod --out bundles/prod --onnx --calib-data calib_crops/",
            "pitguard export runs/cpu-fast --out bundles/line --onnx --sign keys/signing.key",
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
        "--force",
        action="store_true",
        help="replace the bundle already in --out (once the new one has passed its checks)",
    )
    p.add_argument(
        "--sign",
        metavar="KEY",
        help="sign the bundle with this Ed25519 private key (signing.key from pitguard keygen): "
        "bundle.sig, which predict, serve and pitguard-node check with --trust",
    )
    p.add_argument(
        "--allow-uncalibrated",
        action="store_true",
        help="export a run without policy (argmax, no maybe)",
    )
    p.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="export a run whose training stopped before its planned epochs (recorded in "
        "bundle.json)",
    )


def cmd_predict(args: argparse.Namespace) -> int:
    from pitguard.deploy.predict import load, predict_files

    inputs = [args.bundle, *args.paths]
    check_out(args.out, "--out", inputs, runs=False)
    check_out(args.queue, "--queue", inputs, folder=True, runs=False)
    predictor = load(args.bundle, args.backend, args.device, args.threads, args.trust)
    signed = predictor.meta.get("trust")
    queue = review_queue(args)
    import csv

    from pitguard.runtime.policy import PREDICTION_COLUMNS

    stdout = csv.DictWriter(sys.stdout, fieldnames=list(PREDICTION_COLUMNS))
    if not args.out:
        stdout.writeheader()  # the same columns as the file

    def show(row: dict) -> None:
        stdout.writerow(row)
        sys.stdout.flush()

    result = predict_files(
        predictor,
        args.paths,
        Path(args.out) if args.out else None,
        queue=queue,
        on_row=None if args.out else show,
    )
    print(
        f"{result['n']} file{'' if result['n'] == 1 else 's'}: "
        + ", ".join(f"{k} {v}" for k, v in result["routes"].items())
        + f", failed {result['failed']}",
        file=sys.stderr,
    )
    integrity = f"signed by key {signed['key_id']}" if signed else INTEGRITY_ONLY
    print(f"bundle: {integrity}", file=sys.stderr)
    for true, routes in result["by_class"].items():  # crops found in class folders
        n = sum(routes.values())
        print(
            f"  labelled {true} ({n}): " + ", ".join(f"{k} {v}" for k, v in routes.items()),
            file=sys.stderr,
        )
    if not args.out:  # stdout carries the predictions: the rest goes to stderr
        if queue is not None:
            print(
                f"queued {queue.kept} crop(s) for review in {queue.root} "
                f"(label them: pitguard data review {queue.root} --out DIR)",
                file=sys.stderr,
            )
        return 1 if result["failed"] else 0
    if queue is not None:
        print(f"queued {queue.kept} crop(s) for review in {queue.root}", file=sys.stderr)
    log.info("wrote: %s", ", ".join([args.out] + ([str(queue.root)] if queue is not None else [])))
    if queue is not None and queue.kept:
        review = ["pitguard", "data", "review", str(queue.root), "--out", "REVIEW_DIR"]
        log.info("next: %s (label the queued crops)", shlex.join(review))
    else:
        log.info("next: %s", shlex.join(["pitguard", "serve", args.bundle]))
    return 1 if result["failed"] else 0


def add_predict(sub: Verbs) -> None:
    p = verb(
        sub,
        "predict",
        "Classify image files and folders with a bundle; writes path, route, p_pit (exit 1 if some failed).",
        [
            "pitguard predict bundles/cpu-fast crops/ --out preds.csv",
            "pitguard predict bundles/cpu-fast a.png b.png --backend torch",
            "pitguard predict bundles/cpu-fast crops/ --out preds.csv --queue review-queue/",
        ],
        cmd_predict,
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument(
        "--out",
        help="write a CSV (path,true_label,predicted,p_pit,route,error,reason; stdout when "
        "not given, same columns)",
    )
    p.add_argument("--backend", default="auto", help=serving_backends())
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=THREADS, default=0, help="CPU threads (default: all cores)")
    add_trust_arg(p)
    add_queue_args(p)


def cmd_bench(args: argparse.Namespace) -> int:
    from pitguard.deploy.bench import bench, format_table
    from pitguard.deploy.timing import parse_backends, parse_batch_sizes

    targets = [t for t in [*args.targets, args.baseline] if t and Path(t).exists()]
    check_out(args.json, "--json", targets)
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
    if args.json:
        from pitguard.core.files import write_json

        write_json(args.json, result)
        log.info("wrote: %s", args.json)
    from pitguard.runtime.bundle import BUNDLE_JSON

    bundles = [t for t in args.targets if (Path(t) / BUNDLE_JSON).is_file()]
    if bundles:  # timm names have nothing to predict with
        log.info(
            "next: %s",
            shlex.join(["pitguard", "predict", bundles[0], "CROPS", "--out", "predictions.csv"]),
        )
    return 0


def add_bench(sub: Verbs) -> None:
    p = verb(
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
        help=f"comma-separated from {', '.join(BACKENDS)} "
        "(default eager,onnx; on cuda eager also brings eager-fp16 and eager-bf16)",
    )
    p.add_argument(
        "--threads",
        type=number(int, 1, hint="a whole number of threads, 1 or more"),
        help="CPU threads for torch and onnxruntime (default: all cores)",
    )
    p.add_argument(
        "--baseline", metavar="TARGET", help="also time this as eager and compare per crop"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    p.add_argument(
        "--min-seconds",
        type=number(float, 0, hint="0 or more seconds"),
        default=2.0,
        help="time each batch size at least this long (default 2)",
    )
    p.add_argument(
        "--min-runs", type=COUNT, default=20, help="and at least this many runs (default 20)"
    )
    p.add_argument(
        "--size", type=CROP_SIDE, default=128, help="crop side for timm names (default 128)"
    )
    p.add_argument("--json", metavar="OUT", help="write the full result as JSON")


def cmd_keygen(args: argparse.Namespace) -> int:
    from pitguard.runtime.trust import keygen

    private, public = keygen(args.out)
    print(f"key pair: {private} (private: keep it where exports run, 0600) and {public}")
    log.info("wrote: %s, %s", private, public)
    log.info(
        "next: %s",
        shlex.join(
            ["pitguard", "export", "RUN", "--out", "BUNDLE", "--onnx", "--sign", str(private)]
        ),
    )
    return 0


def add_keygen(sub: Verbs) -> None:
    p = verb(
        sub,
        "keygen",
        "Make an Ed25519 key pair for signing bundles (signing.key, signing.pub).",
        [
            "pitguard keygen --out keys/",
            "pitguard export runs/cpu-fast --out bundles/line --onnx --sign keys/signing.key",
            "pitguard predict bundles/line crops/ --out preds.csv --trust keys/signing.pub",
        ],
        cmd_keygen,
    )
    p.add_argument("--out", required=True, help="folder for signing.key and signing.pub")


def cmd_verify(args: argparse.Namespace) -> int:
    from pitguard.runtime.bundle import open_bundle
    from pitguard.runtime.classifier import GRAPHS, Classifier

    meta = open_bundle(args.bundle, trust=args.trust)  # proved once for every graph
    files = meta.get("files") or {}
    graphs = (
        [g for g in GRAPHS if BACKENDS[g].file_key in files]
        if args.graph == "all"
        else [args.graph]
    )
    if not graphs:
        raise PitguardError(f"{args.bundle}: has no ONNX graph to verify; export it with --onnx")
    for graph in graphs:
        clf = Classifier(args.bundle, graph, args.device, args.threads, verify=True, meta=meta)
        if clf.check is None:
            raise PitguardError(
                f"{args.bundle}: holds no check crops (exported by an older pitguard); export "
                "it again to have it prove itself here"
            )
        print(f"{graph}: passed, {clf.check.line()}")
    return 0


def add_verify(sub: Verbs) -> None:
    p = verb(
        sub,
        "verify",
        "Score a bundle's check crops on this machine: exit 2 if a graph routes them otherwise than at export.",
        [
            "pitguard verify bundles/cpu-fast",
            "pitguard verify bundles/cpu-fast --graph onnx-int8 --threads 2",
            "pitguard verify bundles/line --device cuda --trust keys/signing.pub",
        ],
        cmd_verify,
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument(
        "--graph", default="all", help="onnx, onnx-int8, onnx-fp16 or all (default: every graph)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or tensorrt (default cpu)")
    p.add_argument("--threads", type=THREADS, default=0, help="CPU threads (default: all cores)")
    add_trust_arg(p)


def add_verbs(sub: Verbs) -> None:
    add_keygen(sub)
    add_export(sub)
    add_verify(sub)
    add_predict(sub)
    add_serve(sub)
    add_bench(sub)
