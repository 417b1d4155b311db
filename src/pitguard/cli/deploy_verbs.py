"""The deployment verbs: export a bundle, predict with it, serve it, bench it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pitguard.cli.common import verb, write_json_out
from pitguard.deploy.backends import ALIASES, BACKENDS, SERVING  # no torch: help stays light
from pitguard.errors import PitguardError

if TYPE_CHECKING:
    from pitguard.cli.common import Verbs


def _serving_backends() -> str:
    """The --backend help of predict and serve, listed from the registry."""
    alias_of = {name: alias for alias, name in ALIASES.items()}
    names = [f"{n} (alias {alias_of[n]})" if n in alias_of else n for n in SERVING]
    return "auto (ONNX when present), " + ", ".join(names)


def cmd_export(args: argparse.Namespace) -> int:
    from pitguard.deploy.export import export_run

    meta = export_run(
        args.run,
        args.out,
        args.onnx,
        args.int8,
        args.fp16,
        args.calib_data,
        args.allow_uncalibrated,
        args.force,
    )
    print(f"wrote bundle {args.out}: " + ", ".join(meta["files"].values()))
    for key, label in (("onnx", "ONNX parity"), ("int8", "INT8 gate"), ("fp16", "FP16 gate")):
        if key in meta:
            g = meta[key].get("parity") or meta[key]["gate"]
            limits = meta[key].get("tolerances")
            # A graph that fails its gate is never written, so every line here is a pass.
            if "max_accuracy_drop" in limits:
                passed = (
                    f"passed (limits: accuracy drop {100 * limits['max_accuracy_drop']:.1f} "
                    f"points, {limits['extra_pit_misses']} extra pits routed clean)"
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
        "--allow-uncalibrated",
        action="store_true",
        help="export a run without policy (argmax, no maybe)",
    )


def cmd_predict(args: argparse.Namespace) -> int:
    from pitguard.deploy.predict import load, predict_files

    predictor = load(args.bundle, args.backend, args.device, args.threads)
    queue = _queue(args)
    import csv

    from pitguard.policy import PREDICTION_COLUMNS

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
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    if queue is not None:
        print(
            f"queued {queue.kept} crop(s) for review in {queue.root} "
            f"(label them: pitguard data review {queue.root} --out DIR)",
            file=sys.stderr,
        )
    return 1 if result["failed"] else 0


def _queue(args: argparse.Namespace):
    """The review queue asked for with --queue, or None."""
    if not args.queue:
        return None
    from pitguard.deploy.queue import ReviewQueue, parse_routes

    return ReviewQueue(args.queue, parse_routes(args.queue_routes), args.queue_sample)


def _add_queue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--queue",
        metavar="DIR",
        help="keep the crops routed to review as PNGs with an unlabelled manifest "
        "(DIR/queue.csv) for people to label (pitguard data review DIR)",
    )
    p.add_argument(
        "--queue-routes",
        default="maybe",
        metavar="ROUTES",
        help="routes kept whole in the queue, comma-separated (default maybe)",
    )
    p.add_argument(
        "--queue-sample",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="also keep this random share of the other routes, e.g. 0.01 (default 0)",
    )


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
    p.add_argument("--backend", default="auto", help=_serving_backends())
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    _add_queue_args(p)


def cmd_serve(args: argparse.Namespace) -> int:
    from pitguard.deploy.serve import serve

    if not args.header_timeout > 0:
        raise PitguardError(
            f"--header-timeout {args.header_timeout}: give a positive number of seconds "
            "(default 10)"
        )
    serve(
        args.bundle,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        backend=args.backend,
        threads=args.threads,
        queue=_queue(args),
        max_in_flight=args.max_in_flight,
        max_queue_ms=args.max_queue_ms,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        max_crops=args.max_crops,
        max_request_bytes=int(args.max_request_mb * 2**20),
        token=_read_token(args.token_file),
        docs=args.docs,
    )
    return 0


def _read_token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise PitguardError(f"--token-file {path}: cannot read it ({exc.strerror})") from exc
    if len(token) < 16:
        raise PitguardError(
            f"--token-file {path}: the token is {len(token)} characters; use 16 or more "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE)"
        )
    return token


def add_serve(sub: Verbs) -> None:
    p = verb(
        sub,
        "serve",
        "Serve a bundle over HTTP: POST /v1/classify (PNG files or .npy), /healthz, /metrics.",
        [
            "pitguard serve bundles/cpu-fast",
            "pitguard serve bundles/cpu-fast --port 8080 --max-batch 128 --max-in-flight 64",
            "pitguard serve bundles/cpu-fast --host 0.0.0.0 --token-file /etc/pitguard/token",
            "curl -F files=@a.png -F files=@b.png http://127.0.0.1:8000/v1/classify",
        ],
        cmd_serve,
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this machine only); another address exposes "
        "the model to the network: set --token-file and put a TLS reverse proxy in front",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="most crops per model call (default 64 on a GPU, 4 on a CPU, where the time per "
        "crop hardly depends on the batch and small calls keep waits short)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="longest wait for more requests to batch with (default 5)",
    )
    p.add_argument("--backend", default="auto", help=_serving_backends())
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="classify requests read or answered at once; more get 503 with Retry-After "
        "(default 2 per CPU core on a CPU, 32 on a GPU)",
    )
    p.add_argument(
        "--max-queue-ms",
        type=float,
        default=100.0,
        help="refuse new requests (503, Retry-After) while a new request's crops would wait more "
        "than this many ms of model work, estimated from the model's recent time per crop; "
        "lower keeps the latency of the requests taken closer to its unloaded value, at the "
        "price of more 503s (default 100)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open connections at once, slow ones included; more get 503 (default 256)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may take to send a request's line and headers; slower "
        "ones are closed (default 10)",
    )
    p.add_argument(
        "--max-crops", type=int, default=256, help="most crops in one request (default 256)"
    )
    p.add_argument(
        "--max-request-mb",
        type=float,
        default=8.0,
        help="largest request body in MiB (default 8: 128 .npy crops of 128 px)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="require Authorization: Bearer TOKEN (the file's content) on classify and metrics",
    )
    p.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json")
    _add_queue_args(p)


def cmd_bench(args: argparse.Namespace) -> int:
    from pitguard.deploy.bench import bench, format_table
    from pitguard.deploy.timing import parse_backends, parse_batch_sizes

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
    write_json_out(result, args.json)
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


def add_verbs(sub: Verbs) -> None:
    add_export(sub)
    add_predict(sub)
    add_serve(sub)
    add_bench(sub)
