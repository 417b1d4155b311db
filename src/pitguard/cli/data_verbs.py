"""The ``pitguard data`` verbs: audit, split, synthesize and review crops."""

from __future__ import annotations

import argparse
import logging
import shlex
from typing import TYPE_CHECKING

from pitguard.cli.common import (
    COUNT,
    SHARE,
    add_decode_args,
    check_out,
    dataset_index,
    decode_options,
    examples,
    number,
    verb,
    write_json_out,
)

if TYPE_CHECKING:
    from pitguard.cli.common import Verbs

log = logging.getLogger(__name__)


def cmd_audit(args: argparse.Namespace) -> int:
    from pitguard.data.audit import audit, format_audit

    check_out(args.json, "--json", [args.data])
    index = dataset_index(args)
    report = audit(index, decode_options(args))
    print(format_audit(report))
    if args.json:
        from pitguard.core.files import write_json

        write_json(args.json, report)
        log.info("wrote: %s", args.json)
    if index.splits():  # its parts are given: train keeps them
        log.info("next: %s", shlex.join(_train_command(args.data)))
    else:
        log.info(
            "next: %s", shlex.join(["pitguard", "data", "split", args.data, "--out", "split.csv"])
        )
    return 0


def _train_command(data: str) -> list[str]:
    """The first training of split crops: the CPU recipe, its run folder named after it."""
    return ["pitguard", "train", "--recipe", "cpu-fast", "--data", data, "--out", "runs/cpu-fast"]


def add_audit(sub: Verbs) -> None:
    p = verb(
        sub,
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
    add_decode_args(p)


def cmd_split(args: argparse.Namespace) -> int:
    from pitguard.data.split import parse_fractions, split_dataset

    check_out(args.out, "--out", [args.data])
    result = split_dataset(
        dataset_index(args),
        args.out,
        parse_fractions(args.fractions),
        args.seed,
        decode_options(args),
    )
    print(f"{'split':<8}" + "".join(f"{c:>10}" for c in next(iter(result["counts"].values()))))
    for split, per in result["counts"].items():
        print(f"{split:<8}" + "".join(f"{v:>10}" for v in per.values()))
    print(f"duplicate groups kept whole: {result['groups_kept_whole']}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unusable file(s), e.g. {result['skipped'][0]}")
    log.info("wrote: %s", result["manifest"])
    log.info("next: %s", shlex.join(_train_command(str(args.out))))
    return 0


def add_split(sub: Verbs) -> None:
    p = verb(
        sub,
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
    add_decode_args(p)


def cmd_synth(args: argparse.Namespace) -> int:
    from pitguard.data.synth import synthesize

    info = synthesize(
        args.out, count=args.count, seed=args.seed, size=args.size, difficulty=args.difficulty
    )
    print(
        f"wrote {info['count']} synthetic crops to {info['out']} "
        + ", ".join(f"{k} {v}" for k, v in info["classes"].items())
    )
    return 0


def add_synth(sub: Verbs) -> None:
    p = verb(
        sub,
        "synth",
        "Write procedural crops that look like the line's (clean and pit folders, balanced).",
        [
            "pitguard data synth synth/ --count 400",
            "pitguard data synth hard/ --count 1000 --difficulty 0.8 --seed 3",
        ],
        cmd_synth,
    )
    p.add_argument("out", help="output folder (created; must not hold other files)")
    p.add_argument(
        "--count",
        type=number(int, 2, hint="2 or more crops"),
        default=400,
        help="number of crops (default 400)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--size",
        type=number(int, 32, hint="a crop side of 32 px or more"),
        default=128,
        help="crop side in px (default 128)",
    )
    p.add_argument(
        "--difficulty", type=SHARE, default=0.5, help="0 easy .. 1 hard: fainter pits (default 0.5)"
    )


def cmd_review(args: argparse.Namespace) -> int:
    from pitguard.decision.review import apply_relabel, review_run

    check_out(args.out, "--out", [args.relabel], folder=True)
    check_out(args.json, "--json", [args.relabel])
    if args.relabel:
        result = apply_relabel(args.run, args.relabel, args.out)
        for path, old, new in result["listed"]:
            print(f"{old} -> {new}: {path}")
        print(
            f"{result['relabelled']} relabelled, {result['dropped']} dropped; "
            f"{result['rows']} crops in {result['manifest']} (changes listed in "
            f"{result['changes']}); train on it with --data {result['manifest']}"
        )
        return 0
    result = review_run(args.run, args.out, args.top)
    by = ", ".join(f"{n} labelled {c}" for c, n in result["suspects_by_label"].items())
    print(
        f"{result['n_suspects']} of {result['n_scored']} crops contradict their label ({by}); "
        f"the {result['shown']} most contradicted are shown"
    )
    print(f"wrote {result['outputs']['csv']} and {result['outputs']['html']}")
    write_json_out(result, args.json)
    return 0


def add_review(sub: Verbs) -> None:
    p = verb(
        sub,
        "review",
        "Rank crops whose out-of-fold scores contradict their label; apply a person's relabels.",
        [
            "pitguard data review runs/cf --out review/",
            "pitguard data review runs/cf --relabel review/suspects.csv --out relabelled/",
        ],
        cmd_review,
    )
    p.add_argument("run", help="a run trained with --folds K (its out-of-fold scores are ranked)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the outputs")
    p.add_argument(
        "--top", type=COUNT, default=60, help="suspects shown in suspects.html (default 60)"
    )
    p.add_argument(
        "--relabel",
        metavar="FILE",
        help="a suspects.csv whose decision column is filled in (a class, drop, or blank to "
        "keep): writes DIR/relabelled.csv, a manifest of the run's split with the changes",
    )
    p.add_argument("--json", metavar="OUT", help="also write the summary as JSON")


def cmd_cache(args: argparse.Namespace) -> int:
    from pitguard.data.load import cache_entries, clear_cache, default_cache_dir

    root = default_cache_dir()
    if args.action == "clear":
        n, size = clear_cache(root)
        print(f"removed {n} cached dataset(s), {size / 2**20:.1f} MiB, from {root}")
        return 0
    entries = cache_entries(root)
    total = sum(size for _, size in entries)
    print(f"{root}: {len(entries)} cached dataset(s), {total / 2**20:.1f} MiB")
    for path, size in entries:
        print(f"  {size / 2**20:8.1f} MiB  {path.name}")
    print("decoded crops are cached by content; `pitguard data cache clear` removes them")
    return 0


def add_cache(sub: Verbs) -> None:
    p = verb(
        sub,
        "cache",
        "Show or clear the decoded-crop cache (~/.cache/pitguard or $PITGUARD_CACHE).",
        ["pitguard data cache info", "pitguard data cache clear"],
        cmd_cache,
    )
    p.add_argument("action", choices=("info", "clear"), help="info: sizes; clear: remove all")


def add_verbs(sub: Verbs) -> None:
    """The ``data`` group and its verbs."""
    group = sub.add_parser(
        "data",
        help="find, audit, split, synthesize and review crops",
        description="Find, audit, split, synthesize and review crops.",
        epilog=examples(
            "pitguard data audit ../shared/data/cherry_classification/train --json audit.json",
            "pitguard data split crops/ --out split.csv --seed 7",
            "pitguard data synth synth/ --count 400",
            "pitguard data review runs/cf --out review/",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data_sub = group.add_subparsers(dest="data_verb", metavar="VERB", required=True)
    add_audit(data_sub)
    add_split(data_sub)
    add_synth(data_sub)
    add_review(data_sub)
    add_cache(data_sub)
