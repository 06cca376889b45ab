"""``forwardguard eval``: the immunity matrix of a registry's snapshots against model versions, clean
utility and false triggers, written as ``report.json`` (see :mod:`forwardguard.eval.report`) and
``report.html``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from forwardguard.errors import ForwardguardError
from forwardguard.eval.clean import clean_utility
from forwardguard.eval.distribution import CellDistribution, DistributionScorer
from forwardguard.eval.edits import edits_not_computed
from forwardguard.eval.matrix import EvalModel, evaluate_cell
from forwardguard.eval.report import attack_descriptions, build_report, not_computed, save_grid_image, write_report
from forwardguard.eval.schema import Cell
from forwardguard.eval.settings import EvalRequest, ModelArg
from forwardguard.eval.snapshot_images import SnapshotImages
from forwardguard.models import load_model
from forwardguard.models.stable_diffusion import DiffusionModel

if TYPE_CHECKING:
    from forwardguard.registry import Registry


def _load_models(args: tuple[ModelArg, ...], registry: Registry, device: torch.device) -> list[EvalModel]:
    names = [arg.name for arg in args]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ForwardguardError(f"--model names must be unique: {', '.join(duplicates)} given twice")
    if not args:
        raise ForwardguardError("give at least one --model NAME=SPEC")
    known = {record.fingerprint: record for record in registry.list_models()}
    models = []
    for arg in args:
        try:
            model = load_model(arg.spec, device=device)
        except ForwardguardError as error:
            raise ForwardguardError(f"--model {arg.name}={arg.spec}: {error}") from None
        models.append(EvalModel(arg.name, arg.spec, model, known.get(model.fingerprint)))
    return models


def _newest_first(models: list[EvalModel], pattern_makers: set[str]) -> list[EvalModel]:
    """Candidates the registry does not know yet first, then recorded models by recording time, newest
    first, then unrecorded models that made the patterns (the oldest versions)."""

    def age(model: EvalModel) -> tuple[int, float]:
        if model.record is not None:
            return (1, -model.record.created_at.timestamp())
        return (2, 0.0) if model.fingerprint in pattern_makers else (0, 0.0)

    return sorted(models, key=age)


def _references(
    models: list[EvalModel], explicit: dict[str, str], registry: Registry, device: torch.device
) -> dict[str, EvalModel]:
    """Each model's reference: ``--reference NAME=REF`` (a --model name or a spec), else the base it was planted from."""
    by_name = {model.name: model for model in models}
    by_fingerprint = {model.fingerprint: model for model in models}
    unknown = sorted(set(explicit) - set(by_name))
    if unknown:
        raise ForwardguardError(f"--reference names unknown models: {', '.join(unknown)}")
    references: dict[str, EvalModel] = {}
    for model in models:
        if model.name in explicit:
            ref = explicit[model.name]
            references[model.name] = by_name.get(ref) or EvalModel(ref, ref, load_model(ref, device=device))
            continue
        parent = getattr(model.record, "parent_fingerprint", None)
        if parent is None:
            continue
        if parent in by_fingerprint:
            references[model.name] = by_fingerprint[parent]
        else:
            record = registry.get_model(parent)
            references[model.name] = EvalModel(record.name, record.spec, load_model(record.spec, device=device), record)
    return references


def run_eval(request: EvalRequest, *, overwrite: bool = False, on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Evaluate and write the report; returns the path of ``report.json``.

    ``on_progress(done, total)`` counts (cell, image) pairs and clean images as they finish.
    """
    from forwardguard.images import iter_image_files, read_image
    from forwardguard.models import resolve_device
    from forwardguard.registry import Registry

    out = request.out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ForwardguardError(f"--out {out} exists and is not empty: choose a new folder or pass --overwrite")
    device = resolve_device(request.device)
    scorer = DistributionScorer.load(request.inception, request.clip, device)
    clean_images = []
    if request.clean is not None:
        files = iter_image_files([request.clean])
        if not files:
            raise ForwardguardError(f"--clean {request.clean}: no images found")
        clean_images = [read_image(path).rgb for path in files]
    with Registry.open(request.registry) as registry:
        snapshot_names = list(request.snapshots) or [snapshot.name for snapshot in registry.list_snapshots()]
        if not snapshot_names:
            raise ForwardguardError("the registry has no snapshots: make one with `forwardguard registry snapshot`")
        snapshots = {name: registry.get_snapshot(name) for name in snapshot_names}
        patterns = {name: registry.snapshot_patterns(name) for name in snapshot_names}
        evaluated = {name: patterns[name][: request.settings.max_images] for name in snapshot_names}
        images = {name: SnapshotImages(registry, name, evaluated[name]) for name in snapshot_names}
        made_against = {name: sorted({r.model_fingerprint for r in patterns[name]}) for name in snapshot_names}
        attacks = {name: attack_descriptions(evaluated[name]) for name in snapshot_names}
        makers = {fingerprint for fingerprints in made_against.values() for fingerprint in fingerprints}
        models = _newest_first(_load_models(request.models, registry, device), makers)
        references = _references(models, request.references, registry, device)

        total = sum(len(images[name]) for name in snapshot_names) * len(models) + len(clean_images) * len(models)
        done = 0

        def advance() -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(done, total)

        out.mkdir(parents=True, exist_ok=True)
        cells, grids = [], []
        for snapshot in snapshot_names:
            for model in models:

                def keep(index: int, kind: str, tensors: dict[str, torch.Tensor], snapshot=snapshot, model=model) -> None:
                    grids.append(save_grid_image(out, snapshot, model.name, index, kind, tensors))

                collector = CellDistribution(scorer, prompted=isinstance(model.model, DiffusionModel)) if scorer else None
                by_transform = evaluate_cell(
                    model,
                    images[snapshot],
                    request.settings,
                    reference=references.get(model.name),
                    on_image=advance,
                    keep_grid=keep,
                    on_edit=collector.add if collector else None,
                )
                distribution = collector.results() if collector else {}
                relation = "backward" if model.fingerprint in made_against[snapshot] else "forward"
                for transform, numbers in by_transform.items():
                    cells.append(
                        Cell(
                            snapshot=snapshot,
                            model=model.name,
                            relation=relation,
                            transform=transform,
                            **numbers,
                            edits_not_computed=edits_not_computed(model.model),
                            distribution=distribution.get(transform),
                        )
                    )
        eps = max(images[name].eps for name in snapshot_names)
        clean = (
            [
                clean_utility(model, references.get(model.name), clean_images, request.settings, eps=eps, on_image=advance)
                for model in models
            ]
            if clean_images
            else []
        )
        report = build_report(
            request=request,
            models=models,
            references=references,
            snapshots=snapshots,
            made_against=made_against,
            attacks=attacks,
            images=images,
            cells=cells,
            clean=clean,
            grids=grids,
            not_computed=not_computed(cells, inception=request.inception is not None, clip=request.clip is not None),
        )
        return write_report(report, out)
