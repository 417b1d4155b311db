"""The bundle's manifest, ``bundle.json``: this module is its one reader and writer, torch-free.

A bundle is a folder: ``model.safetensors`` (the deploy module's weights), ``model.onnx`` (and
``model.int8.onnx``, ``model.fp16.onnx``), each taking float crops in [0, 1], (N, 3, H, W), and
returning logits, p(pit) and the route id of :class:`pitguard.runtime.routes.Route`, and
``bundle.json``, which says what they are.

What ``bundle.json`` says is proved against the files before a bundle is used: each file's
sha256 and, in the file itself, the policy and input guard it was exported with (an INT8 or
FP16 graph holds thresholds certified on its own scores, stated under its own key). A graph is
proved when it is loaded (:func:`prove_graph`), from the metadata ONNX Runtime reads with it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from pitguard.core.errors import PitguardError
from pitguard.core.files import file_sha256, read_json, remembered_sha256, write_json
from pitguard.runtime.certificate import prove_guarantee
from pitguard.runtime.contract import (
    BUNDLE_SCHEMA,
    compare_contract,
    parsed_record,
)
from pitguard.runtime.routes import Route

log = logging.getLogger(__name__)

# 2: the input contract may hold a centre crop; 3: a sha256 per file; 4: unfolded normalization,
# per-graph policies, the input guard held by every file; 5: every file holds the contract
# (classes, pit and maybe indices, input preprocessing, architecture) and the schema it was
# written for, so no field the runtime acts on rests on bundle.json's word alone
READABLE_BUNDLE_SCHEMAS = (1, 2, 3, 4, 5)
HASHED_SCHEMA = 3  # from this schema on, every file's sha256 is recorded and checked
STAMPED_SCHEMA = 4  # from this schema on, every file holds the input guard it ships with
GUARD_METADATA_KEY = "pitguard.input_guard"  # in safetensors metadata and ONNX metadata_props
POLICY_METADATA_KEY = "pitguard.policy"  # in ONNX metadata_props: the policy the graph holds
# in safetensors metadata: the second look (views and policy) the weights ship with
SECOND_LOOK_METADATA_KEY = "pitguard.second_look"
SECOND_LOOK_FILE = "onnx_second_look"  # bundle.json files key of a cascade's second-stage graph
# bundle.json files key of the second stage's weights, when it is another run's network
SECOND_LOOK_WEIGHTS = "second_look_weights"
BUNDLE_JSON = "bundle.json"
INPUT_NAME = "crops"  # the graph's input and outputs, as ONNX names them
OUTPUT_NAMES = ("logits", "p_pit", "route")
OUTPUTS = dict(
    zip(
        OUTPUT_NAMES,
        (
            "(N, classes)",
            "(N,) calibrated",
            "(N,) " + ", ".join(f"{r.value} {r.label}" for r in Route),
        ),
        strict=True,
    )
)
REQUIRED_KEYS = ("model_name", "model_kwargs", "classes", "input", "policy", "files")
POLICY_KEYS = ("temperature", "t_low", "t_high")  # policy values the graph holds as buffers


def is_bundle(folder: str | Path) -> bool:
    return (Path(folder) / BUNDLE_JSON).is_file()


def read_bundle_json(bundle: str | Path) -> dict:
    path = Path(bundle) / BUNDLE_JSON
    meta = read_json(path) if path.is_file() else None
    if meta is not None:
        meta.pop("trust", None)  # what open_bundle proved, never what a file says
    if meta is None:
        raise PitguardError(f"{bundle}: no bundle.json; give a folder written by pitguard export")
    if meta.get("schema_version") not in READABLE_BUNDLE_SCHEMAS:
        readable = ", ".join(str(v) for v in READABLE_BUNDLE_SCHEMAS)
        raise PitguardError(
            f"{path}: bundle schema {meta.get('schema_version')}, this pitguard reads {readable}; "
            "use the pitguard version that wrote it"
        )
    missing = [k for k in REQUIRED_KEYS if not meta.get(k)]
    if missing:
        raise PitguardError(
            f"{path}: lacks {', '.join(missing)}; a bundle.json is written by pitguard export, "
            "export the bundle again"
        )
    return meta


def write_bundle_json(folder: str | Path, meta: dict) -> None:
    """Written atomically, with the schema version, the outputs' description and the sha256 of
    every file it lists filled in."""
    folder = Path(folder)
    digests = {name: file_sha256(folder / name) for name in (meta.get("files") or {}).values()}
    write_json(
        folder / BUNDLE_JSON,
        {"schema_version": BUNDLE_SCHEMA, "outputs": OUTPUTS, **meta, "sha256": digests},
    )


def open_bundle(bundle: str | Path, trust=None) -> dict:
    """``bundle.json`` read and proved: its files inside the bundle and unchanged since export,
    its classes, policy and input guard the ones the weights hold. Each graph is proved when it
    is loaded (:func:`prove_graph`).

    ``trust`` (a public key file, a folder of them, or keys from
    :func:`pitguard.runtime.trust.trusted_keys`) refuses a bundle that no trusted key signed;
    then every file is hashed afresh, and ``meta["trust"]`` names the key that signed it
    (None without ``trust``)."""
    signed_by = _signed_by(bundle, trust) if trust else None
    meta = read_bundle_json(bundle)
    meta["trust"] = signed_by
    folder = Path(bundle)
    where = folder / BUNDLE_JSON
    files = meta.get("files") or {}
    digests = meta.get("sha256") or {}
    digest_of = file_sha256 if signed_by else remembered_sha256
    for key, name in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise PitguardError(
                f"{where}: files.{key} is {name!r}, not a file of this bundle; a bundle names "
                "only files inside its own folder (export it again)"
            )
        path = folder / name
        if not path.is_file():
            raise PitguardError(
                f"{path}: listed in {BUNDLE_JSON} ({key}) but missing; export again"
            )
        # digests that are there are checked whatever schema bundle.json states
        if meta.get("schema_version", 0) >= HASHED_SCHEMA or digests:
            if name not in digests:
                raise PitguardError(f"{where}: no sha256 for {name}; export the bundle again")
            if digest_of(path) != digests[name]:
                raise PitguardError(
                    f"{path}: its sha256 is not the one {BUNDLE_JSON} records: the file was "
                    "changed or replaced after export; restore it or export the bundle again"
                )
    _check_against_weights(folder, meta)
    _prove_guarantees(where, meta)
    return meta


def _prove_guarantees(where: Path, meta: dict) -> None:
    """Each stated guarantee (the run's, an INT8 or FP16 graph's own) is what its recorded
    counts certify."""
    stated = meta.get("guarantee") or {}
    prove_guarantee(where, "guarantee", stated, meta.get("calibration"))
    for key in ("int8", "fp16"):
        own = (meta.get(key) or {}).get("guarantee") or {}
        prove_guarantee(where, f"{key}.guarantee", {**stated, **own}, own)


def _signed_by(bundle: str | Path, trust) -> dict:
    from pitguard.runtime.trust import trusted_keys, verify_bundle

    key = verify_bundle(bundle, trusted_keys(trust))
    return {"key_id": key.key_id, "key": str(key.path)}


def _check_against_weights(folder: Path, meta: dict) -> None:
    """Refuse a bundle.json that misstates its classes, or what its weights file holds."""
    where = folder / BUNDLE_JSON
    classes, policy = list(meta.get("classes") or []), meta.get("policy") or {}
    pit_index = policy.get("pit_index")
    if "pit" not in classes or classes.index("pit") != pit_index:
        raise PitguardError(
            f"{where}: classes {classes} put pit at index "
            f"{classes.index('pit') if 'pit' in classes else 'none'}, but the graph's pit output "
            f"is index {pit_index}; restore the classes as exported"
        )
    if len(classes) != (meta.get("model_kwargs") or {}).get("num_classes", len(classes)):
        raise PitguardError(
            f"{where}: {len(classes)} classes for a {meta['model_kwargs']['num_classes']}-class model"
        )
    name = (meta.get("files") or {}).get("weights")
    if name:
        held, stamps = _held_by_weights(folder / name)
        _compare_policy(where, name, policy, held)
        compare_contract(where, name, meta, stamps)
        # a file that holds a guard record is compared, whatever schema bundle.json states
        if meta.get("schema_version", 0) >= STAMPED_SCHEMA or GUARD_METADATA_KEY in stamps:
            _compare_guard(where, name, meta.get("input_guard"), stamps.get(GUARD_METADATA_KEY))
        _compare_second_look(where, name, meta.get("second_look"), stamps, meta["files"])


def stated_policy(meta: dict, file_key: str) -> dict:
    """The policy ``bundle.json`` states for one file: an INT8 or FP16 graph's own thresholds
    under its key (``int8``, ``fp16``), the run's policy for the others."""
    own = (meta.get(file_key.removeprefix("onnx_")) or {}) if file_key.startswith("onnx_") else {}
    return own.get("policy") or meta.get("policy") or {}


