"""The release gate: a policy's thresholds applied to an eval report, rule by rule, for one candidate model.

The policy (``configs/gate.yaml``)::

    immunity:
      transforms: [none, jpeg_q95]   # "none": the untransformed images; others: gauntlet transforms of the report
      limits: {ratio: 0.30, ssim: 0.80}  # also ratio_p90 (at most), protection_rate (at least)
    clean_utility:
      max_latent_relative_mse: 0.01
    false_trigger:
      max_rate: 0.05
    clean_originals:
      max_latent_relative_mse: 0.01
      max_false_trigger_rate: 0.0

Every key is required: a gate that checks nothing would release anything.

What is checked, on the candidate:

- immunity, for every snapshot of the report and every listed transform: the mean over the
  snapshot's images of each limit's metric. ``ratio`` (the latent disruption ratio) and the
  similarity metrics of the immunized image's edit to the clean image's edit must be at most the
  limit, per edit kind of the candidate; GMSD is a distance, so it must be at least the limit. Two
  limits look past the mean at the images one by one (issue 13): ``ratio_p90``, the 90th percentile
  of the images' ratios, must be at most the limit, and ``protection_rate``, the share of images
  whose ratio is at or below the eval's ``--protection-threshold``, at least the limit. A cell
  of relation "backward" (a snapshot made against the candidate itself) counts like a forward one:
  every snapshot must stay immunized on the model that is released.
- clean utility: the mean latent relative MSE to the candidate's reference, at most the limit.
- false triggers: the share of clean + eps-noise images that trigger the candidate, at most the limit.
- clean originals, for every snapshot and listed transform: the mean latent relative MSE of the
  registered images' clean originals to the reference, and the share of them that the candidate
  itself moves towards the target (their trigger ratio below the eval's threshold). A candidate
  that erases registered pictures whether or not they are immunized passes the ratio limit with
  a small denominator; these rules hold it.

An encoder-only candidate (``taesd:ENCODER``: no decoder, so no edits) has every latent figure but no
edit metric; its report says why (the model's ``edits_not_computed``, "not computed: no decoder"). A
limit on an edit metric does not apply to it: the rule is *skipped* with that reason, once per limit,
and neither passes nor holds; every other rule is applied as usual. A policy whose immunity limits are
all edit metrics would then check no immunity at all, so for such a candidate it holds, asking for a
latent limit (``ratio``, ``ratio_p90`` or ``protection_rate``).

Missing data holds: a snapshot without a cell for a listed transform, a missing edit kind, a
non-finite number (null in the report), a candidate without a reference or without clean-utility
numbers (eval without ``--clean``) each fail their rule with a reason; so does a latent MSE without
a reference (an MSE to nothing is no evidence). A candidate that is not a model of the report is an
unusable input: ForwardguardError. The report's shape is its models' (:mod:`forwardguard.eval.schema`),
and :func:`forwardguard.eval.schema.load_report` refuses what is not a report or what eval never
writes: numbers of over 32 characters, NaN, infinities, deep nesting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypedDict

from forwardguard.errors import ForwardguardError
from forwardguard.eval.metric_names import HIGHER_IS_MORE_SIMILAR, METRICS
from forwardguard.eval.schema import NO_TRANSFORM, Cell, CleanUtility, Report, Summary, finite

RATIO = "ratio"
RATIO_P90 = "ratio_p90"
PROTECTION_RATE = "protection_rate"
LATENT_METRICS = (RATIO, RATIO_P90, PROTECTION_RATE)
LIMIT_METRICS = (*LATENT_METRICS, *METRICS)
_SECTIONS: dict[str, tuple[str, ...]] = {
    "immunity": ("transforms", "limits"),
    "clean_utility": ("max_latent_relative_mse",),
    "false_trigger": ("max_rate",),
    "clean_originals": ("max_latent_relative_mse", "max_false_trigger_rate"),
}


@dataclass(frozen=True)
class Limit:
    """A bound on one metric over a snapshot's images: its mean, or for ``ratio_p90`` and
    ``protection_rate`` the ratio's 90th percentile and the cell's protection rate."""

    metric: str
    threshold: float

    @property
    def at_most(self) -> bool:
        """True when the value must be <= the threshold (ratio, p90, similarities); False (>=) for
        GMSD, a distance, and for the protection rate."""
        if self.metric in (RATIO, RATIO_P90):
            return True
        return self.metric != PROTECTION_RATE and HIGHER_IS_MORE_SIMILAR[self.metric]


@dataclass(frozen=True)
class Policy:
    transforms: tuple[str, ...]
    limits: tuple[Limit, ...]
    max_latent_relative_mse: float
    max_false_trigger_rate: float
    max_originals_relative_mse: float
    max_originals_trigger_rate: float


class _Where(TypedDict):
    """Where a rule applies: the ``snapshot`` and ``transform`` keywords of :class:`RuleResult` and ``_check``."""

    snapshot: str
    transform: str


@dataclass(frozen=True)
class RuleResult:
    """One checked rule. ``value`` is None when the data is missing; ``reason`` then says what is missing.

    ``rule``: ``immunity.METRIC`` (per snapshot and transform, and edit for an edit metric; skipped once per
    edit metric for a candidate without edits), ``immunity`` (a snapshot without a cell for a listed
    transform, a report without snapshots, or a candidate without edits and a policy without a latent limit),
    ``clean_utility`` (latent relative MSE), ``false_trigger`` (rate), or
    ``clean_originals.latent_relative_mse`` and ``clean_originals.false_trigger`` (per snapshot and transform).
    """

    rule: str
    value: float | None
    threshold: float | None
    at_most: bool
    passed: bool
    snapshot: str | None = None
    transform: str | None = None
    edit: str | None = None
    reason: str | None = None
    skipped: bool = False
    """The rule does not apply to the candidate (``reason`` says why): it neither passes nor holds."""


@dataclass(frozen=True)
class GateResult:
    candidate: str
    rules: tuple[RuleResult, ...]

    @property
    def applied(self) -> tuple[RuleResult, ...]:
        return tuple(rule for rule in self.rules if not rule.skipped)

    @property
    def skipped(self) -> tuple[RuleResult, ...]:
        return tuple(rule for rule in self.rules if rule.skipped)

    @property
    def released(self) -> bool:
        return bool(self.applied) and all(rule.passed for rule in self.applied)

    @property
    def failed(self) -> tuple[RuleResult, ...]:
        return tuple(rule for rule in self.applied if not rule.passed)


def load_policy(path: Path) -> Policy:
    """Read a gate policy, refusing unknown or missing keys, unknown metrics and transforms, and bad numbers."""
    import yaml

    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ForwardguardError(f"{path}: cannot read the gate policy ({error})".splitlines()[0]) from None
    _check_keys(values, tuple(_SECTIONS), f"{path}")
    for section, keys in _SECTIONS.items():
        _check_keys(values[section], keys, f"{path}: {section}")
    immunity = values["immunity"]
    return Policy(
        transforms=_transforms(immunity["transforms"], f"{path}: immunity.transforms"),
        limits=_limits(immunity["limits"], f"{path}: immunity.limits"),
        max_latent_relative_mse=_threshold(
            values["clean_utility"]["max_latent_relative_mse"], f"{path}: clean_utility.max_latent_relative_mse"
        ),
        max_false_trigger_rate=_threshold(values["false_trigger"]["max_rate"], f"{path}: false_trigger.max_rate", upper=1.0),
        max_originals_relative_mse=_threshold(
            values["clean_originals"]["max_latent_relative_mse"], f"{path}: clean_originals.max_latent_relative_mse"
        ),
        max_originals_trigger_rate=_threshold(
            values["clean_originals"]["max_false_trigger_rate"], f"{path}: clean_originals.max_false_trigger_rate", upper=1.0
        ),
    )


def _check_keys(values: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(values, dict):
        raise ForwardguardError(f"{where}: expected a mapping with keys {', '.join(keys)}")
    unknown = sorted(str(key) for key in set(values) - set(keys))
    if unknown:
        raise ForwardguardError(f"{where}: unknown key {', '.join(unknown)} (known: {', '.join(keys)})")
    missing = [key for key in keys if key not in values]
    if missing:
        raise ForwardguardError(f"{where}: missing key {', '.join(missing)}")


def _transforms(values: Any, where: str) -> tuple[str, ...]:
    from forwardguard.transforms import parse_transform

    if not isinstance(values, list) or not values or not all(isinstance(name, str) for name in values):
        raise ForwardguardError(f"{where}: expected a non-empty list of transform names, e.g. [none, jpeg_q95]")
    if len(set(values)) != len(values):
        raise ForwardguardError(f"{where}: a transform is listed twice")
    for name in values:
        if name != NO_TRANSFORM:
            try:
                parse_transform(name)
            except ForwardguardError as error:
                raise ForwardguardError(f"{where}: {error}") from None
    return tuple(values)


def _limits(values: Any, where: str) -> tuple[Limit, ...]:
    if not isinstance(values, dict) or not values:
        raise ForwardguardError(f"{where}: expected a mapping of metric to limit, e.g. {{ratio: 0.3, ssim: 0.8}}")
    unknown = sorted(str(name) for name in values if name not in LIMIT_METRICS)
    if unknown:
        raise ForwardguardError(f"{where}: unknown metric {', '.join(unknown)} (known: {', '.join(LIMIT_METRICS)})")
    return tuple(
        Limit(name, _threshold(values[name], f"{where}.{name}", upper=1.0 if name == PROTECTION_RATE else None))
        for name in LIMIT_METRICS
        if name in values
    )


def _threshold(value: Any, where: str, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ForwardguardError(f"{where}: expected a finite number >= 0, got {value!r}")
    if upper is not None and value > upper:
        raise ForwardguardError(f"{where}: expected at most {upper}, got {value!r}")
    return float(value)


def gate(report: Report, policy: Policy, candidate: str) -> GateResult:
    """Every rule of ``policy`` on ``candidate``; released when all pass (see the module docstring)."""
    by_name = {model.name: model for model in report.models}
    if candidate not in by_name:
        known = ", ".join(sorted(by_name)) or "none"
        raise ForwardguardError(f"candidate {candidate!r} is not a model of the report (models: {known})")
    mine = {(cell.snapshot, cell.transform): cell for cell in report.cells if cell.model == candidate}
    names = [snapshot.name for snapshot in report.snapshots]
    model = by_name[candidate]
    no_edits = model.edits_not_computed if not model.edits else None
    applied = policy if no_edits is None else replace(policy, limits=_latent_limits(policy))
    rules = [
        *_no_edits(policy, no_edits),
        *_immunity(applied, names, model.edits, mine),
        *_originals(policy, names, mine, candidate),
        *_clean_rules(policy, next((entry for entry in report.clean if entry.model == candidate), None), candidate),
    ]
    return GateResult(candidate, tuple(rules))


def _latent_limits(policy: Policy) -> tuple[Limit, ...]:
    return tuple(limit for limit in policy.limits if limit.metric in LATENT_METRICS)


def _no_edits(policy: Policy, reason: str | None) -> list[RuleResult]:
    """For a candidate whose edits were not computed (``reason``): each edit-metric limit skipped, and a hold
    when no latent limit is left to check its immunity."""
    if reason is None:
        return []
    rules = [
        RuleResult(f"immunity.{limit.metric}", None, limit.threshold, limit.at_most, False, reason=reason, skipped=True)
        for limit in policy.limits
        if limit.metric not in LATENT_METRICS
    ]
    if not _latent_limits(policy):
        missing = f"the policy's immunity limits are all edit metrics, and the candidate's edits are {reason}: add a ratio limit"
        rules.append(RuleResult("immunity", None, None, True, False, reason=missing))
    return rules


def _immunity(policy: Policy, snapshots: list[str], edits: list[str], cells: dict[tuple[str, str], Cell]) -> list[RuleResult]:
    if not snapshots:
        return [RuleResult("immunity", None, None, True, False, reason="the report has no snapshots")]
    rules = []
    for snapshot in snapshots:
        for transform in policy.transforms:
            where: _Where = {"snapshot": snapshot, "transform": transform}
            cell = cells.get((snapshot, transform))
            if cell is None:
                reason = "no cell in the report" + (
                    "" if transform == NO_TRANSFORM else " (transform not in the eval's gauntlet)"
                )
                rules.append(RuleResult("immunity", None, None, True, False, **where, reason=reason))
                continue
            for limit in policy.limits:
                bound = (f"immunity.{limit.metric}", limit.threshold, limit.at_most)
                if limit.metric == RATIO:
                    rules.append(_check(*bound, _mean(cell.ratio.immunized), **where))
                elif limit.metric == RATIO_P90:
                    rules.append(_check(*bound, finite(cell.ratio.immunized.p90), **where))
                elif limit.metric == PROTECTION_RATE:
                    if cell.protection is None:
                        missing = "no protection rate in the cell: a report of an older eval, run eval again"
                        rules.append(_check(*bound, None, missing=missing, **where))
                    else:
                        rules.append(_check(*bound, finite(cell.protection.rate), **where))
                elif not edits:
                    rules.append(_check(*bound, None, missing="the report lists no edits of the candidate", **where))
                else:
                    rules.extend(_check(*bound, _edit_mean(cell, edit, limit.metric), edit=edit, **where) for edit in edits)
    return rules


def _edit_mean(cell: Cell, edit: str, metric: str) -> float | None:
    """The mean of ``metric`` over the cell's immunized images' ``edit``; None when the cell lacks it."""
    versions = cell.edits.get(edit)
    return _mean(versions.immunized.get(metric)) if versions is not None else None


def _originals(policy: Policy, snapshots: list[str], cells: dict[tuple[str, str], Cell], candidate: str) -> list[RuleResult]:
    """The clean originals' drift and false-trigger rules, per snapshot and listed transform that has a cell
    (a missing cell already fails its immunity rule)."""
    rules = []
    for snapshot in snapshots:
        for transform in policy.transforms:
            cell = cells.get((snapshot, transform))
            if cell is None:
                continue
            where: _Where = {"snapshot": snapshot, "transform": transform}
            originals = cell.clean_originals
            drift = ("clean_originals.latent_relative_mse", policy.max_originals_relative_mse, True)
            trigger = ("clean_originals.false_trigger", policy.max_originals_trigger_rate, True)
            if originals is None:
                missing = f"no clean-original numbers: the candidate has no reference (run eval with --reference {candidate}=REF)"
                rules.append(_check(*drift, None, missing=missing, **where))
                rules.append(_check(*trigger, None, missing=missing, **where))
            else:
                rules.append(_check(*drift, _mean(originals.latent_relative_mse), **where))
                rules.append(_check(*trigger, finite(originals.false_trigger.rate), **where))
    return rules


def _clean_rules(policy: Policy, entry: CleanUtility | None, candidate: str) -> list[RuleResult]:
    mse = ("clean_utility", policy.max_latent_relative_mse, True)
    rate = ("false_trigger", policy.max_false_trigger_rate, True)
    if entry is None:
        missing = "no clean-utility numbers for the candidate: run eval with --clean DIR"
        return [_check(*mse, None, missing=missing), _check(*rate, None, missing=missing)]
    if entry.reference is None:  # without a reference, an MSE (to what?) is not evidence: it holds
        no_reference = f"the candidate has no reference: run eval with --reference {candidate}=REF"
        return [_check(*mse, None, missing=no_reference), _check(*rate, finite(entry.false_trigger.rate))]
    return [_check(*mse, _mean(entry.latent_relative_mse)), _check(*rate, finite(entry.false_trigger.rate))]


def _check(
    rule: str,
    threshold: float,
    at_most: bool,
    value: float | None,
    *,
    missing: str | None = None,
    snapshot: str | None = None,
    transform: str | None = None,
    edit: str | None = None,
) -> RuleResult:
    """``value`` against ``threshold``; a missing value fails with ``missing`` (or a generic reason)."""
    if value is None:
        reason = missing or "missing or not a finite number in the report"
        return RuleResult(rule, None, threshold, at_most, False, snapshot, transform, edit, reason)
    passed = value <= threshold if at_most else value >= threshold
    return RuleResult(rule, value, threshold, at_most, passed, snapshot, transform, edit)


def _mean(summary: Summary | None) -> float | None:
    return finite(summary.mean) if summary is not None else None


def format_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}"


def format_limit(rule: RuleResult) -> str:
    if rule.threshold is None:
        return "-"
    return ("<= " if rule.at_most else ">= ") + format_value(rule.threshold)


def rule_scope(rule: RuleResult) -> str:
    """Where a rule applies, e.g. ``s1 / jpeg_q95 / img2img``."""
    return " / ".join(part for part in (rule.snapshot, rule.transform, rule.edit) if part) or "-"


def verdict(result: GateResult) -> str:
    skipped = f" ({len(result.skipped)} skipped: not applicable)" if result.skipped else ""
    if result.released:
        return f"RELEASE {result.candidate}: all {len(result.applied)} rules pass{skipped}"
    return f"HOLD {result.candidate}: {len(result.failed)} of {len(result.applied)} rules fail{skipped}"


def outcome(rule: RuleResult) -> str:
    """A rule's result in a table: pass, HOLD or skipped."""
    return "skipped" if rule.skipped else "pass" if rule.passed else "HOLD"
