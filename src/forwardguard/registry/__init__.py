"""The registry: every perturbation pattern in use, recorded durably and verifiably.

``Registry.open(path_or_url)`` is the entry point; see :mod:`forwardguard.registry.store`.
Importing this package imports SQLAlchemy: the CLI imports it inside its commands.
"""

from forwardguard.registry.images import decode_delta
from forwardguard.registry.lookup import PHASH_MAX_DISTANCE
from forwardguard.registry.records import (
    BlobProblem,
    ExportReport,
    GcReport,
    Match,
    ModelRecord,
    PatternRecord,
    PatternSample,
    SnapshotRecord,
    VerifyReport,
)
from forwardguard.registry.store import Registry
from forwardguard.registry.validation import DEFAULT_TENANT

__all__ = [
    "DEFAULT_TENANT",
    "PHASH_MAX_DISTANCE",
    "BlobProblem",
    "ExportReport",
    "GcReport",
    "Match",
    "ModelRecord",
    "PatternRecord",
    "PatternSample",
    "Registry",
    "SnapshotRecord",
    "VerifyReport",
    "decode_delta",
]
