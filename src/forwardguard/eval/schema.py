"""``report.json`` (schema version 1) as typed models: eval writes a :class:`Report`, the gate and the
HTML page read one. This module imports no torch: the gate reads reports without it.

Conventions of the whole report:

- A number that eval measured is null where it was not finite (NaN or infinity: JSON has neither).
- A ratio or metric over images is a :class:`Summary`. "ratio" is the latent disruption ratio
  ||E(T(x')) - E(gray)||^2 / ||E(T(x)) - E(gray)||^2 (lower: more immunized); "noise" is the random-noise
  baseline of the same eps. An edit metric compares the edit of the immunized (or noisy) image with the
  edit of the clean image: lower similarity means the immunization works (GMSD, a distance: higher).
- A field described as "added within schema version 1" is missing from a report written before it and
  reads as None; eval always writes it.

The published JSON Schema, ``docs/report.schema.json``, is generated from these models:
``python -m forwardguard.eval.schema > docs/report.schema.json`` (a test checks it is up to date).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forwardguard.errors import ForwardguardError

SCHEMA = "forwardguard.eval.report"
SCHEMA_VERSION = 1
NO_TRANSFORM = "none"
"""The cells' transform name for untransformed images."""


def _none(value: object) -> bool:
    return value is None


class _Model(BaseModel):
    """A part of the report; its attributes' docstrings are the JSON Schema's descriptions."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class Summary(_Model):
    """A number over the images of a cell (or of the clean images)."""

    mean: float | None
    std: float | None
    """The sample standard deviation (n - 1); 0 for one value."""
    median: float | None = None
    """Added within schema version 1."""
    p90: float | None = None
    """The 90th percentile (linear interpolation between order statistics). Added within schema version 1."""
    max: float | None = None
    """The largest value. Added within schema version 1."""
    n: int
    """How many values (images, or noise draws)."""


class Settings(_Model):
    """What the eval measured with (its ``EvalSettings``)."""

    transforms: list[str]
    """The gauntlet: transform names; the untransformed images ("none") are always evaluated too."""
    seed: int
    edit_steps: int
    strength: float
    guidance_scale: float
    prompts: list[str]
    trigger_threshold: float
    """A clean image whose trigger ratio falls below it counts as a false trigger."""
    protection_threshold: float | None = None
    """An immunized image whose ratio is at or below it counts as protected. Added within schema version 1."""
    noise_draws: int
    grid_images: int
    max_images: int | None
    """The snapshots' first images evaluated; null: all of them."""


class ModelVersion(_Model):
    """One model of the eval; the report lists them newest first."""

    name: str
    """The NAME of the eval's ``--model NAME=SPEC``."""
    spec: str
    fingerprint: str
    """The sha256 of the model's weights: its version."""
    recorded: bool
    """Whether the registry knows the model."""
    parent_fingerprint: str | None
    """The base a planted model was made from (null: not recorded, or not planted)."""
    planted_snapshot: str | None
    reference: str | None
    """The name of the model it is compared with for clean utility (null: none)."""
    edits: list[str]
    """The model's edit names (img2img, inpaint; an autoencoder's reconstruction); empty for an encoder-only model."""
    edits_not_computed: str | None = None
    """Why the model has no edits, so no edit metrics anywhere in the report: "not computed: no decoder" for
    an encoder-only model (``taesd:ENCODER``); null when its edits were computed. Added within schema version 1."""


class Attack(_Model):
    """One distinct attack that made a snapshot's evaluated patterns."""

    method: str
    step_rule: str | None
    """Null for the noise baseline."""
    robust: list[str] | None
    """The transform mix of a robust (``immunize --robust``) attack; null for the plain one."""
    robust_draws: int | None = Field(default=None, exclude_if=_none)
    """Transform draws per step of a robust attack; left out for the plain one."""
    patterns: int
    """How many of the evaluated patterns this attack made."""


class Snapshot(_Model):
    """A snapshot of the registry: a frozen set of patterns."""

    name: str
    patterns: int
    """Patterns in the snapshot."""
    evaluated: int
    """Patterns evaluated (the first ``max_images``)."""
    made_against: list[str]
    """Fingerprints of the models the patterns were made against (a cell on one of them is "backward")."""
    eps: float
    attacks: list[Attack] | None = None
    """The distinct attacks of the evaluated patterns, in the order they first appear. Added within schema
    version 1: a report without it has its attacks unknown."""


class Ratios(_Model):
    """The disruption ratio of the immunized images and of the noise baseline."""

    immunized: Summary
    noise: Summary


class Protection(_Model):
    """The share of the cell's immunized images whose ratio is at or below the threshold: with the ratio's
    median, p90 and max it shows what the mean hides, a few images left unprotected."""

    rate: float | None
    threshold: float


class TriggerRate(_Model):
    """The share of clean images whose trigger ratio is below the threshold: the model moves them towards the
    target although they carry no pattern."""

    rate: float | None
    threshold: float


class NoisyTriggers(TriggerRate):
    """False triggers on clean images plus uniform noise of ``eps``."""

    eps: float
    samples: int
    """Noisy images tried (clean images times noise draws)."""
    ratio: Summary
    """Their disruption ratio."""


class EditVersions(_Model):
    """An edit's metrics (``{metric: summary}``) for the immunized images and for the noise baseline."""

    immunized: dict[str, Summary]
    noise: dict[str, Summary]


class CleanOriginals(_Model):
    """What the model does to the clean originals of the snapshot's images (immunized - delta, exactly), under
    the cell's transform, against the model's reference R. The disruption ratio divides by the model's own
    clean latent, so a model that erases registered pictures whether immunized or not reads as "immunized":
    these numbers, beside it, show that."""

    reference: str
    latent_relative_mse: Summary
    """||E(T(x)) - R(T(x))||^2 / ||R(T(x))||^2."""
    ratio: Summary
    """The trigger ratio ||E(T(x)) - E(gray)||^2 / ||R(T(x)) - E(gray)||^2."""
    false_trigger: TriggerRate


