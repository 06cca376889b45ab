"""The evaluated patterns of a snapshot, read from the registry one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from forwardguard.errors import ForwardguardError
from forwardguard.eval.matrix import EvalImage

if TYPE_CHECKING:
    from forwardguard.registry import PatternRecord, Registry

DEFAULT_EPS = 16 / 255
"""The budget of a pattern whose record has none."""


class SnapshotImages:
    """Patterns as :class:`EvalImage`, each read (its blobs' hashes verified) when the iteration reaches
    it and dropped after: an eval of a snapshot of thousands of patterns holds one image at a time. Every
    iteration reads them again, so the registry must stay open while they are used."""

    def __init__(self, registry: Registry, name: str, records: list[PatternRecord]) -> None:
        if not records:
            raise ForwardguardError(f"snapshot {name!r} holds no patterns: nothing to evaluate")
        self.registry = registry
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EvalImage]:
        for record in self.records:
            sample = self.registry.load_sample(record)
            yield EvalImage(record.id, sample.immunized, sample.clean, pattern_eps(record))

    @property
    def eps(self) -> float:
        """The largest budget of the patterns."""
        return max(pattern_eps(record) for record in self.records)


def pattern_eps(record: PatternRecord) -> float:
    return float(record.params.get("eps", DEFAULT_EPS))
