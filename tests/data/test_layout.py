from pathlib import Path

import pytest

from pitguard.core.errors import PitguardError
from pitguard.data.layout import find_dataset, parse_class_mapping
from tests.conftest import random_crop, write_png


def make_folders(root: Path, names: dict[str, int]) -> Path:
    for name, count in names.items():
        for i in range(count):
            write_png(root / name / f"{name}_{i}.png", random_crop(i))
    return root


def test_class_folders_map_aliases_to_canonical_order(tmp_path):
    index = find_dataset(make_folders(tmp_path, {"cherry_pit": 2, "cherry_clean": 3}))
    assert index.layout == "folders"
    assert index.classes == ("clean", "pit")
    assert index.class_mapping == {"cherry_clean": "clean", "cherry_pit": "pit"}
    assert index.counts() == {"clean": 3, "pit": 2}


def test_maybe_folder_makes_three_classes(tmp_path):
    index = find_dataset(make_folders(tmp_path, {"clean": 2, "pit": 2, "maybe": 1}))
    assert index.classes == ("clean", "maybe", "pit")
    assert index.pit_index == 2


def test_split_folders(tmp_path):
    make_folders(tmp_path / "train", {"clean": 2, "pit": 2})
    make_folders(tmp_path / "val", {"clean": 1, "pit": 1})
    index = find_dataset(tmp_path)
    assert index.layout == "splits"
    assert index.splits() == ["train", "val"]
    assert index.subset("val").counts() == {"clean": 1, "pit": 1}


def test_manifest_with_split_and_group(tmp_path):
    make_folders(tmp_path / "imgs", {"a": 2})
    (tmp_path / "m.csv").write_text(
        "path,label,split,group\nimgs/a/a_0.png,clean,train,g1\nimgs/a/a_1.png,pit,test,\n"
    )
    index = find_dataset(tmp_path / "m.csv")
    assert index.layout == "manifest"
    assert [it.split for it in index.items] == ["train", "test"]
    assert [it.group for it in index.items] == ["g1", None]
    assert index.relpath(index.items[0].path) == "imgs/a/a_0.png"


def test_unknown_class_lists_found_and_accepted(tmp_path):
    make_folders(tmp_path, {"cherry_clean": 1, "weird": 1})
    with pytest.raises(
        PitguardError, match=r"unknown class name\(s\) weird; accepted: .*cherry_pit"
    ):
        find_dataset(tmp_path)


def test_explicit_mapping_accepts_other_names(tmp_path):
    make_folders(tmp_path, {"good": 1, "bad": 1})
    index = find_dataset(tmp_path, parse_class_mapping("good=clean,bad=pit"))
    assert index.classes == ("clean", "pit")


def test_bad_mapping_spec_names_the_fix():
    with pytest.raises(
        PitguardError, match=r"--classes: cannot read 'good:clean'; write SOURCE=CLASS"
    ):
        parse_class_mapping("good:clean")


def test_missing_folder(tmp_path):
    with pytest.raises(
        PitguardError, match=r"nope: no such file or folder; give a folder of class"
    ):
        find_dataset(tmp_path / "nope")


def test_one_class_only(tmp_path):
    make_folders(tmp_path, {"cherry_clean": 2})
    with pytest.raises(PitguardError, match=r"found only class\(es\) clean; pitguard needs both"):
        find_dataset(tmp_path)


def test_empty_class_folder(tmp_path):
    make_folders(tmp_path, {"cherry_clean": 1})
    (tmp_path / "cherry_pit").mkdir()
    with pytest.raises(PitguardError, match=r"cherry_pit: class folder holds no images"):
        find_dataset(tmp_path)


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(PitguardError, match=r"no class folders inside; expected DATA/cherry_clean"):
        find_dataset(tmp_path)


def test_manifest_missing_columns(tmp_path):
    (tmp_path / "m.csv").write_text("file,class\na.png,clean\n")
    with pytest.raises(PitguardError, match=r"manifest lacks column\(s\) label, path"):
        find_dataset(tmp_path / "m.csv")


def test_non_image_files_are_listed_not_lost(tmp_path):
    make_folders(tmp_path, {"clean": 1, "pit": 1})
    (tmp_path / "clean" / "notes.txt").write_text("x")
    index = find_dataset(tmp_path)
    assert [p.name for p in index.ignored] == ["notes.txt"]