class DistributionScores(_Model):
    """Distribution metrics of one set of edits; a metric that was not computed is left out."""

    fid: float | None = Field(default=None, exclude_if=_none)
    """FID of this set of edits against the clean edits (the real set); needs two images or more."""
    precision: float | None = Field(default=None, exclude_if=_none)
    recall: float | None = Field(default=None, exclude_if=_none)
    clip_similarity: Summary | None = Field(default=None, exclude_if=_none)
    """Cosine of the CLIP embeddings of each edit and its prompt, for prompted edits only."""


class EditDistribution(_Model):
    """Higher FID, lower precision/recall and a lower immunized than clean CLIP similarity mean the
    immunization works; a set without computed metrics is left out."""

    immunized: DistributionScores | None = Field(default=None, exclude_if=_none)
    noise: DistributionScores | None = Field(default=None, exclude_if=_none)
    clean: DistributionScores | None = Field(default=None, exclude_if=_none)
    """The clean edits: their CLIP similarity only."""


class Cell(_Model):
    """One snapshot on one model after one transform. A transform that crops (``shift_K``, ``rcrop_F``, or a
    chain with one) is measured at the smaller size the model sees: the clean, noisy and immunized images
    get the same crop, and the gray target is encoded at that size."""

    snapshot: str
    model: str
    relation: Literal["backward", "forward"]
    """"backward": the model made the snapshot's patterns; "forward": a newer model."""
    transform: str
    """"none" or a gauntlet transform name."""
    ratio: Ratios
    protection: Protection | None = None
    """Added within schema version 1: a report without it holds a gate rule that needs it."""
    edits: dict[str, EditVersions]
    """Per edit name; empty when ``edits_not_computed`` says why."""
    edits_not_computed: str | None = None
    """"not computed: no decoder" when the model is encoder-only (its latent figures are all here, its edit
    metrics are not); null when its edits were computed. Added within schema version 1."""
    clean_originals: CleanOriginals | None = None
    """Null: the model has no reference. Added within schema version 1."""
    distribution: dict[str, EditDistribution] | None = Field(default=None, exclude_if=_none)
    """Per edit name; only with ``eval --inception`` or ``--clip``, else left out."""


class EditUtility(_Model):
    """A model's edits against its reference's, same seed."""

    psnr: Summary
    ssim: Summary


class CleanUtility(_Model):
    """One model on the clean images (``eval --clean``)."""

    model: str
    reference: str | None
    images: int
    latent_relative_mse: Summary | None
    """To the reference; null without a reference."""
    edits: dict[str, EditUtility]
    """Per edit name that the reference has too; empty without a reference, or when ``edits_not_computed`` says why."""
    edits_not_computed: str | None = None
    """"not computed: no decoder" when the model is encoder-only, "not computed: no decoder in the reference
    NAME" when its reference is; null otherwise. Added within schema version 1."""
    false_trigger: NoisyTriggers


class GridRow(_Model):
    """One row of the HTML page's image grids: PNG paths relative to the report."""

    snapshot: str
    model: str
    index: int
    edit: str
    source: str | None = None
    immunized: str | None = None
    clean_edit: str | None = None
    immunized_edit: str | None = None


class Report(_Model):
    """Every number of an eval with its model, snapshot and transform."""

    model_config = ConfigDict(use_attribute_docstrings=True, validate_by_name=True, serialize_by_alias=True)

    schema_name: Literal["forwardguard.eval.report"] = Field(alias="schema")
    schema_version: Literal[1]
    created_at: str
    """ISO 8601 time, UTC."""
    forwardguard_version: str
    registry: str
    """The registry's URL, for display."""
    settings: Settings
    models: list[ModelVersion]
    snapshots: list[Snapshot]
    cells: list[Cell]
    clean: list[CleanUtility]
    """Empty without ``eval --clean``."""
    not_computed: dict[str, str]
    """Each distribution metric computed in no cell ("fid", "precision_recall", "clip_similarity"), with the
    reason; it is never a number."""
    grids: list[GridRow]


def finite(value: float | None) -> float | None:
    """``value``, or None when it is missing or not finite (a report in memory may hold NaN)."""
    return value if value is not None and math.isfinite(value) else None


def _report_number(text: str) -> int | float:
    """A number as eval writes them: at most 32 characters (a 400-digit integer is no report's) and finite."""
    if len(text) > 32:
        raise ValueError(f"a number of {len(text)} digits")
    number = float(text) if any(character in text for character in ".eE") else int(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is not a finite number")
    return number


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not JSON (eval writes null for a missing number)")


def load_report(path: Path) -> Report:
    """Read a report, refusing what is not one (or what eval never writes: numbers of over 32 characters,
    NaN, infinities, deep nesting), and one of another schema version."""
    try:
        data = json.loads(path.read_text(), parse_int=_report_number, parse_float=_report_number, parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nesting deeper than any report's
        raise ForwardguardError(f"{path}: not a readable report ({error})".splitlines()[0]) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ForwardguardError(f"{path}: not a forwardguard eval report")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ForwardguardError(
            f"{path}: report schema version {version}, this forwardguard reads version {SCHEMA_VERSION}: run eval again"
        )
    try:
        return Report.model_validate(data, strict=True)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise ForwardguardError(f"{path}: not a complete eval report: {where}: {first['msg']}{more}") from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json`` (what :func:`load_report` accepts)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Report.model_json_schema()}


def render() -> str:
    """``docs/report.schema.json``'s text."""
    return json.dumps(json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
