"""The release gate: ``gate()`` over small hand-made reports, the policy loader's refusals, and the CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forwardguard.cli import app
from forwardguard.errors import ForwardguardError
from forwardguard.eval.gate import GateResult, Limit, Policy, load_policy, verdict
from forwardguard.eval.gate import gate as gate_report
from forwardguard.eval.metric_names import METRICS
from forwardguard.eval.schema import SCHEMA, SCHEMA_VERSION, Report, load_report

SHIPPED_POLICY = Path(__file__).resolve().parents[2] / "configs" / "gate.yaml"
CANDIDATE = "v2-planted"
POLICY = Policy(
    transforms=("none", "jpeg_q95"),
    limits=(Limit("ratio", 0.3), Limit("ssim", 0.8)),
    max_latent_relative_mse=0.01,
    max_false_trigger_rate=0.05,
    max_originals_relative_mse=0.01,
    max_originals_trigger_rate=0.0,
)
runner = CliRunner()


def summary(mean: float | None) -> dict:
    return {"mean": mean, "std": 0.01, "n": 4}


def originals(drift: float, rate: float) -> dict:
    return {
        "reference": "v1",
        "latent_relative_mse": summary(drift),
        "ratio": summary(1.0),
        "false_trigger": {"rate": rate, "threshold": 0.5},
    }


def make_report() -> dict:
    """A report that the policy above releases for ``v2-planted`` and holds for ``v1`` (not immunized on it)."""
    models = [
        {"name": CANDIDATE, "spec": "taesd:v2", "fingerprint": "b" * 64, "recorded": True, "parent_fingerprint": "a" * 64,
         "planted_snapshot": "s1", "reference": "v1", "edits": ["reconstruction"]},
        {"name": "v1", "spec": "taesd:v1", "fingerprint": "a" * 64, "recorded": True, "parent_fingerprint": None,
         "planted_snapshot": None, "reference": None, "edits": ["reconstruction"]},
    ]  # fmt: skip
    cells = []
    for snapshot in ("s1", "s2"):
        for model, ratio, ssim in ((CANDIDATE, 0.1, 0.5), ("v1", 0.9, 0.97)):
            for transform in ("none", "jpeg_q95", "jpeg_q50"):
                similarity = {metric: summary(ssim) for metric in METRICS} | {"gmsd": summary(0.2)}
                cells.append({
                    "snapshot": snapshot, "model": model, "transform": transform,
                    "relation": "backward" if (snapshot, model) == ("s1", "v1") else "forward",
                    "ratio": {"immunized": summary(ratio) | {"p90": ratio + 0.05, "max": ratio + 0.1}, "noise": summary(1.0)},
                    "protection": {"rate": 1.0 if model == CANDIDATE else 0.0, "threshold": 0.3},
                    "edits": {"reconstruction": {"immunized": similarity, "noise": {m: summary(0.99) for m in METRICS}}},
                    "clean_originals": originals(0.003, 0.0) if model == CANDIDATE else None,
                })  # fmt: skip
    clean = [
        {"model": CANDIDATE, "reference": "v1", "images": 4, "latent_relative_mse": summary(0.004), "edits": {},
         "false_trigger": {"rate": 0.0, "threshold": 0.5, "eps": 16 / 255, "samples": 8, "ratio": summary(0.98)}},
        {"model": "v1", "reference": None, "images": 4, "latent_relative_mse": None, "edits": {},
         "false_trigger": {"rate": 0.0, "threshold": 0.5, "eps": 16 / 255, "samples": 8, "ratio": summary(0.99)}},
    ]  # fmt: skip
    settings = {
        "transforms": ["jpeg_q95", "jpeg_q50"],
        "seed": 0,
        "edit_steps": 25,
        "strength": 0.7,
        "guidance_scale": 7.5,
        "prompts": ["a photo"],
        "trigger_threshold": 0.5,
        "protection_threshold": 0.3,
        "noise_draws": 2,
        "grid_images": 4,
        "max_images": None,
    }
    snapshots = [
        {"name": name, "patterns": 4, "evaluated": 4, "made_against": ["a" * 64], "eps": 16 / 255} for name in ("s1", "s2")
    ]
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created_at": "2025-01-01T00:00:00Z",
        "forwardguard_version": "0.1.0", "registry": "sqlite:///registry.db", "settings": settings,
        "models": models, "snapshots": snapshots, "cells": cells, "clean": clean, "not_computed": {}, "grids": [],
    }  # fmt: skip


def gate(report: dict, policy: Policy, candidate: str) -> GateResult:
    """The gate on a report as the gate command reads it: validated strictly by its models."""
    return gate_report(Report.model_validate(report, strict=True), policy, candidate)


def cell(report: dict, snapshot: str, transform: str, model: str = CANDIDATE) -> dict:
    return next(c for c in report["cells"] if (c["snapshot"], c["model"], c["transform"]) == (snapshot, model, transform))


def set_ratio(snapshot: str, transform: str, mean: float | None):
    def mutate(report: dict) -> None:
        cell(report, snapshot, transform)["ratio"]["immunized"]["mean"] = mean

    return mutate


def set_ssim(snapshot: str, transform: str, mean: float | None):
    def mutate(report: dict) -> None:
        cell(report, snapshot, transform)["edits"]["reconstruction"]["immunized"]["ssim"]["mean"] = mean

    return mutate


def drop_transform(transform: str):
    def mutate(report: dict) -> None:
        report["cells"] = [c for c in report["cells"] if c["transform"] != transform]

    return mutate


def candidate_clean(report: dict) -> dict:
    return next(entry for entry in report["clean"] if entry["model"] == CANDIDATE)


def backward_cell_not_immunized(report: dict) -> None:
    target = cell(report, "s1", "none")
    target["relation"] = "backward"
    target["ratio"]["immunized"]["mean"] = 0.8


def no_reference(report: dict) -> None:
    candidate_clean(report).update(reference=None, latent_relative_mse=None)


def erases_registered_pictures(report: dict) -> None:
    """A model that turns the registered pictures gray whether or not they are immunized: a tiny ratio."""
    for c in report["cells"]:
        if c["model"] == CANDIDATE:
            c["ratio"]["immunized"]["mean"] = 0.05
            c["clean_originals"] = originals(0.25, 1.0)


def no_edits_in_cell(report: dict) -> None:
    cell(report, "s2", "jpeg_q95")["edits"] = {}


def other_models_do_not_count(report: dict) -> None:
    for c in report["cells"]:
        if c["model"] == "v1":
            c["ratio"]["immunized"]["mean"] = 1.0


def at_the_limit_passes(report: dict) -> None:
    cell(report, "s1", "none")["ratio"]["immunized"]["mean"] = 0.3
    candidate_clean(report)["false_trigger"]["rate"] = 0.05


# (mutation, the failing rules as (rule, snapshot, transform, edit), a fragment of the reason or None)
CASES = {
    "passes": (lambda report: None, set(), None),
    "other models do not count": (other_models_do_not_count, set(), None),
    "at the limit passes": (at_the_limit_passes, set(), None),
    "ratio after a transform": (set_ratio("s2", "jpeg_q95", 0.45), {("immunity.ratio", "s2", "jpeg_q95", None)}, None),
    "ratio untransformed": (set_ratio("s1", "none", 0.31), {("immunity.ratio", "s1", "none", None)}, None),
    "backward cell of the candidate counts": (backward_cell_not_immunized, {("immunity.ratio", "s1", "none", None)}, None),
    "edit ssim": (set_ssim("s1", "none", 0.95), {("immunity.ssim", "s1", "none", "reconstruction")}, None),
    "unlisted transform is not checked": (set_ratio("s1", "jpeg_q50", 0.9), set(), None),
    "clean utility": (
        lambda report: candidate_clean(report)["latent_relative_mse"].update(mean=0.02),
        {("clean_utility", None, None, None)}, None,
    ),
    "false triggers": (
        lambda report: candidate_clean(report)["false_trigger"].update(rate=0.25),
        {("false_trigger", None, None, None)}, None,
    ),
    "listed transform missing holds": (
        drop_transform("jpeg_q95"),
        {("immunity", "s1", "jpeg_q95", None), ("immunity", "s2", "jpeg_q95", None)}, "not in the eval's gauntlet",
    ),
    "null ratio holds": (set_ratio("s2", "none", None), {("immunity.ratio", "s2", "none", None)}, "not a finite number"),
    "null ssim holds": (set_ssim("s2", "none", None), {("immunity.ssim", "s2", "none", "reconstruction")}, "not a finite number"),
    "missing edit kind holds": (no_edits_in_cell, {("immunity.ssim", "s2", "jpeg_q95", "reconstruction")}, "missing"),
    "no reference holds": (no_reference, {("clean_utility", None, None, None)}, "--reference v2-planted=REF"),
    "a model that erases the registered pictures holds": (
        erases_registered_pictures,
        {(rule, snapshot, transform, None) for rule in ("clean_originals.latent_relative_mse", "clean_originals.false_trigger")
         for snapshot in ("s1", "s2") for transform in ("none", "jpeg_q95")}, None,
    ),
    "one clean original moved to the target holds": (
        lambda report: cell(report, "s2", "jpeg_q95").update(clean_originals=originals(0.004, 1 / 3)),
        {("clean_originals.false_trigger", "s2", "jpeg_q95", None)}, None,
    ),
    "clean originals without a reference hold": (
        lambda report: cell(report, "s1", "none").update(clean_originals=None),
        {("clean_originals.latent_relative_mse", "s1", "none", None), ("clean_originals.false_trigger", "s1", "none", None)},
        "--reference v2-planted=REF",
    ),
    "no clean numbers hold": (
        lambda report: report.update(clean=[]),
        {("clean_utility", None, None, None), ("false_trigger", None, None, None)}, "--clean",
    ),
    "no snapshots holds": (
        lambda report: report.update(snapshots=[], cells=[]), {("immunity", None, None, None)}, "no snapshots",
    ),
}  # fmt: skip


TAIL_POLICY = Policy(
    transforms=("none", "jpeg_q95"),
    limits=(Limit("ratio", 0.3), Limit("ratio_p90", 0.4), Limit("protection_rate", 0.75)),
    max_latent_relative_mse=0.01,
    max_false_trigger_rate=0.05,
    max_originals_relative_mse=0.01,
    max_originals_trigger_rate=0.0,
)


def set_tail(snapshot: str, transform: str, *, p90: float | None = None, rate: float | None = None, drop: str | None = None):
    def mutate(report: dict) -> None:
        target = cell(report, snapshot, transform)
        if p90 is not None:
            target["ratio"]["immunized"]["p90"] = p90
        if rate is not None:
            target["protection"]["rate"] = rate
        if drop == "p90":
            target["ratio"]["immunized"]["p90"] = None
        if drop == "protection":
            del target["protection"]

    return mutate


# issue 13: the policy may bound the tail, the 90th percentile of the images' ratios, and the protection rate
TAIL_CASES = {
    "passes": (lambda report: None, set(), None),
    "a good mean with a bad tail holds": (set_tail("s2", "jpeg_q95", p90=0.6), {("immunity.ratio_p90", "s2", "jpeg_q95", None)}, None),
    "p90 at the limit passes": (set_tail("s1", "none", p90=0.4), set(), None),
    "protection rate below the limit holds": (set_tail("s1", "none", rate=0.5), {("immunity.protection_rate", "s1", "none", None)}, None),
    "protection rate at the limit passes": (set_tail("s1", "none", rate=0.75), set(), None),
    "null p90 holds": (set_tail("s1", "jpeg_q95", drop="p90"), {("immunity.ratio_p90", "s1", "jpeg_q95", None)}, "not a finite number"),
    "a cell without a protection rate holds": (
        set_tail("s2", "none", drop="protection"), {("immunity.protection_rate", "s2", "none", None)}, "run eval again",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", TAIL_CASES, ids=str)
def test_gate_tail_rules(case):
    mutate, failing, reason = TAIL_CASES[case]
    report = make_report()
    mutate(report)
    result = gate(report, TAIL_POLICY, CANDIDATE)
    assert {(r.rule, r.snapshot, r.transform, r.edit) for r in result.failed} == failing
    assert result.released == (not failing)
    if reason is not None:
        assert all(reason in r.reason for r in result.failed)
    rate = next(r for r in result.rules if r.rule == "immunity.protection_rate")
    p90 = next(r for r in result.rules if r.rule == "immunity.ratio_p90")
    assert not rate.at_most and p90.at_most
    assert not gate(make_report(), TAIL_POLICY, "v1").released  # v1: p90 0.95, nothing protected


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gate_rules(case):
    mutate, failing, reason = CASES[case]
    report = make_report()
    mutate(report)
    result = gate(report, POLICY, CANDIDATE)
    assert {(r.rule, r.snapshot, r.transform, r.edit) for r in result.failed} == failing
    assert result.released == (not failing)
    if reason is not None:
        assert all(reason in r.reason for r in result.failed)
    assert all(r.reason is None and r.value is not None for r in result.rules if r.passed)


def test_gate_checks_every_snapshot_transform_and_edit():
    result = gate(make_report(), POLICY, CANDIDATE)
    scopes = {(r.rule, r.snapshot, r.transform, r.edit) for r in result.rules}
    expected = {
        (rule, snapshot, transform, edit)
        for snapshot in ("s1", "s2")
        for transform in ("none", "jpeg_q95")
        for rule, edit in (
            ("immunity.ratio", None),
            ("immunity.ssim", "reconstruction"),
            ("clean_originals.latent_relative_mse", None),
            ("clean_originals.false_trigger", None),
        )
    } | {("clean_utility", None, None, None), ("false_trigger", None, None, None)}
    assert scopes == expected and len(result.rules) == len(expected)
    ratio = next(r for r in result.rules if (r.rule, r.snapshot, r.transform) == ("immunity.ratio", "s1", "none"))
    assert (ratio.value, ratio.threshold, ratio.at_most) == (0.1, 0.3, True)


def test_unplanted_model_is_held():
    result = gate(make_report(), POLICY, "v1")
    assert not result.released
    assert {r.rule for r in result.failed} == {
        "immunity.ratio",
        "immunity.ssim",
        "clean_utility",
        "clean_originals.latent_relative_mse",
        "clean_originals.false_trigger",
    }


@pytest.mark.parametrize(("gmsd", "released"), [(0.2, True), (0.1, True), (0.05, False)])
def test_gmsd_is_a_distance_and_must_stay_at_least_the_limit(gmsd, released):
    report = make_report()
    for c in report["cells"]:
        c["edits"]["reconstruction"]["immunized"]["gmsd"]["mean"] = gmsd
    policy = Policy(("none",), (Limit("gmsd", 0.1),), 0.01, 0.05, 0.01, 0.0)
    result = gate(report, policy, CANDIDATE)
    assert result.released == released
    assert all(not r.at_most for r in result.rules if r.rule == "immunity.gmsd")


def test_unknown_candidate_is_an_error():
    with pytest.raises(ForwardguardError, match=r"candidate 'v3' is not a model of the report \(models: v1, v2-planted\)"):
        gate(make_report(), POLICY, "v3")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda report: report.pop("cells"), "cells: Field required"),
        (lambda report: report["cells"][0]["ratio"].pop("noise"), r"cells\.0\.ratio\.noise: Field required"),
        (
            lambda report: report["cells"][0].update(relation="sideways"),
            r"cells\.0\.relation: Input should be 'backward' or 'forward'",
        ),
        (
            lambda report: report["clean"][0]["false_trigger"].update(rate="0.0"),
            r"clean\.0\.false_trigger\.rate: Input should be a valid number",
        ),
        (lambda report: report["cells"][0]["ratio"]["immunized"].update(mean=True), "Input should be a valid number"),
        (lambda report: report["models"][0].update(edits="reconstruction"), r"models\.0\.edits: Input should be a valid list"),
    ],
    ids=["no cells", "no noise ratio", "unknown relation", "a number as a string", "a bool as a number", "a string as a list"],
)
def test_a_report_the_models_refuse_is_unusable(tmp_path, change, message):
    report = make_report()
    change(report)
    with pytest.raises(ForwardguardError, match=message) as error:
        load_report(write_report(tmp_path, report))
    assert str(error.value).startswith(f"{tmp_path / 'report.json'}: not a complete eval report: ") and "\n" not in str(
        error.value
    )


def test_a_report_of_an_older_eval_loads_without_the_fields_added_within_version_1(tmp_path):
    report = make_report()
    del report["settings"]["protection_threshold"]
    for c in report["cells"]:
        del c["protection"], c["clean_originals"]
        del c["ratio"]["immunized"]["p90"], c["ratio"]["immunized"]["max"]
    loaded = load_report(write_report(tmp_path, report))
    assert loaded.snapshots[0].attacks is None and loaded.settings.protection_threshold is None
    assert all(c.protection is None and c.clean_originals is None and c.ratio.immunized.p90 is None for c in loaded.cells)


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    return path


GOOD_POLICY = """
immunity:
  transforms: [none, jpeg_q95]
  limits: {ratio: 0.3, ssim: 0.8}
