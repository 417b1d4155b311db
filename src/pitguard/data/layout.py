"""Find a dataset on disk: class folders, split folders, or a CSV manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pitguard.core.errors import PitguardError
from pitguard.data.manifest import ManifestRow, read_manifest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Folder or label names accepted for each canonical class.
CLASS_ALIASES: dict[str, str] = {
    "cherry_clean": "clean",
    "clean": "clean",
    "cherry_pit": "pit",
    "pit": "pit",
    "maybe": "maybe",
    "cherry_maybe": "maybe",
}
# Canonical order: class indices are positions in this tuple (restricted to the classes present).
CANONICAL_ORDER = ("clean", "maybe", "pit")
KNOWN_SPLITS = ("train", "val", "calib", "test")


@dataclass(frozen=True)
class Item:
    """One crop: where it is, its class index, and optional split and group."""

    path: Path
    label: int
    split: str | None = None
    group: str | None = None


@dataclass
class DatasetIndex:
    """Every crop of a dataset with the class mapping that was applied."""

    root: Path
    layout: str  # "folders", "splits" or "manifest"
    classes: tuple[str, ...]
    items: list[Item]
    # Source name (folder or CSV label) -> canonical class, as applied.
    class_mapping: dict[str, str] = field(default_factory=dict)
    # Files found in class folders that are not images by suffix, listed rather than lost.
    ignored: list[Path] = field(default_factory=list)

    @property
    def pit_index(self) -> int:
        return self.classes.index("pit")

    def relpath(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def splits(self) -> list[str]:
        return sorted({it.split for it in self.items if it.split is not None})

    def subset(self, split: str) -> DatasetIndex:
        items = [it for it in self.items if it.split == split]
        return DatasetIndex(self.root, self.layout, self.classes, items, dict(self.class_mapping))

    def manifest_rows(self) -> list[ManifestRow]:
        return [
            ManifestRow(it.path, self.classes[it.label], it.split, it.group) for it in self.items
        ]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.classes, 0)
        for it in self.items:
            out[self.classes[it.label]] += 1
        return out


def parse_class_mapping(spec: str | None) -> dict[str, str] | None:
    """Parse ``--classes`` given as ``folder=clean,other=pit`` into a source->class mapping."""
    if not spec:
        return None
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        name, sep, target = part.partition("=")
        if not sep or not name.strip() or target.strip() not in CANONICAL_ORDER:
            raise PitguardError(
                f"--classes: cannot read {part!r}; write SOURCE=CLASS pairs separated by commas, "
                f"with CLASS one of {', '.join(CANONICAL_ORDER)} (e.g. good=clean,bad=pit)"
            )
        mapping[name.strip()] = target.strip()
    return mapping


def _canonical(name: str, mapping: dict[str, str] | None) -> str | None:
    if mapping is not None:
        return mapping.get(name)
    return CLASS_ALIASES.get(name.lower())


def _resolve_classes(found: dict[str, str | None], where: Path, mapping: dict[str, str] | None):
    unknown = sorted(name for name, canon in found.items() if canon is None)
    if unknown:
        accepted = (
            ", ".join(sorted(mapping)) if mapping is not None else ", ".join(sorted(CLASS_ALIASES))
        )
        raise PitguardError(
            f"{where}: unknown class name(s) {', '.join(unknown)}; accepted: {accepted}. "
            "Rename the folders or labels, or map them: --classes NAME=clean,NAME=pit for data "
            "audit, data split and eval, --set data.classes=NAME=clean,NAME=pit for train"
        )
    present = {c for c in found.values() if c is not None}
    classes = tuple(c for c in CANONICAL_ORDER if c in present)
    if "clean" not in present or "pit" not in present:
        raise PitguardError(
            f"{where}: found only class(es) {', '.join(sorted(present)) or 'none'}; "
            "pitguard needs both clean and pit crops (folders cherry_clean/ and cherry_pit/, "
            "or labels clean and pit)"
        )
    return classes


def _list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    images: list[Path] = []
    other: list[Path] = []
    for p in sorted(folder.iterdir()):
        # Not only regular files: an image-named pipe, device or broken link is listed by the
        # reader as a file it did not read, never silently left out.
        if not p.is_dir():
            (images if p.suffix.lower() in IMAGE_SUFFIXES else other).append(p)
    return images, other


def find_dataset(path: str | Path, class_mapping: dict[str, str] | None = None) -> DatasetIndex:
    """Index the crops at ``path`` (a class-folder dir, a split-folder dir, or a CSV manifest)."""
    root = Path(path)
    if not root.exists():
        raise PitguardError(
            f"{root}: no such file or folder; give a folder of class folders "
            "(DATA/cherry_clean, DATA/cherry_pit), of split folders (DATA/train/<class>), "
            "or a CSV manifest with columns path,label"
        )
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise PitguardError(
                f"{root}: a file was given but it is not a .csv manifest; "
                "give a folder of class folders or a CSV with columns path,label"
            )
        return _from_manifest(root, class_mapping)

    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise PitguardError(
            f"{root}: no class folders inside; expected DATA/cherry_clean and DATA/cherry_pit "
            "(or clean/pit/maybe), or split folders DATA/train/<class>"
        )
    names = {p.name.lower() for p in subdirs}
    if names & set(KNOWN_SPLITS) and not names & set(CLASS_ALIASES):
        return _from_split_folders(root, subdirs, class_mapping)
    return _from_folders(root, subdirs, class_mapping, split=None)


def _from_folders(root, subdirs, mapping, split) -> DatasetIndex:
    found = {f.name: _canonical(f.name, mapping) for f in subdirs}
    classes = _resolve_classes(found, root, mapping)
    items: list[Item] = []
    ignored: list[Path] = []
    for folder in subdirs:
        images, other = _list_images(folder)
        ignored += other
        if not images:
            raise PitguardError(
                f"{folder}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                "add crops or remove the folder"
            )
        label = classes.index(found[folder.name])  # type: ignore[arg-type]
        items += [Item(p, label, split) for p in images]
    return DatasetIndex(
        root,
        "folders" if split is None else "splits",
        classes,
        items,
        dict(found),
        ignored,  # type: ignore[arg-type]
    )


def _from_split_folders(root: Path, subdirs, mapping) -> DatasetIndex:
    parts = [
        _from_folders(root, sorted(p for p in s.iterdir() if p.is_dir()), mapping, s.name)
        if any(p.is_dir() for p in s.iterdir())
        else None
        for s in subdirs
    ]
    empty = [s for s, part in zip(subdirs, parts, strict=True) if part is None]
    if empty:
        raise PitguardError(
            f"{empty[0]}: split folder has no class folders; expected {empty[0]}/cherry_clean "
            "and cherry_pit, or remove it"
        )
    classes = tuple(c for c in CANONICAL_ORDER if any(c in p.classes for p in parts if p))
    items: list[Item] = []
    mapping_applied: dict[str, str] = {}
    ignored: list[Path] = []
    for part in parts:
        assert part is not None
        mapping_applied.update(part.class_mapping)
        ignored += part.ignored
        items += [
            Item(it.path, classes.index(part.classes[it.label]), it.split) for it in part.items
        ]
    return DatasetIndex(root, "splits", classes, items, mapping_applied, ignored)


def _from_manifest(csv_path: Path, mapping) -> DatasetIndex:
    rows = read_manifest(csv_path)
    found = {r.label: _canonical(r.label, mapping) for r in rows}
    classes = _resolve_classes(found, csv_path, mapping)
    items = [
        Item(r.path, classes.index(found[r.label]), r.split, r.group)  # type: ignore[arg-type]
        for r in rows
    ]
    return DatasetIndex(csv_path.parent.absolute(), "manifest", classes, items, dict(found))  # type: ignore[arg-type]
