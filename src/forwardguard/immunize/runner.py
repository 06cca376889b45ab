"""Immunize files: read, batch by size, attack, write ``NAME.png`` and ``NAME.json`` per input.

Each input succeeds or fails on its own: a bad file is reported with a one-line reason and nothing
is written for it, and the other inputs are still processed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import forwardguard
from forwardguard.errors import ForwardguardError
from forwardguard.immunize.attack import AttackSettings, ImmunizedImage, immunize
from forwardguard.immunize.images import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    encode_png,
    read_image,
    read_mask,
    to_tensor,
    write_bytes_atomic,
)
from forwardguard.models.base import ImageModel


PATTERN_PARAMS = ("eps", "eps_255", "step_size", "step_size_255", "steps", "seed", "edit", "noise_draws", "mask", "source")
"""The sidecar's keys that a registry record keeps as the pattern's parameters."""


@dataclass
class Job:
    """One input file and what will be written for it."""

    source: Path
    image: LoadedImage
    out_png: Path
    out_json: Path
    mask: np.ndarray | None = None


@dataclass
class Written:
    job: Job
    result: ImmunizedImage
    png: bytes
    record: dict


@dataclass
class RunReport:
    written: list[Written] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    target: str = "gray"
    mask: Path | None = None
    batch_size: int = 1
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS


def immunize_files(
    files: list[Path],
    model: ImageModel,
    settings: AttackSettings,
    options: RunOptions,
    *,
    on_step: Callable[[], None] | None = None,
    on_done: Callable[[Path, str | None], None] | None = None,
    on_written: Callable[[Written], None] | None = None,
) -> RunReport:
    """Immunize every file; ``on_done(path, error_or_None)`` reports each input as it ends.

    ``on_written`` runs after an image's files are in place (the registry records it there); when it
    raises a ForwardguardError the image's files are removed and the input counts as failed.
    """
    report = RunReport()

    def fail(path: Path, reason: str) -> None:
        report.failed.append((path, reason))
        if on_done is not None:
            on_done(path, reason)

    jobs: list[Job] = []
    claimed: dict[Path, Path] = {}
    for path in files:
        try:
            job = _prepare(path, options)
        except ForwardguardError as error:
            fail(path, str(error))
            continue
        if job.out_png in claimed:
            fail(path, f"{path}: its output {job.out_png.name} is already taken by {claimed[job.out_png]}")
            continue
        claimed[job.out_png] = path
        jobs.append(job)

    for batch in _batches(jobs, options.batch_size):
        targets = [_target(options.target, job.image) for job in batch]
        masks = [job.mask for job in batch] if options.mask is not None else None
        try:
            results = immunize([job.image for job in batch], model, settings, targets=targets, masks=masks, on_step=on_step)
        except ForwardguardError as error:
            for job in batch:
                fail(job.source, f"{job.source}: {error}")
            continue
        for job, result in zip(batch, results):
            try:
                written = _write(job, result, model, settings, options)
            except ForwardguardError as error:
                fail(job.source, str(error))
                continue
            if on_written is not None:
                try:
                    on_written(written)
                except ForwardguardError as error:  # an image is delivered only with its record
                    job.out_png.unlink(missing_ok=True)
                    job.out_json.unlink(missing_ok=True)
                    fail(job.source, f"{job.source}: {error}")
                    continue
            report.written.append(written)
            if on_done is not None:
                on_done(job.source, None)
    return report


def registry_recorder(registry, *, tenant: str | None = None) -> Callable[[Written], None]:  # noqa: ANN001 (Registry)
    """An ``on_written`` callback that records each written image in the registry.

    The record's id is added to the in-memory record (``written.record["pattern_id"]``).
    """
    from forwardguard.registry import DEFAULT_TENANT

    def record(written: Written) -> None:
        params = {key: value for key, value in written.record.items() if key in PATTERN_PARAMS}
        pattern = registry.record_pattern(
            image_png=written.png,
            delta=written.result.delta,
            method=written.record["method"],
            params=params,
            target=written.record["target"],
            model_fingerprint=written.record["model_fingerprint"],
            model_spec=written.record["model_spec"],
            tenant=tenant or DEFAULT_TENANT,
        )
        written.record["pattern_id"] = pattern.id

    return record


def _prepare(path: Path, options: RunOptions) -> Job:
    out_png = options.out_dir / f"{path.stem}.png"
    out_json = options.out_dir / f"{path.stem}.json"
    if not options.overwrite:
        for out in (out_png, out_json):
            if out.exists():
                raise ForwardguardError(f"{path}: output {out} exists (use --overwrite to replace it)")
    image = read_image(path, max_pixels=options.max_pixels)
    mask = None
    if options.mask is not None:
        mask = read_mask(options.mask, size=(image.width, image.height), max_pixels=options.max_pixels)
    return Job(source=path, image=image, out_png=out_png, out_json=out_json, mask=mask)


def _batches(jobs: list[Job], batch_size: int) -> Iterator[list[Job]]:
    """Images of one size go together, ``batch_size`` at a time, in input order within a size."""
    by_size: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        by_size.setdefault((job.image.height, job.image.width), []).append(job)
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _target(target: str, image: LoadedImage) -> torch.Tensor:
    """The target image at the input's size: gray (0.5), or an image file resized to it."""
    if target == "gray":
        return torch.full((3, image.height, image.width), 0.5)
    from PIL import Image

    loaded = read_image(Path(target))
    resized = Image.fromarray(loaded.rgb).resize((image.width, image.height), Image.Resampling.BICUBIC)
    return to_tensor(np.asarray(resized))


def _write(job: Job, result: ImmunizedImage, model: ImageModel, settings: AttackSettings, options: RunOptions) -> Written:
    png = encode_png(result.rgb, result.alpha, icc_profile=job.image.icc_profile)
    record = {
        "source": job.source.name,
        "method": settings.method,
        "model_spec": model.spec,
        "model_fingerprint": model.fingerprint,
        "target": options.target,
        **settings.as_record(),
        "width": job.image.width,
        "height": job.image.height,
        "loss_before": result.loss_before,
        "loss_after": result.loss_after,
        "loss_ratio": result.loss_ratio,
        "linf_255": result.linf_255,
        "image_sha256": hashlib.sha256(png).hexdigest(),
        "forwardguard_version": forwardguard.__version__,
    }
    if options.mask is not None:
        record["mask"] = options.mask.name
    options.out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(job.out_png, png, overwrite=options.overwrite)
    try:
        write_bytes_atomic(job.out_json, (json.dumps(record, indent=2) + "\n").encode(), overwrite=options.overwrite)
    except BaseException:
        job.out_png.unlink(missing_ok=True)  # nothing partial: an image without its record is removed
        raise
    return Written(job=job, result=result, png=png, record=record)
