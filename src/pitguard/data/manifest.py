"""The split manifest (``path,label,split,group[,fold]``): its one reader and its one writer."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pitguard.core.errors import PitguardError
from pitguard.core.files import atomic_write

COLUMNS = ("path", "label", "split", "group")


@dataclass(frozen=True)
class ManifestRow:
    """One crop of a manifest; ``path`` is absolute once read."""

    path: Path
    label: str  # the class name as written (mapped to a canonical class by the reader's caller)
    split: str | None = None
    group: str | None = None  # duplicate group: crops of one group share a split
    fold: str | None = None  # cross-fitting fold (the column is written only when some row has one)


def _absolute(path: Path) -> Path:
    """An absolute path with ``..`` folded by name, symlinks not followed."""
    return Path(os.path.normpath(os.path.abspath(path)))


def read_manifest(csv_path: str | Path) -> list[ManifestRow]:
    """Rows of a manifest, paths made absolute against its folder; errors name the file and line.

    Paths stay as named: a folder reached through a symlink (``../shared``) keeps the link's
    name, so a manifest still reads where the link points elsewhere on another machine."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    # utf-8-sig: a spreadsheet program's byte order mark is not taken for part of "path"
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or [])
        missing = {"path", "label"} - columns
        if missing:
            raise PitguardError(
                f"{csv_path}: manifest lacks column(s) {', '.join(sorted(missing))}; "
                f"found {', '.join(sorted(columns)) or 'none'}; expected path,label[,split][,group]"
            )
        raw = list(reader)
    if not raw:
        raise PitguardError(f"{csv_path}: manifest has no rows; add one row per crop")
    rows: list[ManifestRow] = []
    for line, r in enumerate(raw, start=2):
        if not r["path"]:
            raise PitguardError(f"{csv_path}:{line}: empty path; fill it in or delete the row")
        if not (r["label"] or "").strip():
            raise PitguardError(
                f"{csv_path}:{line}: no label; write the crop's class (clean or pit) or delete the "
                "row (a review queue is labelled with pitguard data review QUEUE --out DIR)"
            )
        path = Path(r["path"])
        rows.append(
            ManifestRow(
                _absolute(path if path.is_absolute() else base / path),
                r["label"],
                r.get("split") or None,
                r.get("group") or None,
                r.get("fold") or None,
            )
        )
    _check_one_row_per_crop(csv_path, rows, [r["path"] for r in raw])
    return rows


def _check_one_row_per_crop(csv_path: Path, rows: list[ManifestRow], named: list[str]) -> None:
    """Refuse a crop (one file, however its path is written) listed under two labels or in two
    parts: it would be trained on and evaluated, or taught both ways. Rows repeated the same
    way are left alone. Line numbers count the header as line 1."""
    first: dict[str, int] = {}
    problems = []
    for i, row in enumerate(rows):
        j = first.setdefault(os.path.realpath(row.path), i)
        seen = rows[j]
        if j == i or (seen.label, seen.split) == (row.label, row.split):
            continue
        what = f"labelled {row.label}" if row.label != seen.label else f"in part {row.split}"
        problems.append(
            f"{csv_path}:{i + 2}: {named[i]} is the crop of line {j + 2} ({named[j]}, labelled "
            f"{seen.label} in part {seen.split or '(none)'}), here {what}"
        )
    if problems:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise PitguardError(
            "\n".join(shown) + "\none crop cannot have two labels or sit in two parts: give each "
            "crop one row (delete or correct the others), then run again"
        )


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> Path:
    """Write rows atomically, paths relative to the manifest's folder so the pair can move."""
    path = Path(path)
    base = _absolute(path.parent)
    rows = list(rows)
    folds = any(row.fold for row in rows)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS + (("fold",) if folds else ()))
            for row in rows:
                rel = os.path.relpath(_absolute(Path(row.path)), base)
                cells = [rel, row.label, row.split or "", row.group or ""]
                writer.writerow(cells + ([row.fold or ""] if folds else []))

    atomic_write(path, write)
    return path