def prove_graph(bundle: str | Path, meta: dict, file_key: str, stamps: dict, dims: list) -> None:
    """Refuse a graph whose held policy, input guard or input size ``bundle.json`` misstates.

    ``stamps`` is the graph's metadata and ``dims`` its input shape, as ONNX Runtime read them.
    """
    folder = Path(bundle)
    where, name = folder / BUNDLE_JSON, meta["files"][file_key]
    size = int((meta.get("input") or {}).get("size", 0))
    if len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]) and dims[2:] != [size, size]:
        raise PitguardError(
            f"{where}: input size {size} px, but {name} takes {dims[2]}x{dims[3]} crops; "
            "restore the input contract as exported"
        )
    if meta.get("schema_version", 0) < STAMPED_SCHEMA and POLICY_METADATA_KEY not in stamps:
        held = _held_by_old_graph(folder / name)
    else:
        if POLICY_METADATA_KEY not in stamps:
            raise PitguardError(f"{where}: {name} holds no policy record; export again")
        held = {
            k: np.asarray(v)
            for k, v in parsed_record(where, name, stamps[POLICY_METADATA_KEY]).items()
        }
        _compare_guard(where, name, meta.get("input_guard"), stamps.get(GUARD_METADATA_KEY))
    compare_contract(where, name, meta, stamps)
    _compare_policy(where, name, stated_policy(meta, file_key), held)


