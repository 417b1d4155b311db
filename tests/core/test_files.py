"""Tests for pitguard.core.files: writes appear whole or not at all; damaged JSON is an error."""

import json
import os

import pytest

from pitguard.core.errors import PitguardError
from pitguard.core.files import atomic_path, atomic_write_text, read_json, temp_name, write_json


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk gone")
    assert not target.exists() and os.listdir(tmp_path) == []


def test_a_stale_temporary_from_a_killed_run_is_replaced(tmp_path):
    folder = tmp_path / "bundle"
    temp_name(folder).mkdir()
    (temp_name(folder) / "junk").write_text("x")
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "bundle.json").write_text("{}")
    assert os.listdir(folder) == ["bundle.json"] and os.listdir(tmp_path) == ["bundle"]


def test_read_json_tells_missing_from_damaged(tmp_path):
    path = tmp_path / "policy.json"
    assert read_json(path) is None
    write_json(path, {"a": 1})
    assert read_json(path) == {"a": 1} and json.loads(path.read_text()) == {"a": 1}
    atomic_write_text(path, '{"a": ')
    with pytest.raises(PitguardError, match=r"policy.json: unreadable JSON .*rerun the step"):
        read_json(path)
    atomic_write_text(path, "[1, 2]")
    with pytest.raises(PitguardError, match=r"policy.json: not a JSON object"):
        read_json(path)


def test_files_written_atomically_are_readable_by_others(tmp_path):
    import torch
    from safetensors.torch import save_file

    from pitguard.core.files import atomic_write

    path = tmp_path / "model.safetensors"
    atomic_write(path, lambda tmp: save_file({"w": torch.zeros(2)}, str(tmp)))
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # safetensors alone writes 0600


def test_temporaries_of_a_killed_process_are_cleared_and_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    from pitguard.core.files import clear_stale_temps

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    stale = tmp_path / f".best.pt.tmp{dead_pid}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".last.pt.tmp{os.getppid()}"  # a running process's write
    live.write_bytes(b"in progress")
    keep = tmp_path / "model.safetensors"
    keep.write_bytes(b"weights")
    assert clear_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and keep.exists()


def test_a_resumed_run_starts_by_clearing_a_killed_save(trained_run, tmp_path):
    import subprocess
    import sys

    from pitguard.train.loop import train
    from tests.conftest import copy_run

    run = copy_run(trained_run, tmp_path / "run")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = run / "checkpoints" / f".best.pt.tmp{int(gone.stdout)}"
    stale.write_bytes(b"half")
    train(None, run, resume=True)
    assert not stale.exists()


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    from pitguard.core.files import hold_lock

    lock = tmp_path / ".lock"
    busy = r"runs/x \(a run folder\) is in use by pid \d+ on "
    with (
        hold_lock(lock, "runs/x (a run folder)"),
        pytest.raises(PitguardError, match=busy),
        hold_lock(lock, "runs/x (a run folder)"),
    ):
        pass
    with hold_lock(lock, "runs/x (a run folder)"):  # freed when the block ended
        pass


def test_an_output_that_is_an_input_is_refused_through_links(tmp_path):
    from pitguard.core.files import check_output_path

    crop = tmp_path / "a.png"
    crop.write_bytes(b"crop")
    (tmp_path / "link.png").symlink_to(crop)
    os.link(crop, tmp_path / "hard.png")
    for out in (crop, tmp_path / "link.png", tmp_path / "hard.png", tmp_path / "." / "a.png"):
        with pytest.raises(PitguardError) as err:
            check_output_path(out, inputs=[crop], flag="--json")
        assert str(err.value) == (
            f"--json {out}: is also an input of this command ({crop}); writing it would destroy "
            "that input. Give --json a new path"
        )
    assert check_output_path(tmp_path / "b.csv", inputs=[crop]) == tmp_path / "b.csv"


def test_an_output_inside_an_input_folder_or_a_protected_one_is_refused(tmp_path):
    from pitguard.core.files import check_output_path

    data, bundle = tmp_path / "data", tmp_path / "bundle"
    (data / "cherry_pit").mkdir(parents=True)
    bundle.mkdir()
    with pytest.raises(PitguardError, match=r"--out .*: lies inside the data folder .*data, which"):
        check_output_path(data / "cherry_pit" / "preds.csv", inputs=[data])
    with pytest.raises(PitguardError, match=r"lies inside a bundle folder \(.*bundle\); writing"):
        check_output_path(bundle / "bundle.json", forbidden_dirs=[(bundle, "a bundle folder")])
    with pytest.raises(PitguardError, match=r"--out .*data: is also an input"):
        check_output_path(data, inputs=[data])
    assert check_output_path(tmp_path / "preds.csv", inputs=[data], forbidden_dirs=[(bundle, "x")])


