"""Tests for pitguard.data.manifest: the one reader and writer of split manifests."""

import pytest

from pitguard.data.manifest import ManifestRow, read_manifest, write_manifest
from pitguard.errors import PitguardError


def test_round_trip_keeps_rows_and_writes_paths_relative_to_the_manifest(tmp_path):
    crops = tmp_path / "crops"
    rows = [
        ManifestRow(crops / "a.png", "clean", "train", "g1"),
        ManifestRow(crops / "b.png", "pit", "test", None),
        ManifestRow(crops / "c.png", "pit", None, None),
    ]
    manifest = write_manifest(tmp_path / "runs" / "r" / "split.csv", rows)
    lines = manifest.read_text().splitlines()
    assert lines[0] == "path,label,split,group"
    assert lines[1] == "../../crops/a.png,clean,train,g1" and lines[3].endswith(",pit,,")
    assert read_manifest(manifest) == [
        ManifestRow(r.path.resolve(), r.label, r.split, r.group) for r in rows
    ]
    assert not list(manifest.parent.glob(".*tmp*"))  # written atomically, nothing left behind


def test_paths_through_a_symlinked_folder_keep_the_links_name(tmp_path):
    """A run beside ../shared (a symlink, as on CI) stores ../shared/..., not the link's target."""
    target = tmp_path / "elsewhere" / "data"
    target.mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "shared").symlink_to(target)
    crop = tmp_path / "work" / "main" / ".." / "shared" / "a.png"
    manifest = write_manifest(
        tmp_path / "work" / "main" / "runs" / "r" / "split.csv", [ManifestRow(crop, "pit")]
    )
    assert manifest.read_text().splitlines()[1].startswith("../../../shared/a.png,pit")
    (read,) = read_manifest(manifest)
    assert read.path == tmp_path / "work" / "shared" / "a.png"  # the link's name, not its target


def test_errors_name_the_file_line_and_fix(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("file,label\nx.png,pit\n")
    with pytest.raises(PitguardError, match=r"m.csv: manifest lacks column\(s\) path; found file"):
        read_manifest(bad)
    bad.write_text("path,label\n")
    with pytest.raises(PitguardError, match=r"m.csv: manifest has no rows"):
        read_manifest(bad)
    bad.write_text("path,label\na.png,pit\n,clean\n")
    with pytest.raises(PitguardError, match=r"m.csv:3: empty path; fill it in or delete the row"):
        read_manifest(bad)
