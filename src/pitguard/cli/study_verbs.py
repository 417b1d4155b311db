"""The study verbs: compare runs, the two-stage method, routing, imports, the report, the demo."""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from pitguard.cli.common import COUNT, OPEN_SHARE, check_out, verb, write_json_out
from pitguard.core.errors import PitguardError

if TYPE_CHECKING:
    from pitguard.cli.common import Verbs

log = logging.getLogger(__name__)


def cmd_compare(args: argparse.Namespace) -> int:
    from pitguard.evaluate.compare import compare_runs, format_comparison

    check_out(args.json, "--json", [args.data])
    result = compare_runs(args.runs, args.data, args.split)
    print(format_comparison(result))
    write_json_out(result, args.json)
    return 0


def add_compare(sub: Verbs) -> None:
    p = verb(
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


def cmd_twostage(args: argparse.Namespace) -> int:
    from pitguard.config import load_config
    from pitguard.studies.twostage import format_table, routing_table, run_twostage

    check_out(args.out, "--out", [args.data], folder=True)
    data = args.data
    if data is None and args.compare:
        # The calibrated run's own split, so both methods are scored on the same test part.
        from pitguard.models.runfolder import RunPaths

        data = str(RunPaths(Path(args.compare)).split)
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
    write_json_out(table, str(Path(args.out) / "routing_table.json"))
    return 0


def add_twostage(sub: Verbs) -> None:
    p = verb(
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
        "--stage2-epochs",
        type=COUNT,
        help="fine-tuning epochs of stage 2 (default half of stage 1)",
    )
    p.add_argument(
        "--compare", metavar="RUN", help="a calibrated run to compare with on its test part"
    )
    p.add_argument(
        "--ensemble", nargs="+", metavar="RUN", help="binary runs routed by disagreement"
    )


def cmd_routing(args: argparse.Namespace) -> int:
    from pitguard.studies.twostage import format_table, routing_table

    check_out(args.json, "--json", [args.data])
    table = routing_table(args.reference, args.runs, args.ensemble, args.data, args.split)
    print(format_table(table))
    write_json_out(table, args.json)
    return 0


def add_routing(sub: Verbs) -> None:
    p = verb(
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


def cmd_import_torchvision(args: argparse.Namespace) -> int:
    from pitguard.models.importer import import_torchvision

    check_out(args.out, "--out", [args.state_dict], folder=True)
    info = import_torchvision(args.state_dict, args.arch, args.classes, args.out, args.channels)
    print(f"run {info['run']}: {info['arch']}, classes {', '.join(info['classes'])}")
    print(f"note: {info['note']}")
    log.info("wrote: %s", info["run"])
    # no split of its own: eval on labelled crops shows whether the class order is right
    log.info("next: %s", shlex.join(["pitguard", "eval", info["run"], "--data", "CROPS"]))
    return 0


def add_import_torchvision(sub: Verbs) -> None:
    p = verb(
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


def cmd_report(args: argparse.Namespace) -> int:
    from pitguard.report import write_report

    check_out(args.out, "--out", folder=True)
    result = write_report(args.paths, args.out, args.baseline, args.pit_share)
    print(result["table"])
    files = result["files"]
    print(f"baseline {result['baseline']}")
    log.info("wrote: %s", ", ".join(str(files[k]) for k in ("markdown", "json", "html")))
    log.info("next: open %s in a browser (one self-contained file)", files["html"])
    return 0


def add_report(sub: Verbs) -> None:
    p = verb(
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
    p.add_argument(
        "--pit-share",
        type=OPEN_SHARE,
        metavar="X",
        help="share of pits on the line, strictly between 0 and 1, for the plain-words summary "
        "(default: each run's test part's share)",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from pitguard.cli.demo import run_demo

    check_out(args.out, "--out", [args.data], folder=True)
    return run_demo(Path(args.out), data=args.data, fast=args.fast)


def add_demo(sub: Verbs) -> None:
    p = verb(
        sub,
        "demo",
        "Run the pipeline on a built-in default (synthetic crops) or on your own crops.",
        ["pitguard demo", "pitguard demo --out demo-out", "pitguard demo --data my_crops/"],
        cmd_demo,
    )
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--data", help="your own class-folder dir instead of synthetic crops")
    p.add_argument("--fast", action="store_true", help="smallest settings, for tests")


def add_verbs(sub: Verbs) -> None:
    add_compare(sub)
    add_twostage(sub)
    add_routing(sub)
    add_import_torchvision(sub)
    add_report(sub)
    add_demo(sub)