def test_a_full_disk_names_the_file_being_written(tmp_path):
    import errno

    from pitguard.core.files import atomic_write

    def full(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        atomic_write(tmp_path / "out.json", full)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "out.json")
    assert os.listdir(tmp_path) == []  # no partial file, no temporary


def test_a_remembered_digest_is_the_files_and_follows_any_write(tmp_path, monkeypatch):
    from pitguard.core.files import MEMO_ENV, MEMO_FILE, file_sha256, remembered_sha256

    monkeypatch.setenv(MEMO_ENV, str(tmp_path / "memo"))
    path = tmp_path / "model.onnx"
    path.write_bytes(b"a" * 1000)
    first = remembered_sha256(path)
    assert first == file_sha256(path) and (tmp_path / "memo" / MEMO_FILE).is_file()
    path.write_bytes(b"b" * 1000)  # same size, written again: its change time moves
    assert remembered_sha256(path) == file_sha256(path) != first
    replacement = tmp_path / "other"
    replacement.write_bytes(b"c" * 1000)
    import os

    os.replace(replacement, path)  # another file renamed onto the name: another inode
    assert remembered_sha256(path) == file_sha256(path)


def test_a_remembered_digest_is_read_from_the_memo_not_the_file(tmp_path, monkeypatch):
    from pitguard.core.files import MEMO_ENV, remembered_sha256

    monkeypatch.setenv(MEMO_ENV, str(tmp_path / "memo"))
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 4096)
    digest = remembered_sha256(path)
    calls = []
    monkeypatch.setattr("pitguard.core.files.file_sha256", lambda p: calls.append(p) or "")
    assert remembered_sha256(path) == digest and calls == []


def test_an_unwritable_memo_still_gives_the_digest(tmp_path, monkeypatch):
    from pitguard.core.files import MEMO_ENV, file_sha256, remembered_sha256

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(MEMO_ENV, str(blocker))
    path = tmp_path / "w.bin"
    path.write_bytes(b"y" * 10)
    assert remembered_sha256(path) == file_sha256(path)


def _folder(path, text):
    path.mkdir()
    (path / "f.txt").write_text(text)
    return path


def test_a_folder_replaced_is_exchanged_in_one_step(tmp_path):
    from pitguard.core.files import replace_folder

    dest, new = _folder(tmp_path / "bundle", "old"), _folder(tmp_path / "new", "new")
    old = replace_folder(new, dest)
    assert (dest / "f.txt").read_text() == "new"
    assert old is not None and (old / "f.txt").read_text() == "old"


def test_without_an_exchange_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    import os

    import pitguard.core.files as files

    dest, new = _folder(tmp_path / "bundle", "old"), _folder(tmp_path / "new", "new")
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real, calls = os.replace, []

    def second_fails(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(files.os, "replace", second_fails)
    with pytest.raises(OSError):
        files.replace_folder(new, dest)
    assert (dest / "f.txt").read_text() == "old" and (new / "f.txt").read_text() == "new"


def test_a_folder_put_where_nothing_was_needs_no_exchange(tmp_path):
    from pitguard.core.files import replace_folder

    new = _folder(tmp_path / "new", "new")
    assert replace_folder(new, tmp_path / "bundle") is None
    assert (tmp_path / "bundle" / "f.txt").read_text() == "new"


def test_a_folder_and_a_file_are_committed_together_or_not_at_all(tmp_path, monkeypatch):
    import pitguard.core.files as files

    dest = _folder(tmp_path / "calibration", "old report")
    policy = tmp_path / "policy.json"
    policy.write_text("old policy")
    files.commit_together(_folder(tmp_path / "new", "new report"), dest, policy, "new policy")
    assert (dest / "f.txt").read_text() == "new report" and policy.read_text() == "new policy"
    real = os.replace

    def file_rename_fails(a, b):
        if str(b) == str(policy):
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(files.os, "replace", file_rename_fails)
    with pytest.raises(OSError):
        files.commit_together(_folder(tmp_path / "newer", "newer report"), dest, policy, "x")
    assert (dest / "f.txt").read_text() == "new report" and policy.read_text() == "new policy"
    assert not list(tmp_path.glob(".policy.json.tmp*"))
