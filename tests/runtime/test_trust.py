"""Signed bundles: a trusted key refuses an unsigned bundle, another key's signature and any
edit after signing; without a key the digests alone are checked, as before."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from pitguard.core.errors import PitguardError
from pitguard.runtime import Classifier
from pitguard.runtime.trust import SIGNATURE_FILE, keygen, sign_bundle


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    return keygen(tmp_path / "keys")


@pytest.fixture
def signed(made, keys, tmp_path) -> Path:
    copy = Path(shutil.copytree(made / "bundle", tmp_path / "signed"))
    sign_bundle(copy, keys[0])
    return copy


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys):
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(PitguardError, match="never overwritten"):
        keygen(private.parent)


def test_a_signed_bundle_loads_with_its_key_and_scores_as_before(made, signed, keys, expected):
    clf = Classifier(signed, device="cpu", trust=keys[1])
    assert clf.meta["trust"]["key_id"] and clf.meta["trust"]["key"] == str(keys[1])
    plain = Classifier(made / "bundle", device="cpu")
    assert plain.meta["trust"] is None
    crops = expected["crops"][:8]
    assert list(clf.classify(crops).routes) == list(plain.classify(crops).routes)
    # a keyring: a folder of public keys, one of which signed it
    assert Classifier(signed, device="cpu", trust=keys[1].parent).meta["trust"]


def test_an_unsigned_bundle_is_refused_with_a_key(made, keys):
    with pytest.raises(PitguardError, match=r"unsigned .*bundle\.sig"):
        Classifier(made / "bundle", device="cpu", trust=keys[1])


def test_another_keys_signature_is_refused(signed, tmp_path):
    _, other = keygen(tmp_path / "other")
    with pytest.raises(PitguardError, match="not verified by a trusted key"):
        Classifier(signed, device="cpu", trust=other)


def edit_threshold_and_rehash(folder: Path) -> None:
    """What someone who edits does: change a field and write the digests anew."""
    from pitguard.core.files import file_sha256

    meta = json.loads((folder / "bundle.json").read_text())
    meta["policy"]["t_low"] = meta["policy"]["t_low"] * 0.5
    meta["sha256"] = {n: file_sha256(folder / n) for n in meta["files"].values()}
    (folder / "bundle.json").write_text(json.dumps(meta))


def test_an_edit_after_signing_is_refused(signed, keys):
    edit_threshold_and_rehash(signed)
    with pytest.raises(PitguardError, match="changed after signing"):
        Classifier(signed, device="cpu", trust=keys[1])


def test_a_replaced_graph_with_its_digest_rewritten_is_refused(signed, keys):
    from pitguard.core.files import file_sha256

    graph = signed / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    meta = json.loads((signed / "bundle.json").read_text())
    meta["sha256"]["model.onnx"] = file_sha256(graph)
    (signed / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(PitguardError, match="changed after signing"):
        Classifier(signed, device="cpu", trust=keys[1])


def test_a_damaged_signature_file_is_named(signed, keys):
    (signed / SIGNATURE_FILE).write_text("{not json")
    with pytest.raises(PitguardError, match=f"{SIGNATURE_FILE}: unreadable signature"):
        Classifier(signed, device="cpu", trust=keys[1])


def test_a_key_file_that_is_no_key_is_named(signed, tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("hello")
    with pytest.raises(PitguardError, match=r"bad\.pub: not a readable public key"):
        Classifier(signed, device="cpu", trust=bad)
    with pytest.raises(PitguardError, match="no such key file or folder"):
        Classifier(signed, device="cpu", trust=tmp_path / "missing.pub")


def test_trusted_files_are_hashed_afresh_not_from_the_memo(signed, keys, monkeypatch):
    calls: list = []
    import pitguard.runtime.bundle as bundle_module

    real = bundle_module.file_sha256
    monkeypatch.setattr(bundle_module, "file_sha256", lambda p: calls.append(p) or real(p))
    Classifier(signed, device="cpu", trust=keys[1])
    assert {Path(p).name for p in calls} >= {"model.onnx", "model.safetensors"}
    assert np.all([Path(p).is_file() for p in calls])
