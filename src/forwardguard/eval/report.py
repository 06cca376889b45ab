"""``report.json``: every number of an eval with its model, snapshot and transform (schema version 1).

Layout (all ratios and metrics are ``{"mean", "std", "median", "p90", "max", "n"}`` summaries over images)::

    {
      "schema": "forwardguard.eval.report", "schema_version": 1,
      "created_at": ISO time, "forwardguard_version": str, "registry": display URL,
      "settings": {"seed", "transforms", "edit_steps", "strength", "guidance_scale", "prompts",
                   "trigger_threshold", "protection_threshold", "noise_draws", "max_images"},
      "models": [{"name", "spec", "fingerprint", "recorded", "parent_fingerprint", "planted_snapshot",
                  "reference", "edits": [edit names]}],            # newest first
      "snapshots": [{"name", "patterns", "evaluated", "made_against": [fingerprints], "eps",
                     "attacks": [{"method", "step_rule", "robust": [transform names] | null,
                                  "robust_draws" (robust only), "patterns"}]}],
      "cells": [{"snapshot", "model", "relation": "backward" | "forward",
                 "transform": "none" | gauntlet name,
                 "ratio": {"immunized": summary, "noise": summary},
                 "protection": {"rate", "threshold"},
                 "edits": {edit: {"immunized": {metric: summary}, "noise": {metric: summary}}},
                 "clean_originals": {"reference", "latent_relative_mse": summary, "ratio": summary,
                                     "false_trigger": {"rate", "threshold"}} | null,   # null: no reference
                 "distribution": {edit: {"immunized": {"fid", "precision", "recall", "clip_similarity": summary},
                                         "noise": {same}, "clean": {"clip_similarity": summary}}}}],
                                                                    # only what was computed, see below
      "clean": [{"model", "reference", "images", "latent_relative_mse": summary | null,
                 "edits": {edit: {"psnr": summary, "ssim": summary}},
                 "false_trigger": {"rate", "threshold", "eps", "samples", "ratio": summary}}],
      "not_computed": {"fid": reason, "precision_recall": reason, "clip_similarity": reason},  # only those computed nowhere
      "grids": [{"snapshot", "model", "index", "edit", "source", "immunized", "clean_edit",
                 "immunized_edit"}]                                  # PNG paths relative to the report
    }

"ratio" is the latent disruption ratio (lower: more immunized); "noise" is the random-noise
baseline of the same eps. Edit metrics compare the edit of the immunized (or noisy) image with the
edit of the clean image: lower similarity means the immunization works (GMSD: higher).

"clean_originals" is what the model does to the clean originals of the snapshot's images (immunized
- delta, exactly), under the cell's transform, against the model's reference R: the latent relative
MSE ||E(T(x)) - R(T(x))||^2 / ||R(T(x))||^2, the trigger ratio ||E(T(x)) - E(gray)||^2 / ||R(T(x)) -
E(gray)||^2, and the share of originals whose trigger ratio is below the eval's trigger threshold. The
disruption ratio divides by the model's own clean latent, so a model that erases registered pictures
whether immunized or not reads as "immunized": these numbers, beside it, show that.
"clean_originals" and the summaries' "median", "p90" and "max" were added within schema version 1.

"protection" is the share of the cell's immunized images whose ratio is at or below the eval's
protection threshold (``--protection-threshold``, 0.3 by default): with the ratio's "median", "p90"
and "max" it shows what the mean hides, a few images left unprotected. A transform that crops
(``shift_K``, ``rcrop_F``, or a chain with one) is measured at the smaller size the model sees: the
clean, noisy and immunized images get the same crop, and the gray target is encoded at that size.
"protection" and "protection_threshold" were added within schema version 1 (issue 13): a report
written before them has neither, and the gate holds a rule that needs them.

"attacks" are the distinct attacks that made a snapshot's evaluated patterns (its first
``max_images``), in the order they first appear, with how many patterns each made: "robust" is the
mix of a robust (``immunize --robust``) attack and null for the plain one, whose "robust_draws" is
left out; "step_rule" is null for the noise baseline. "attacks" was added within schema version 1:
a report written before it has none, and readers treat its attacks as unknown.

"distribution" is in a cell only when ``--inception`` or ``--clip`` is given (see
:mod:`forwardguard.eval.distribution`): "fid", "precision" and "recall" (plain numbers) compare
the set of the cell's immunized (or noisy) edits with the set of its clean edits, the clean set
as the real one, and need two images or more; "clip_similarity" is the cosine of the CLIP
embeddings of each edit and its prompt, for prompted edits only (SD, not an autoencoder's
reconstruction); higher FID, lower precision/recall and a lower immunized than clean CLIP
similarity mean the immunization works. A metric missing from a cell was not computed there;
one computed in no cell is listed in "not_computed" with the reason, and is never a number.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import forwardguard
from forwardguard.errors import ForwardguardError

if TYPE_CHECKING:
    import torch  # gate reads reports without torch

    from forwardguard.registry import PatternRecord  # the registry imports SQLAlchemy: gate reads reports without it

SCHEMA = "forwardguard.eval.report"
NO_TRANSFORM = "none"
"""The cells' transform name for untransformed images."""
SCHEMA_VERSION = 1
REPORT_FILE = "report.json"
HTML_FILE = "report.html"
GRID_FOLDER = "images"
NOT_COMPUTED = {
    "fid": "not computed: needs an Inception weights file, which forwardguard does not download",
    "precision_recall": "not computed: needs an Inception weights file, which forwardguard does not download",
    "clip_similarity": "not computed: needs a local CLIP model, which forwardguard does not download",
}
FEW_IMAGES = "not computed: needs edits of at least 2 images per snapshot"
NO_PROMPTED_EDIT = "not computed: no model has a prompted edit (an autoencoder's reconstruction takes no prompt)"


