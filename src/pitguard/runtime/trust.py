"""Signed bundles: who exported a bundle, proved with an Ed25519 signature.

``bundle.json`` names every file of a bundle with its sha256 and states every field the runtime
acts on, so a signature over its exact bytes (``bundle.sig``) covers the whole bundle: a changed
file no longer matches its signed digest, a changed field no longer matches the signature.
Digests alone prove a bundle against accidents (a truncated copy, a file replaced by mistake);
someone who edits a file can write its new digest into ``bundle.json`` too. Only a key the
exporter holds, and the line trusts, proves it against that.

    pitguard keygen --out keys/                  # keys/signing.key (keep it), keys/signing.pub
    pitguard export RUN --out B --onnx --sign keys/signing.key
    Classifier(B, trust="keys/signing.pub")      # or a folder of .pub files: a keyring

With a trusted key, an unsigned bundle or one whose signature no trusted key verifies is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pitguard.core.errors import PitguardError

SIGNATURE_FILE = "bundle.sig"
PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"
ALGORITHM = "ed25519"
INTEGRITY_ONLY = (
    "sha256 digests only: they prove the bundle against accidents, not against someone who "
    "edits it (a trusted key refuses unsigned bundles)"
)


@dataclass(frozen=True)
class TrustedKey:
    key_id: str  # the first 16 hex digits of the sha256 of the raw public key
    path: Path
    key: object  # cryptography's Ed25519PublicKey


def keygen(out: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair in ``out``: ``signing.key`` (PKCS#8 PEM, readable by its owner
    alone) and ``signing.pub``. An existing pair is never overwritten."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    private, public = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    for path in (private, public):
        if path.exists():
            raise PitguardError(
                f"{path}: exists; a key pair is never overwritten (bundles signed with it would "
                "no longer verify): give --out a new folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def signing_key(private_key: str | Path):
    """The Ed25519 private key at ``private_key``, or an error naming the file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = _load_key(Path(private_key), private=True)
    if not isinstance(key, Ed25519PrivateKey):
        raise PitguardError(
            f"--sign {private_key}: not an Ed25519 private key; make one with pitguard keygen"
        )
    return key


def sign_bundle(folder: str | Path, private_key: str | Path) -> str:
    """Sign ``folder``'s bundle.json with the key at ``private_key``; writes bundle.sig and
    returns the key's id."""
    key = signing_key(private_key)
    folder = Path(folder)
    signature = key.sign((folder / "bundle.json").read_bytes())
    key_id = _key_id(key.public_key())
    record = {
        "algorithm": ALGORITHM,
        "key_id": key_id,
        "signed": "bundle.json",
        "signature": base64.b64encode(signature).decode(),
    }
    (folder / SIGNATURE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return key_id


def trusted_keys(trust: str | Path | list) -> list[TrustedKey]:
    """The public keys in ``trust``: a .pub file, a folder of them (a keyring), or a list of
    those or of keys already read."""
    paths: list[Path] = []
    read: list[TrustedKey] = []
    for given in trust if isinstance(trust, list | tuple) else [trust]:
        if isinstance(given, TrustedKey):
            read.append(given)
            continue
        item = Path(given)
        if item.is_dir():
            paths += sorted(item.glob("*.pub"))
        elif item.is_file():
            paths.append(item)
        else:
            raise PitguardError(f"--trust {item}: no such key file or folder")
    if not paths and not read:
        raise PitguardError(f"--trust {trust}: holds no .pub key; give signing.pub from keygen")
    keys = read
    for path in paths:
        key = _load_key(path, private=False)
        keys.append(TrustedKey(_key_id(key), path, key))
    return keys


def verify_bundle(folder: str | Path, keys: list[TrustedKey]) -> TrustedKey:
    """The trusted key whose signature of bundle.json is in bundle.sig; refuses an unsigned
    bundle, another key's signature and a signature that does not verify."""
    from cryptography.exceptions import InvalidSignature

    folder = Path(folder)
    sig_path = folder / SIGNATURE_FILE
    if not sig_path.is_file():
        raise PitguardError(
            f"{folder}: unsigned (no {SIGNATURE_FILE}) and a trusted key was given; export it "
            "with --sign KEY, or run without --trust"
        )
    try:
        record = json.loads(sig_path.read_text())
        signature = base64.b64decode(record["signature"], validate=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PitguardError(f"{sig_path}: unreadable signature ({err}); sign it again") from err
    if record.get("algorithm") != ALGORITHM:
        raise PitguardError(f"{sig_path}: algorithm {record.get('algorithm')!r}, not {ALGORITHM}")
    data = (folder / "bundle.json").read_bytes()
    for trusted in keys:
        try:
            trusted.key.verify(signature, data)  # type: ignore[attr-defined]
        except InvalidSignature:
            continue
        return trusted
    ids = ", ".join(k.key_id for k in keys)
    raise PitguardError(
        f"{folder}: its signature (key {record.get('key_id')}) is not verified by a trusted key "
        f"({ids}): bundle.json was changed after signing, or another key signed it"
    )


def _load_key(path: Path, private: bool):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = path.read_bytes()
        if private:
            return serialization.load_pem_private_key(data, password=None)
        key = serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as err:
        what = "private" if private else "public"
        raise PitguardError(
            f"{path}: not a readable {what} key ({str(err).splitlines()[0][:120]}); give the "
            f"signing.{'key' if private else 'pub'} that pitguard keygen wrote"
        ) from err
    if not isinstance(key, Ed25519PublicKey):
        raise PitguardError(f"{path}: not an Ed25519 public key; give signing.pub from keygen")
    return key


def _key_id(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
