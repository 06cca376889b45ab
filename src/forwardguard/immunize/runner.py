"""Immunize files: read, batch by size, attack, write ``NAME.png`` and ``NAME.json`` per input.

Each input succeeds or fails on its own: a bad file is reported with a one-line reason and nothing
is written for it, and the other inputs are still processed. Images of similar sizes share a batch
(a padded bucket, :mod:`forwardguard.models.buckets`). With ``resume``, an input whose outputs are
already complete (see :func:`finished`) is skipped, and partial outputs are replaced.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import forwardguard
from forwardguard.errors import ForwardguardError
from forwardguard.images import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    encode_png,
    read_image,
    read_mask,
    to_tensor,
    write_bytes_atomic,
)
from forwardguard.immunize.attack import AttackSettings, ImmunizedImage, immunize
from forwardguard.immunize.compute import ComputeOptions
from forwardguard.immunize.objectives import bucket_multiple
from forwardguard.measures import gray_image
from forwardguard.models.base import ImageModel
from forwardguard.models.buckets import group_into_buckets


@dataclass
class Job:
    """One input file and what will be written for it."""

    source: Path
    image: LoadedImage
    out_png: Path
    out_json: Path
    mask: np.ndarray | None = None
    replace: bool = False
    """Its outputs exist but are partial (a resumed run): they are replaced."""


@dataclass
class Written:
    job: Job
    result: ImmunizedImage
    settings: AttackSettings
    png: bytes
    record: dict


@dataclass
class RunReport:
    written: list[Written] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    """Inputs whose complete outputs were already there (``resume``)."""


@dataclass(frozen=True)
class RunOptions:
    """``batch_size``: images attacked together; ``bucket_growth``: how far an image may be padded to
    share a batch (see :func:`forwardguard.models.buckets.group_into_buckets`). ``resume``: skip
    inputs whose outputs are complete and were made with the same model and settings.

    Raises ForwardguardError for options that can't work together or name missing files, before any
    model is loaded.
    """

    out_dir: Path
    target: str = "gray"
    mask: Path | None = None
    batch_size: int = 1
    bucket_growth: float = 1.0
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    resume: bool = False
    compute: ComputeOptions = field(default_factory=ComputeOptions)

    def __post_init__(self) -> None:
        if self.overwrite and self.resume:
            raise ForwardguardError("--overwrite redoes every input and --resume skips finished ones: give one of them")
        if self.target != "gray" and not Path(self.target).is_file():
            raise ForwardguardError(f"target image {self.target} not found")
        if self.mask is not None and not self.mask.is_file():
            raise ForwardguardError(f"mask {self.mask} not found")
        if self.batch_size < 1:
            raise ForwardguardError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.bucket_growth >= 1:  # NaN too
            raise ForwardguardError(f"bucket growth must be at least 1, got {self.bucket_growth}")
        if self.max_pixels < 1:
            raise ForwardguardError(f"max pixels must be at least 1, got {self.max_pixels}")


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
    expected = _expected_record(model, settings, options)
    for path in files:
        out_png = options.out_dir / f"{path.stem}.png"
        if out_png in claimed:
            fail(path, f"{path}: its output {out_png.name} is already taken by {claimed[out_png]}")
            continue
        try:
            if options.resume and finished(path, options.out_dir, expected):
                claimed[out_png] = path
                report.skipped.append(path)
                if on_done is not None:
                    on_done(path, None)
                continue
            job = _prepare(path, options)
        except ForwardguardError as error:
            fail(path, str(error))
            continue
        claimed[out_png] = path
        jobs.append(job)

    try:
        multiple = bucket_multiple(model, settings.method)
        if jobs:
            _make_out_dir(options.out_dir)
    except ForwardguardError as error:  # no input can be delivered: every input fails with the reason
        for job in jobs:
            fail(job.source, f"{job.source}: {error}")
        return report
    sizes = [(job.image.height, job.image.width) for job in jobs]
    for indices in group_into_buckets(sizes, options.batch_size, multiple, options.bucket_growth):
        batch = [jobs[index] for index in indices]
        targets = [_target(options.target, job.image) for job in batch]
        masks = [job.mask for job in batch] if options.mask is not None else None
        try:
            results = immunize(
                [job.image for job in batch],
                model,
                settings,
                targets=targets,
                masks=masks,
                on_step=on_step,
                compute=options.compute,
            )
        except ForwardguardError as error:
            for job in batch:
                fail(job.source, f"{job.source}: {error}")
            continue
        for job, result in zip(batch, results):
            try:
                written = _deliver(job, result, model, settings, options, on_written)
            except ForwardguardError as error:
                fail(job.source, str(error))
                continue
            report.written.append(written)
            if on_done is not None:
                on_done(job.source, None)
    return report


def registry_recorder(registry, *, tenant: str | None = None) -> Callable[[Written], None]:  # noqa: ANN001 (Registry)
    """An ``on_written`` callback that records each written image in the registry.

    The record's id is added to the in-memory record (``written.record["pattern_id"]``).
    """
    from forwardguard.immunize.recording import record_immunized
    from forwardguard.registry import DEFAULT_TENANT

    def record(written: Written) -> None:
        pattern = record_immunized(
            registry,
            written.result,
            png=written.png,
            settings=written.settings,
            model_fingerprint=written.record["model_fingerprint"],
            model_spec=written.record["model_spec"],
            target=written.record["target"],
            source=written.job.source.name,
            mask=written.record.get("mask"),
            tenant=tenant or DEFAULT_TENANT,
        )
        written.record["pattern_id"] = pattern.id

    return record


def finished(source: Path, out_dir: Path, expected: dict) -> bool:
    """Whether ``source``'s outputs in ``out_dir`` are complete: both files, a readable record of this
    source whose ``image_sha256`` is the PNG's, made with the ``expected`` model and settings.

    Raises ForwardguardError when they are complete but were made with other settings: resuming must
    not mix two runs' images (use another folder, or --overwrite).
    """
    out_png, out_json = out_dir / f"{source.stem}.png", out_dir / f"{source.stem}.json"
    try:
        record = json.loads(out_json.read_text())
        png = out_png.read_bytes()
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("source") != source.name:
        return False
    if record.get("image_sha256") != hashlib.sha256(png).hexdigest():
        return False
    differing = sorted(key for key, value in expected.items() if record.get(key) != value)
    if differing:
        raise ForwardguardError(
            f"{source}: {out_json} was made with other settings ({', '.join(differing)}); "
            "resume with the same ones, or use another --out or --overwrite"
        )
    return True


def _expected_record(model: ImageModel, settings: AttackSettings, options: RunOptions) -> dict:
    """What a resumable output's record must say: the same model, target, mask and attack parameters."""
    expected = {"model_fingerprint": model.fingerprint, "target": options.target, **settings.as_record()}
    expected["mask"] = options.mask.name if options.mask is not None else None
    return json.loads(json.dumps(expected))  # as it reads back from a sidecar (tuples become lists)


