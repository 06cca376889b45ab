"""Export a snapshot as a Hugging Face ``datasets`` dataset on disk, streamed row by row.

Columns: ``pattern_id``, ``image`` (the immunized PNG, an ``Image`` feature), ``delta`` (the
delta's safetensors bytes: int8, or int16 when it does not fit; decode with
:func:`forwardguard.registry.decode_delta`), ``target``, ``model_fingerprint``, ``model_spec``,
``method``, ``params`` (JSON text), ``tenant``, ``width``, ``height``. Load it with
``datasets.load_from_disk(DIR)`` (memory-mapped), and stream it with
``.to_iterable_dataset()``; the clean image is ``immunized - delta``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from forwardguard.errors import ForwardguardError
from forwardguard.registry.patterns import iter_patterns, load_blobs
from forwardguard.registry.records import ExportReport
from forwardguard.registry.snapshots import get_snapshot
from forwardguard.registry.storage import Storage

# Rows per Arrow record batch written: bounds the memory an export needs.
WRITER_BATCH_SIZE = 1000
MAX_SHARD_SIZE = "500MB"


def export_features():  # noqa: ANN201 (datasets.Features, imported lazily)
    import datasets

    return datasets.Features(
        {
            "pattern_id": datasets.Value("string"),
            "image": datasets.Image(),
            "delta": datasets.Value("binary"),
            "target": datasets.Value("string"),
            "model_fingerprint": datasets.Value("string"),
            "model_spec": datasets.Value("string"),
            "method": datasets.Value("string"),
            "params": datasets.Value("string"),
            "tenant": datasets.Value("string"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
        }
    )


def export_snapshot(storage: Storage, snapshot: str, to_dir: Path) -> ExportReport:
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    record = get_snapshot(storage, snapshot)
    if to_dir.exists() and (not to_dir.is_dir() or any(to_dir.iterdir())):
        raise ForwardguardError(f"export folder {to_dir} already exists and is not empty: choose a new one")
    to_dir.parent.mkdir(parents=True, exist_ok=True)
    # The generator reopens the registry by URL: datasets hashes its arguments, and an open
    # engine can't be hashed. Its Arrow cache goes to a scratch folder beside the output.
    # datasets' progress bars are silenced: the caller reports (and errors stay one line).
    bars_were_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix=".export-cache-", dir=to_dir.parent) as cache:
            _write(storage, snapshot, record.pattern_count, to_dir, cache)
    finally:
        if not bars_were_disabled:
            enable_progress_bars()
    return ExportReport(snapshot=snapshot, rows=record.pattern_count, path=to_dir)


def _write(storage: Storage, snapshot: str, expected: int, to_dir: Path, cache: str) -> None:
    import datasets

    try:
        dataset = datasets.Dataset.from_generator(
            _rows,
            features=export_features(),
            gen_kwargs={
                "url": storage.location.with_password(),
                "blob_root": str(storage.location.blob_root),
                "snapshot": snapshot,
            },
            cache_dir=cache,
            writer_batch_size=WRITER_BATCH_SIZE,
        )
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, ForwardguardError):
            raise error.__cause__ from None
        raise
    if len(dataset) != expected:
        raise ForwardguardError(f"snapshot {snapshot!r} holds {expected} patterns but {len(dataset)} were read")
    dataset.save_to_disk(str(to_dir), max_shard_size=MAX_SHARD_SIZE)


def _rows(url: str, blob_root: str, snapshot: str) -> Iterator[dict[str, Any]]:
    with closing(Storage.open(url, blob_root=blob_root)) as storage:
        for pattern in iter_patterns(storage, snapshot=snapshot):
            image_png, delta_blob = load_blobs(storage, pattern)
            yield {
                "pattern_id": pattern.id,
                "image": {"bytes": image_png, "path": None},
                "delta": delta_blob,
                "target": pattern.target,
                "model_fingerprint": pattern.model_fingerprint,
                "model_spec": pattern.model_spec,
                "method": pattern.method,
                "params": json.dumps(pattern.params, sort_keys=True),
                "tenant": pattern.tenant,
                "width": pattern.width,
                "height": pattern.height,
            }
