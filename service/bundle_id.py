"""Which bundle a replica serves, as one short checksum: the same string in answers
(X-DIHS-Bundle header) and in the build-info metric, so a rollout can be watched in both."""

from __future__ import annotations

import hashlib
import json


def bundle_checksum(meta: dict) -> str:
    """12 hex digits of the SHA-256 over the bundle's file checksums (dihs.json `files`, written by
    save_bundle): any changed weight, tokenizer or config file gives a new id. A bundle that was never
    saved has no file list and is `unsaved`."""
    files = meta.get("files")
    if not files:
        return "unsaved"
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:12]