def _held_by_weights(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as fh:
            names = set(fh.keys())
            held = {k: fh.get_tensor(f"policy.{k}") for k in POLICY_KEYS if f"policy.{k}" in names}
            return held, dict(fh.metadata() or {})
    except Exception as err:  # safetensors raises its own error classes for a damaged file
        raise PitguardError(
            f"{path}: not a readable safetensors file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120] if str(err) else 'damaged'}); export the bundle again"
        ) from err


def _held_by_old_graph(path: Path) -> dict[str, np.ndarray]:
    """The policy a graph exported before schema 4 holds, read from its initializers."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise PitguardError(
            f"{path}: exported by an older pitguard, whose graphs can be checked only with the "
            "onnx package; export the bundle again with this pitguard"
        ) from None
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # protobuf's decode errors have no common base
        raise PitguardError(
            f"{path}: not a readable ONNX graph ({type(err).__name__}); export the bundle again"
        ) from err
    inits = {i.name: i for i in graph.initializer}
    return {
        k: numpy_helper.to_array(inits[f"policy.{k}"])
        for k in POLICY_KEYS
        if f"policy.{k}" in inits
    }


def _compare_policy(where: Path, name: str, stated: dict, held: dict[str, np.ndarray]) -> None:
    """Each value the file holds equals the stated one in the file's own precision (an FP16
    graph holds fp16 numbers)."""
    for k, value in held.items():
        if k not in POLICY_KEYS:
            continue
        want = stated.get(k)
        dtype = value.dtype if value.dtype != np.float64 else np.float32
        if want is None or np.asarray(want, dtype=np.float64).astype(dtype) != value.astype(dtype):
            raise PitguardError(
                f"{where}: policy {k} is {want}, but {name} computes with {float(value):.9g}; "
                "thresholds live in the graph, so edit nothing: calibrate and export again"
            )


def _compare_guard(where: Path, name: str, stated: dict | None, stamp: str | None) -> None:
    """The input guard bundle.json states is the one exported with the file."""
    if stamp is None:
        raise PitguardError(f"{where}: {name} holds no input guard record; export again")
    if parsed_record(where, name, stamp) != stated:
        raise PitguardError(
            f"{where}: input_guard differs from the guard exported with {name} (edited or "
            "removed?); the guard is part of what the bundle proves: restore bundle.json or "
            "export again"
        )


MODEL_FACTS = ("model_name", "model_kwargs", "input", "weights_sha256")


def second_look_facts(look: dict | None) -> dict | None:
    """What a second look is made of (its views and policy, and another run's network where it
    has one): what its files hold and prove."""
    if look is None:
        return None
    facts = {"views": look.get("views"), "policy": look.get("policy")}
    model = look.get("model")
    if model is not None:
        facts["model"] = {k: model.get(k) for k in MODEL_FACTS}
    return facts


def _compare_second_look(
    where: Path, name: str, look: dict | None, stamps: dict, files: dict
) -> None:
    """The second look bundle.json states is the one the weights were exported with, and its
    own network's weights the ones exported."""
    stamp = stamps.get(SECOND_LOOK_METADATA_KEY)
    held = None if stamp is None else parsed_record(where, name, stamp)
    if held != second_look_facts(look):
        raise PitguardError(
            f"{where}: second_look differs from the one exported with {name} (edited, added or "
            "removed?); restore bundle.json or export again"
        )
    model = (look or {}).get("model")
    if model is None:
        return
    second = where.parent / str(files.get(SECOND_LOOK_WEIGHTS, ""))
    if not second.is_file() or remembered_sha256(second) != model.get("weights_sha256"):
        raise PitguardError(
            f"{where}: the second look's weights ({SECOND_LOOK_WEIGHTS}) are missing or not "
            "the ones exported; restore the bundle or export again"
        )


def second_look_stamp(look: dict | None) -> dict[str, str]:
    """The weights' metadata entry for a cascade's second look (none without one)."""
    facts = second_look_facts(look)
    return {} if facts is None else {SECOND_LOOK_METADATA_KEY: json.dumps(facts, sort_keys=True)}


def guard_stamp(guard: dict | None) -> dict[str, str]:
    """The metadata entry every file of a bundle holds: the input guard it ships with."""
    return {GUARD_METADATA_KEY: json.dumps(guard, sort_keys=True)}


def policy_stamp(held: dict[str, float]) -> dict[str, str]:
    """The metadata entry a graph holds beside its buffers: the policy values it computes with,
    readable where only ONNX Runtime is installed."""
    return {POLICY_METADATA_KEY: json.dumps(held, sort_keys=True)}


def make_bundle_readable(folder: Path) -> None:
    """Files 0644 and the folder 0755, whatever the umask: a line's service user reads (and
    hashes) the bundle it did not write."""
    for path in folder.iterdir():
        os.chmod(path, 0o644)
    os.chmod(folder, 0o755)
