"""Tests for pitguard.data.manifest: the one reader and writer of split manifests."""

import codecs

import pytest

from pitguard.core.errors import PitguardError
from pitguard.data.manifest import ManifestRow, read_manifest, write_manifest


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


def test_a_manifest_saved_with_a_byte_order_mark_is_read(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(codecs.BOM_UTF8 + b"path,label,split\na.png,pit,train\nb.png,clean,val\n")
    rows = read_manifest(manifest)
    assert [(r.path.name, r.label, r.split) for r in rows] == [
        ("a.png", "pit", "train"),
        ("b.png", "clean", "val"),
    ]


@pytest.mark.parametrize(
    ("second", "what"),
    [("./crops/a.png,clean,train", "labelled clean"), ("link.png,pit,test", "in part test")],
)
def test_one_crop_under_two_labels_or_parts_is_refused_naming_both_lines(tmp_path, second, what):
    (tmp_path / "crops").mkdir()
    (tmp_path / "crops" / "a.png").write_bytes(b"crop")
    (tmp_path / "link.png").symlink_to(tmp_path / "crops" / "a.png")  # the same file
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,split\ncrops/a.png,pit,train\nb.png,clean,val\n{second}\n")
    with pytest.raises(PitguardError) as err:
        read_manifest(manifest)
    assert str(err.value).startswith(
        f"{manifest}:4: {second.split(',')[0]} is the crop of line 2 (crops/a.png, labelled pit "
        f"in part train), here {what}"
    )
    assert "give each crop one row" in str(err.value)


def test_train_refuses_a_manifest_with_a_crop_in_two_parts(tmp_path, capsys):
    from pitguard.cli import main
    from pitguard.data.synth import synthesize

    crops = tmp_path / "crops"
    synthesize(crops, count=8, seed=1)
    files = sorted(crops.rglob("*.png"))
    lines = [f"{p.relative_to(tmp_path)},{p.parent.name},train" for p in files]
    lines.append(f"{files[0].relative_to(tmp_path)},{files[0].parent.name},val")  # leaked
    manifest = tmp_path / "split.csv"
    manifest.write_text("path,label,split\n" + "\n".join(lines) + "\n")
    out = tmp_path / "run"
    argv = ["train", "--recipe", "small-fast", "--data", str(manifest), "--out", str(out)]
    assert main([*argv, "--set", "model.name=pitguard_tiny"]) == 2
    err = capsys.readouterr().err
    assert f"{manifest}:{len(files) + 2}: " in err and "is the crop of line 2" in err
    assert not out.exists()