def _make_out_dir(out_dir: Path) -> None:
    """Create the output folder before any attack runs: one that cannot be created (a file is in the
    way, a read-only parent) is said once, in one line, instead of after the work."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ForwardguardError(f"cannot create the output folder {out_dir} ({error.strerror or error})") from None


def _prepare(path: Path, options: RunOptions) -> Job:
    out_png = options.out_dir / f"{path.stem}.png"
    out_json = options.out_dir / f"{path.stem}.json"
    existing = [out for out in (out_png, out_json) if out.exists()]
    if existing and not options.overwrite and not options.resume:
        raise ForwardguardError(f"{path}: output {existing[0]} exists (use --overwrite to replace it, or --resume)")
    image = read_image(path, max_pixels=options.max_pixels)
    mask = None
    if options.mask is not None:
        mask = read_mask(options.mask, size=(image.width, image.height), max_pixels=options.max_pixels)
    return Job(source=path, image=image, out_png=out_png, out_json=out_json, mask=mask, replace=bool(existing))


def _target(target: str, image: LoadedImage) -> torch.Tensor:
    """The target image at the input's size: gray, or an image file resized to it."""
    if target == "gray":
        return gray_image((3, image.height, image.width))
    from PIL import Image

    loaded = read_image(Path(target))
    resized = Image.fromarray(loaded.rgb).resize((image.width, image.height), Image.Resampling.BICUBIC)
    return to_tensor(np.asarray(resized))


def _deliver(
    job: Job,
    result: ImmunizedImage,
    model: ImageModel,
    settings: AttackSettings,
    options: RunOptions,
    on_written: Callable[[Written], None] | None,
) -> Written:
    """Write the PNG, run ``on_written`` (the registry records the image), then write the sidecar.

    The sidecar comes last because it marks a complete output (see :func:`finished`): a run
    interrupted before it leaves an output that a resumed run redoes (recording is idempotent). On
    any failure nothing of this input is left.
    """
    written = _written(job, result, model, settings, options)
    overwrite = options.overwrite or job.replace
    write_bytes_atomic(job.out_png, written.png, overwrite=overwrite)
    try:
        if on_written is not None:
            try:
                on_written(written)
            except ForwardguardError as error:  # an image is delivered only with its record
                raise ForwardguardError(f"{job.source}: {error}") from error
        write_bytes_atomic(
            job.out_json, (json.dumps(written.record, indent=2, allow_nan=False) + "\n").encode(), overwrite=overwrite
        )
    except BaseException:
        job.out_png.unlink(missing_ok=True)
        job.out_json.unlink(missing_ok=True)
        raise
    return written


def _written(job: Job, result: ImmunizedImage, model: ImageModel, settings: AttackSettings, options: RunOptions) -> Written:
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
        **({"steps_run": result.steps_run} if settings.method != "noise" else {}),
        "image_sha256": hashlib.sha256(png).hexdigest(),
        "forwardguard_version": forwardguard.__version__,
    }
    if options.mask is not None:
        record["mask"] = options.mask.name
    return Written(job=job, result=result, settings=settings, png=png, record=record)
