import numpy as np
import pytest
import torch
from PIL import Image

from pitguard.core.errors import PitguardError
from pitguard.data.layout import find_dataset
from pitguard.data.load import DecodeOptions, load_crops
from tests.conftest import random_crop, write_png


@pytest.fixture
def messy(tmp_path):
    """Two good crops per class plus one of each kind of bad file."""
    root = tmp_path / "messy"
    for cls in ("clean", "pit"):
        for i in range(2):
            write_png(root / cls / f"ok{i}.png", random_crop(i))
    (root / "clean" / "empty.png").write_bytes(b"")
    good = (root / "clean" / "ok0.png").read_bytes()
    (root / "clean" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "pit" / "text.png").write_text("not an image")
    gray = random_crop(5)[..., 0]
    write_png(root / "pit" / "gray.png", gray)
    rgba = np.dstack([random_crop(6), np.full((128, 128), 128, np.uint8)])
    write_png(root / "pit" / "alpha.png", rgba)
    Image.fromarray(random_crop(7)).convert("P").save(root / "pit" / "palette.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "pit" / "deep.png")
    write_png(root / "pit" / "small.png", random_crop(8, size=100))
    Image.fromarray(random_crop(9)).save(root / "clean" / "jpeg.jpg", quality=95)
    return root


def by_path(crops):
    return {p.path: p for p in crops.problems}


def test_defaults_skip_and_list_every_bad_file(messy):
    crops = load_crops(find_dataset(messy), cache=False)
    problems = by_path(crops)
    assert sorted(crops.paths) == [
        "clean/jpeg.jpg",
        "clean/ok0.png",
        "clean/ok1.png",
        "pit/ok0.png",
        "pit/ok1.png",
    ]
    assert problems["clean/empty.png"].reason == "empty file (0 bytes)"
    assert problems["clean/truncated.png"].kind == "unreadable"
    assert problems["pit/text.png"].reason == (
        "cannot decode: not an image file PIL can read (PNG/JPEG/BMP/TIFF)"
    )
    assert problems["pit/gray.png"].reason == "mode L, expected RGB"
    assert problems["pit/gray.png"].action == "skipped (use modes=convert)"
    assert problems["pit/alpha.png"].reason == "mode RGBA, expected RGB"
    assert problems["pit/palette.png"].reason == "mode P, expected RGB"
    assert problems["pit/deep.png"].reason.startswith("mode I")
    assert problems["pit/small.png"].reason == "size 100x100, expected 128x128"
    assert crops.images.dtype == torch.uint8 and crops.images.shape == (5, 3, 128, 128)
    assert crops.labels.tolist() == [0, 0, 0, 1, 1]


def test_convert_rules(messy):
    crops = load_crops(
        find_dataset(messy), DecodeOptions(modes="convert", sizes="pad"), cache=False
    )
    img = dict(zip(crops.paths, crops.images, strict=True))
    gray = random_crop(5)[..., 0]
    assert torch.equal(img["pit/gray.png"][1], torch.from_numpy(gray))
    alpha = img["pit/alpha.png"].numpy().transpose(1, 2, 0)
    assert np.array_equal(alpha, (random_crop(6).astype(np.uint16) * 128 // 255).astype(np.uint8))
    assert torch.equal(img["pit/deep.png"][0], torch.from_numpy(gray))
    small = img["pit/small.png"]
    assert small.shape == (3, 128, 128) and small[:, :14].sum() == 0  # padded with background
    actions = {p.path: p.action for p in crops.problems}
    assert actions["pit/small.png"] == "100x100->128x128 (pad)"
    assert actions["pit/gray.png"] == "L->RGB (gray replicated)"
    assert "clean/empty.png" not in crops.paths


def test_resize_rule(messy):
    crops = load_crops(find_dataset(messy), DecodeOptions(sizes="resize"), cache=False)
    assert "pit/small.png" in crops.paths


def test_strict_stops_at_first_bad_file(messy):
    with pytest.raises(
        PitguardError, match=r"clean/empty.png: empty file \(0 bytes\) \(strict mode"
    ):
        load_crops(find_dataset(messy), DecodeOptions(strict=True), cache=False)


def test_bad_option_names_the_choices():
    with pytest.raises(PitguardError, match=r"modes='gray': use one of skip, convert"):
        DecodeOptions(modes="gray").validate()


def test_cache_returns_the_same_crops_and_problems(messy, tmp_path):
    index = find_dataset(messy)
    first = load_crops(index, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").iterdir())) == 1
    second = load_crops(index, cache_dir=tmp_path / "c")
    assert torch.equal(first.images, second.images)
    assert first.paths == second.paths and first.problems == second.problems


def test_cache_key_follows_content(messy, tmp_path):
    index = find_dataset(messy)
    load_crops(index, cache_dir=tmp_path / "c")
    write_png(messy / "pit" / "ok1.png", random_crop(99))
    changed = load_crops(index, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").iterdir())) == 2
    fresh = load_crops(index, cache=False)
    assert torch.equal(changed.images, fresh.images)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    import io

    from PIL import Image

    from pitguard.data import load as load_module
    from pitguard.data.load import decode_bytes

    monkeypatch.setattr(load_module, "MAX_PIXELS", 200 * 200)  # a 300x300 "bomb" in miniature
    buf = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buf, format="PNG")
    opened = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: opened.append(1) or real_load(self))
    arr, problem = decode_bytes(buf.getvalue(), "bomb.png", DecodeOptions(sizes="resize"))
    assert arr is None and problem is not None
    assert problem.reason == "300x300 px is no crop (limit 40,000 px); not decoded"
    assert opened == []  # no pixel was decoded


def test_a_multi_frame_image_is_listed_not_guessed(tmp_path):
    import io

    from PIL import Image

    from pitguard.data.load import decode_bytes

    buf = io.BytesIO()
    frames = [Image.new("RGB", (128, 128), (i * 40, 0, 0)) for i in range(3)]
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    arr, problem = decode_bytes(buf.getvalue(), "stack.tif", DecodeOptions())
    assert arr is None and problem.reason == "3 frames, expected one image"


def test_the_cache_is_shown_and_cleared_and_nothing_else_is_touched(
    synth_dir, tmp_path, capsys, monkeypatch
):
    from pitguard.cli import main
    from pitguard.data.layout import find_dataset
    from pitguard.data.load import load_crops

    monkeypatch.setenv("PITGUARD_CACHE", str(tmp_path / "cache"))
    load_crops(find_dataset(synth_dir))
    (tmp_path / "cache" / "notes.txt").write_text("mine")
    assert main(["data", "cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "1 cached dataset(s)" in out and "crops-" in out
    assert main(["data", "cache", "clear"]) == 0
    assert "removed 1 cached dataset(s)" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["notes.txt"]


@pytest.fixture
def with_special_files(tmp_path):
    """Two good crops per class, a link to a good crop, and files that are no crops to read: a
    named pipe (opening it waits for a writer), a link to /dev/zero (it never ends) and a
    sparse file past the size cap."""
    import os

    from pitguard.data.load import MAX_CROP_BYTES

    root = tmp_path / "special"
    for cls in ("clean", "pit"):
        for i in range(2):
            write_png(root / cls / f"ok{i}.png", random_crop(i + 10 * len(cls)))
    (root / "pit" / "link.png").symlink_to(root / "clean" / "ok0.png")
    os.mkfifo(root / "pit" / "pipe.png")
    (root / "pit" / "zero.png").symlink_to("/dev/zero")
    with (root / "clean" / "huge.png").open("wb") as fh:
        fh.truncate(MAX_CROP_BYTES + 1)
    return root


class _Deadline:
    """Fail instead of hanging when a read blocks (a FIFO) or never ends (/dev/zero)."""

    def __enter__(self):
        import signal

        def stop(*_):
            raise TimeoutError("still reading after 60 s")

        self.old = signal.signal(signal.SIGALRM, stop)
        signal.alarm(60)

    def __exit__(self, *exc):
        import signal

        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


def test_only_regular_files_are_read_and_the_others_are_listed(with_special_files):
    with _Deadline():
        crops = load_crops(find_dataset(with_special_files), cache=False)
    assert sorted(crops.paths) == [
        "clean/ok0.png",
        "clean/ok1.png",
        "pit/link.png",
        "pit/ok0.png",
        "pit/ok1.png",
    ]
    reasons = {p.path: p.reason for p in crops.problems}
    assert reasons["pit/pipe.png"] == "not a regular file (a named pipe); not read"
    assert reasons["pit/zero.png"] == "not a regular file (a character device); not read"
    assert reasons["clean/huge.png"].endswith(
        "bytes is no crop (the limit is 67,108,864); not read"
    )
    assert all(p.action == "skipped" for p in crops.problems) and len(crops.problems) == 3


def test_audit_lists_special_files_without_opening_them(with_special_files):
    from pitguard.data.audit import audit

    with _Deadline():
        report = audit(with_special_files)
    unreadable = {p["path"] for p in report["unreadable"]}
    assert {"pit/pipe.png", "pit/zero.png", "clean/huge.png"} <= unreadable