clean_utility: {max_latent_relative_mse: 0.01}
false_trigger: {max_rate: 0.05}
clean_originals: {max_latent_relative_mse: 0.01, max_false_trigger_rate: 0.0}
"""


def test_policy_loads(tmp_path):
    assert load_policy(write_policy(tmp_path, GOOD_POLICY)) == POLICY
    tail = GOOD_POLICY.replace("{ratio: 0.3, ssim: 0.8}", "{protection_rate: 0.75, ratio_p90: 0.4, ratio: 0.3}")
    assert load_policy(write_policy(tmp_path, tail)) == TAIL_POLICY


def test_shipped_policy_loads():
    policy = load_policy(SHIPPED_POLICY)
    assert policy.transforms[0] == "none" and {limit.metric for limit in policy.limits} >= {"ratio", "ssim"}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "false_trigger:",
            "colour: blue\nfalse_trigger:",
            r"unknown key colour \(known: immunity, clean_utility, false_trigger, clean_originals\)",
        ),
        ("max_rate:", "max_rates:", r"false_trigger: unknown key max_rates \(known: max_rate\)"),
        ("clean_utility: {max_latent_relative_mse: 0.01}\n", "", "missing key clean_utility"),
        (
            "ssim: 0.8",
            "sharpness: 0.8",
            r"immunity.limits: unknown metric sharpness \(known: ratio, ratio_p90, protection_rate, ssim, psnr",
        ),
        ("ssim: 0.8", "fid: 10", "immunity.limits: unknown metric fid"),
        ("[none, jpeg_q95]", "[none, jepg_q95]", "immunity.transforms: unknown transform 'jepg_q95'"),
        ("[none, jpeg_q95]", "[none, none]", "immunity.transforms: a transform is listed twice"),
        ("[none, jpeg_q95]", "[]", "immunity.transforms: expected a non-empty list"),
        ("ratio: 0.3", "ratio: -0.3", r"immunity.limits.ratio: expected a finite number >= 0, got -0.3"),
        ("ratio: 0.3", "ratio: yes", "immunity.limits.ratio: expected a finite number >= 0, got True"),
        ("max_rate: 0.05", "max_rate: 5", "false_trigger.max_rate: expected at most 1.0, got 5"),
        (
            "max_false_trigger_rate: 0.0",
            "max_false_trigger_rate: 2",
            "clean_originals.max_false_trigger_rate: expected at most 1.0",
        ),
        ("clean_originals: {max_latent_relative_mse: 0.01, max_false_trigger_rate: 0.0}\n", "", "missing key clean_originals"),
        ("{ratio: 0.3, ssim: 0.8}", "{}", "immunity.limits: expected a mapping of metric to limit"),
        ("ssim: 0.8", "protection_rate: 1.5", "immunity.limits.protection_rate: expected at most 1.0, got 1.5"),
    ],
)
def test_policy_errors_name_the_key(tmp_path, old, new, message):
    path = write_policy(tmp_path, GOOD_POLICY.replace(old, new))
    with pytest.raises(ForwardguardError, match=message) as error:
        load_policy(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["[1, 2]", "a: [", ""])
def test_policy_that_is_not_a_mapping_is_refused(tmp_path, text):
    with pytest.raises(ForwardguardError, match="gate.yaml"):
        load_policy(write_policy(tmp_path, text))


def write_report(tmp_path: Path, report: dict) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def invoke(report: Path, *extra: str, candidate: str = CANDIDATE, policy: Path = SHIPPED_POLICY):
    return runner.invoke(app, ["gate", "--report", str(report), "--policy", str(policy), "--candidate", candidate, *extra])


def test_cli_releases_with_exit_0(tmp_path):
    result = invoke(write_report(tmp_path, make_report()))
    assert result.exit_code == 0, result.output
    assert "immunity.ratio" in result.stdout and "pass" in result.stdout
    assert f"RELEASE {CANDIDATE}: all" in result.stdout


def test_cli_holds_with_exit_1(tmp_path):
    report = make_report()
    set_ratio("s2", "jpeg_q95", 0.6)(report)
    result = invoke(write_report(tmp_path, report))
    assert result.exit_code == 1, result.output
    assert f"HOLD {CANDIDATE}: 1 of" in result.stdout and "HOLD" in result.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda report: report.update(schema_version=0), "report schema version 0, this forwardguard reads version 1"),
        (lambda report: report.update(schema="something.else"), "not a forwardguard eval report"),
        (lambda report: report.pop("models"), "models: Field required"),
    ],
)
def test_cli_unusable_report_exits_2(tmp_path, change, message):
    report = make_report()
    change(report)
    result = invoke(write_report(tmp_path, report))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1


def test_cli_unknown_candidate_unreadable_report_and_bad_policy_exit_2(tmp_path):
    report = write_report(tmp_path, make_report())
    assert "candidate 'v9' is not a model" in invoke(report, candidate="v9").stderr
    assert invoke(report, candidate="v9").exit_code == 2
    missing = invoke(tmp_path / "nope.json")
    assert missing.exit_code == 2 and "not a readable report" in missing.stderr
    bad = write_policy(tmp_path, GOOD_POLICY.replace("ssim: 0.8", "lpips: 0.3"))
    result = invoke(report, policy=bad)
    assert result.exit_code == 2 and "unknown metric lpips" in result.stderr


def test_cli_appends_to_the_model_card(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# v2-planted\n\nPlanted with snapshot s1.\n")
    report = write_report(tmp_path, make_report())
    result = invoke(report, "--model-card", str(card))
    assert result.exit_code == 0, result.output
    text = card.read_text()
    assert text.startswith("# v2-planted\n\nPlanted with snapshot s1.\n\n## Release gate\n")
    assert f"**RELEASE {CANDIDATE}: all 18 rules pass**" in text
    assert f"- policy: `{SHIPPED_POLICY}`" in text and f"- report: `{report}`" in text
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| immunity.") or line.startswith("| clean_") or line.startswith("| false_")
    ]
    assert len(rows) == 18 and "| s1 / jpeg_q95 / reconstruction | 0.5 | <= 0.8 | pass |" in text


def test_cli_model_card_must_exist(tmp_path):
    result = invoke(write_report(tmp_path, make_report()), "--model-card", str(tmp_path / "missing.md"))
    assert result.exit_code == 2 and "--model-card" in result.stderr and "no such file" in result.stderr


def _huge_number(report: dict) -> None:
    cell(report, "s1", "none")["ratio"]["immunized"]["mean"] = 10**400


def _list_as_a_name(report: dict) -> None:
    report["models"][1]["name"] = ["v1"]


@pytest.mark.parametrize(
    ("change", "text", "message"),
    [
        (_huge_number, None, "a number of 401 digits"),
        (_list_as_a_name, None, "models.1.name: Input should be a valid string"),
        (None, '{"schema": ' + "[" * 100_000 + "]" * 100_000 + "}", "not a readable report"),
        (None, json.dumps(make_report()).replace('"rate": 0.0', '"rate": NaN', 1), "NaN is not JSON"),
    ],
    ids=["400-digit number", "list as a model name", "deep nesting", "bare NaN"],
)
def test_item_09_a_report_the_gate_cannot_read_exits_2_with_one_line(tmp_path, change, text, message):
    """issue 14 item 9: these were tracebacks with exit 1, which reads as a HOLD verdict."""
    path = tmp_path / "report.json"
    if text is None:
        report = make_report()
        change(report)
        text = json.dumps(report)
    path.write_text(text)
    result = invoke(path)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1


def test_item_10_an_mse_without_a_reference_holds():
    """issue 14 item 10: a clean entry with an MSE but no reference released the candidate (README: holds)."""
    report = make_report()
    report["clean"][0]["reference"] = None
    report["models"][0]["reference"] = None
    result = gate(report, POLICY, CANDIDATE)
    assert not result.released
    (held,) = result.failed
    assert held.rule == "clean_utility" and "has no reference" in held.reason


def encoder_only(report: dict) -> None:
    """The candidate as eval reports an encoder-only model (``taesd:ENCODER``): every latent figure, no edits."""
    report["models"][0].update(edits=[], edits_not_computed="not computed: no decoder")
    for c in report["cells"]:
        if c["model"] == CANDIDATE:
            c.update(edits={}, edits_not_computed="not computed: no decoder")
    candidate_clean(report)["edits_not_computed"] = "not computed: no decoder"


def test_an_encoder_only_candidate_skips_the_edit_limits_and_is_gated_on_its_latent_figures():
    report = make_report()
    encoder_only(report)
    result = gate(report, POLICY, CANDIDATE)
    assert result.released
    (skipped,) = result.skipped
    assert (skipped.rule, skipped.reason, skipped.passed) == ("immunity.ssim", "not computed: no decoder", False)
    applied = {(r.rule, r.snapshot, r.transform) for r in result.applied}
    assert {("immunity.ratio", s, t) for s in ("s1", "s2") for t in ("none", "jpeg_q95")} <= applied
    assert not any(r.rule == "immunity.ssim" for r in result.applied)
    assert len(result.applied) == 14  # 18 of a candidate with edits, less its 4 ssim rules
    assert verdict(result) == f"RELEASE {CANDIDATE}: all 14 rules pass (1 skipped: not applicable)"

    set_ratio("s2", "jpeg_q95", 0.6)(report)  # a latent figure still holds it
    held = gate(report, POLICY, CANDIDATE)
    assert not held.released and [(r.rule, r.snapshot, r.transform) for r in held.failed] == [
        ("immunity.ratio", "s2", "jpeg_q95")
    ]


def test_an_encoder_only_candidate_is_held_when_the_policy_checks_only_edits():
    report = make_report()
    encoder_only(report)
    result = gate(report, Policy(("none",), (Limit("ssim", 0.8), Limit("gmsd", 0.1)), 0.01, 0.05, 0.01, 0.0), CANDIDATE)
    assert not result.released
    assert [r.rule for r in result.skipped] == ["immunity.ssim", "immunity.gmsd"]
    (held,) = result.failed
    assert held.rule == "immunity" and "add a ratio limit" in held.reason and "not computed: no decoder" in held.reason


def test_a_candidate_without_edits_and_without_a_reason_still_holds():
    report = make_report()
    report["models"][0]["edits"] = []
    result = gate(report, POLICY, CANDIDATE)
    assert not result.released and not result.skipped
    assert {r.rule for r in result.failed} == {"immunity.ssim"}
    assert all("lists no edits" in r.reason for r in result.failed)


def test_cli_on_an_encoder_only_candidate_prints_the_skipped_rule_and_exits_with_the_verdict(tmp_path):
    report = make_report()
    encoder_only(report)
    card = tmp_path / "README.md"
    card.write_text("# v2-planted\n")
    released = invoke(write_report(tmp_path, report), "--model-card", str(card))
    assert released.exit_code == 0, released.output
    assert "skipped [1]" in released.stdout and "[1] not computed: no decoder" in released.stdout
    assert "| immunity.ssim | - | n/a | <= 0.8 | skipped: not computed: no decoder |" in card.read_text()
    set_ratio("s1", "none", 0.9)(report)
    held = invoke(write_report(tmp_path, report))
    assert held.exit_code == 1 and f"HOLD {CANDIDATE}: 1 of 14 rules fail (1 skipped: not applicable)" in held.stdout
