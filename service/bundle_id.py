"""Which bundle a replica serves, as one short checksum: the same string in answers
(X-DIHS-Bundle header) and in the build-info metric, so a rollout can be watched in both."""

from __future__ import annotations

import hashlib
import json


def bundle_checksum(meta: dict) -> str:
    """12 hex digits of the SHA-256 of the bundle's dihs.json content, canonically encoded. It holds
    the checksum of every other file (`files`, written by save_bundle) and the labels, ladder and
    calibration, so any changed weight, tokenizer, config or calibration gives a new id."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
