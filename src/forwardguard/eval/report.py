"""Writes ``report.json`` (its models and the meaning of every field: :mod:`forwardguard.eval.schema`),
``report.html`` and the grid images beside them."""

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
from forwardguard.eval.html import render_html
from forwardguard.eval.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    Attack,
    Cell,
    CleanUtility,
    GridRow,
    ModelVersion,
    Report,
    Settings,
    Snapshot,
)

if TYPE_CHECKING:
    import torch  # gate reads reports without torch

    from forwardguard.eval.matrix import EvalModel
    from forwardguard.eval.settings import EvalRequest
    from forwardguard.eval.snapshot_images import SnapshotImages
    from forwardguard.registry import PatternRecord, SnapshotRecord

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


def save_grid_image(out: Path, snapshot: str, model: str, index: int, edit: str, tensors: dict[str, torch.Tensor]) -> GridRow:
    """Write one grid row's images (``tensors`` by role: source, immunized, clean_edit, immunized_edit) as PNGs
    under ``out/images``; return the grid row (relative paths)."""
    from forwardguard.images import encode_png, to_uint8

    folder = out / GRID_FOLDER / _safe(snapshot) / _safe(model)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, tensor in tensors.items():
        path = folder / f"{index:03d}-{edit}-{role}.png"
        path.write_bytes(encode_png(to_uint8(tensor[0].clamp(0, 1))))
        paths[role] = str(path.relative_to(out))
    return GridRow(snapshot=snapshot, model=model, index=index, edit=edit, **paths)


def _safe(name: str) -> str:
    """A file name made only of ASCII letters, digits, '-', '_' and '.' (names come from users).

    A name that had to be changed gets its own hash appended, so that two names that clean to the same
    text (``v2?`` and ``v2!``) keep their own folders instead of overwriting each other's images.
    """
    cleaned = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "_" for ch in name).strip(".")
    if cleaned == name:
        return cleaned
    return f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def not_computed(cells: list[Cell], *, inception: bool, clip: bool) -> dict[str, str]:
    """The report's ``not_computed``: each distribution metric found in no cell, with the reason."""
    found = {
        name
        for cell in cells
        for by_version in (cell.distribution or {}).values()
        for scores in (by_version.immunized, by_version.noise, by_version.clean)
        if scores is not None
        for name, value in scores
        if value is not None
    }
    reasons = {}
    if "fid" not in found:
        reasons["fid"] = FEW_IMAGES if inception else NOT_COMPUTED["fid"]
        reasons["precision_recall"] = FEW_IMAGES if inception else NOT_COMPUTED["precision_recall"]
    if "clip_similarity" not in found:
        reasons["clip_similarity"] = NO_PROMPTED_EDIT if clip else NOT_COMPUTED["clip_similarity"]
    return reasons


def attack_descriptions(records: Sequence[PatternRecord]) -> list[Attack]:
    """The report's ``attacks`` of a snapshot, from the pattern records it evaluated (see :class:`Attack`)."""
    attacks: dict[str, dict] = {}
    for record in records:
        attack = _attack(record)
        attacks.setdefault(json.dumps(attack, sort_keys=True), {**attack, "patterns": 0})["patterns"] += 1
    return [Attack(**attack) for attack in attacks.values()]


def _attack(record: PatternRecord) -> dict:
    robust = record.params.get("robust") or None
    attack = {"method": record.method, "step_rule": record.params.get("step_rule"), "robust": robust}
    if robust:
        attack["robust_draws"] = record.params.get("robust_draws", 1)
    return attack


def build_report(
    *,
    request: EvalRequest,
    models: list[EvalModel],
    references: dict[str, EvalModel],
    snapshots: dict[str, SnapshotRecord],
    made_against: dict[str, list[str]],
    attacks: dict[str, list[Attack]],
    images: dict[str, SnapshotImages],
    cells: list[Cell],
    clean: list[CleanUtility],
    grids: list[GridRow],
    not_computed: dict[str, str],
) -> Report:
    """The report of an eval, from what :func:`forwardguard.eval.run.run_eval` measured."""
    from forwardguard.eval.edits import edits_not_computed, model_edits

    settings = asdict(request.settings)
    settings["transforms"] = list(request.settings.transforms)
    settings["prompts"] = list(request.settings.prompts)
    return Report(  # type: ignore[call-arg]  # pydantic.mypy wants schema_name; pydantic takes only its alias, schema
        schema=SCHEMA,
        schema_version=SCHEMA_VERSION,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        forwardguard_version=forwardguard.__version__,
        registry=request.registry,
        settings=Settings(**settings),
        models=[
            ModelVersion(
                name=model.name,
                spec=model.spec,
                fingerprint=model.fingerprint,
                recorded=model.record is not None,
                parent_fingerprint=getattr(model.record, "parent_fingerprint", None),
                planted_snapshot=getattr(model.record, "planted_snapshot", None),
                reference=references[model.name].name if model.name in references else None,
                edits=list(model_edits(model.model)),
                edits_not_computed=edits_not_computed(model.model),
            )
            for model in models
        ],
        snapshots=[
            Snapshot(
                name=name,
                patterns=record.pattern_count,
                evaluated=len(images[name]),
                made_against=made_against[name],
                eps=images[name].eps,
                attacks=attacks[name],
            )
            for name, record in snapshots.items()
        ],
        cells=cells,
        clean=clean,
        not_computed=not_computed,
        grids=grids,
    )


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a value becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def write_report(report: Report, out: Path) -> Path:
    """``report.json`` and ``report.html`` in ``out``; returns the JSON's path."""
    path = out / REPORT_FILE
    path.write_text(json.dumps(_finite(report.model_dump(mode="json")), indent=2, allow_nan=False) + "\n")
    (out / HTML_FILE).write_text(render_html(report))
    return path
