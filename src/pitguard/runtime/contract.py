"""The contract every file of a bundle holds (from schema 5): architecture, classes, the pit
and maybe outputs, the input preprocessing and the schema it was written for, written into the
weights' and graphs' metadata at export and compared with ``bundle.json`` on load, so no field
the runtime acts on rests on ``bundle.json``'s word alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pitguard.core.errors import PitguardError

log = logging.getLogger(__name__)

BUNDLE_SCHEMA = 5  # the schema bundles are written with (runtime.bundle reads 1 to this)
CONTRACT_SCHEMA = 5  # from this schema on, every file holds the contract (contract_facts)
CONTRACT_METADATA_KEY = "pitguard.contract"  # in safetensors metadata and ONNX metadata_props


def contract_facts(meta: dict) -> dict:
    """What every file of a bundle holds about how to use it: architecture, classes, the pit
    and maybe outputs, the input preprocessing, and the schema it was written for."""
    policy = meta.get("policy") or {}
    return {
        "schema": meta.get("schema_version", BUNDLE_SCHEMA),
        "model_name": meta.get("model_name"),
        "model_kwargs": meta.get("model_kwargs"),
        "classes": list(meta.get("classes") or []),
        "input": meta.get("input"),
        "pit_index": policy.get("pit_index"),
        "maybe_index": policy.get("maybe_index"),
    }


def contract_stamp(meta: dict) -> dict[str, str]:
    """The metadata entry every file of a bundle holds: its contract (see contract_facts)."""
    facts = {**contract_facts(meta), "schema": BUNDLE_SCHEMA}
    return {CONTRACT_METADATA_KEY: json.dumps(facts, sort_keys=True)}


def parsed_record(where: Path, name: str, text: str):
    """A file's metadata record, or an error naming the file."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise PitguardError(
            f"{where}: {name} holds an unreadable pitguard record ({type(err).__name__}); the "
            "file was damaged or edited: export the bundle again"
        ) from err


def compare_contract(where: Path, name: str, meta: dict, stamps: dict) -> None:
    """The contract bundle.json states is the one ``name`` was written with; a schema stated
    lower than the file's own is refused (it would switch proofs off)."""
    stamp = stamps.get(CONTRACT_METADATA_KEY)
    stated = meta.get("schema_version", 0)
    if stamp is None:
        if stated >= CONTRACT_SCHEMA:
            raise PitguardError(f"{where}: {name} holds no contract record; export again")
        log.warning(
            "%s: written by an older pitguard (schema %s): its classes, input preprocessing and "
            "architecture rest on bundle.json alone; export it again to have its files prove them",
            where,
            stated,
        )
        return
    held = parsed_record(where, name, stamp)
    if stated < held.get("schema", 0):
        raise PitguardError(
            f"{where}: states schema {stated}, but {name} was written for schema "
            f"{held['schema']}: a lowered schema would skip checks; restore bundle.json"
        )
    facts = {**contract_facts(meta), "schema": held.get("schema")}
    differ = sorted(k for k in held if held[k] != facts.get(k))
    if differ:
        raise PitguardError(
            f"{where}: {', '.join(differ)} differ from what {name} was exported with (edited?); "
            "the runtime acts on them, so restore bundle.json or export again"
        )