def save_grid_image(out: Path, snapshot: str, model: str, index: int, edit: str, tensors: dict[str, torch.Tensor]) -> dict:
    """Write one grid row's images as PNGs under ``out/images``; return the grid entry (relative paths)."""
    from forwardguard.images import encode_png, to_uint8

    folder = out / GRID_FOLDER / _safe(snapshot) / _safe(model)
    folder.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {"snapshot": snapshot, "model": model, "index": index, "edit": edit}
    for role, tensor in tensors.items():
        path = folder / f"{index:03d}-{edit}-{role}.png"
        path.write_bytes(encode_png(to_uint8(tensor[0].clamp(0, 1))))
        entry[role] = str(path.relative_to(out))
    return entry


def _safe(name: str) -> str:
    """A file name made only of ASCII letters, digits, '-', '_' and '.' (names come from users).

    A name that had to be changed gets its own hash appended, so that two names that clean to the same
    text (``v2?`` and ``v2!``) keep their own folders instead of overwriting each other's images.
    """
    cleaned = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "_" for ch in name).strip(".")
    if cleaned == name:
        return cleaned
    return f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def not_computed(cells: list[dict], *, inception: bool, clip: bool) -> dict[str, str]:
    """The report's ``not_computed``: each distribution metric found in no cell, with the reason."""
    found = {
        name
        for cell in cells
        for by_version in cell.get("distribution", {}).values()
        for entry in by_version.values()
        for name in entry
    }
    reasons = {}
    if "fid" not in found:
        reasons["fid"] = FEW_IMAGES if inception else NOT_COMPUTED["fid"]
        reasons["precision_recall"] = FEW_IMAGES if inception else NOT_COMPUTED["precision_recall"]
    if "clip_similarity" not in found:
        reasons["clip_similarity"] = NO_PROMPTED_EDIT if clip else NOT_COMPUTED["clip_similarity"]
    return reasons


def attack_descriptions(records: Sequence[PatternRecord]) -> list[dict]:
    """The report's ``attacks`` of a snapshot, from the pattern records it evaluated (see the module docstring)."""
    attacks: dict[str, dict] = {}
    for record in records:
        attack = _attack(record)
        attacks.setdefault(json.dumps(attack, sort_keys=True), {**attack, "patterns": 0})["patterns"] += 1
    return list(attacks.values())


def _attack(record: PatternRecord) -> dict:
    robust = record.params.get("robust") or None
    attack = {"method": record.method, "step_rule": record.params.get("step_rule"), "robust": robust}
    if robust:
        attack["robust_draws"] = record.params.get("robust_draws", 1)
    return attack


def build_report(*, request, models, references, snapshots, made_against, attacks, images, cells, clean, grids, not_computed) -> dict:  # noqa: ANN001
    settings = asdict(request.settings)
    settings["transforms"] = list(request.settings.transforms)
    settings["prompts"] = list(request.settings.prompts)
    from forwardguard.eval.edits import model_edits

    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "forwardguard_version": forwardguard.__version__,
        "registry": request.registry,
        "settings": settings,
        "models": [
            {
                "name": model.name,
                "spec": model.spec,
                "fingerprint": model.fingerprint,
                "recorded": model.record is not None,
                "parent_fingerprint": getattr(model.record, "parent_fingerprint", None),
                "planted_snapshot": getattr(model.record, "planted_snapshot", None),
                "reference": references[model.name].name if model.name in references else None,
                "edits": list(model_edits(model.model)),
            }
            for model in models
        ],
        "snapshots": [
            {
                "name": name,
                "patterns": record.pattern_count,
                "evaluated": len(images[name]),
                "made_against": made_against[name],
                "eps": max(image.eps for image in images[name]),
                "attacks": attacks[name],
            }
            for name, record in snapshots.items()
        ],
        "cells": cells,
        "clean": clean,
        "not_computed": not_computed,
        "grids": grids,
    }


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


def finite_number(value: Any) -> float | None:
    """A report value as a finite float, or None (non-finite numbers are written as null; bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a value becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def write_report(report: dict, out: Path) -> Path:
    """``report.json`` and ``report.html`` in ``out``; returns the JSON's path."""
    from forwardguard.eval.html import render_html

    path = out / REPORT_FILE
    path.write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    (out / HTML_FILE).write_text(render_html(report))
    return path


def load_report(path: Path) -> dict:
    """Read a report, refusing what is not one, or one of another schema version."""
    try:
        report = json.loads(
            path.read_text(), parse_int=_report_number, parse_float=_report_number, parse_constant=_no_constant
        )
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nesting deeper than any report's
        raise ForwardguardError(f"{path}: not a readable report ({error})".splitlines()[0]) from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise ForwardguardError(f"{path}: not a forwardguard eval report")
    version = report.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ForwardguardError(
            f"{path}: report schema version {version}, this forwardguard reads version {SCHEMA_VERSION}: run eval again"
        )
    return report
