"""Which bundle a replica serves, as one short checksum: the same string in answers
(X-DIHS-Bundle header) and in the build-info metric, so a rollout can be watched in both. The
checksum itself is the model library's (an exported level records it too)."""

from dihs_model.bundle import bundle_checksum

__all__ = ["bundle_checksum"]
